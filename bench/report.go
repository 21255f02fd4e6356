package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Run is one run of the harness: the machine, the versions, the command,
// and every scenario's results.
type Run struct {
	Time time.Time `json:"time"`
	// Command is the harness's command line; Make the make target that ran
	// it, when one did.
	Command  string   `json:"command"`
	Make     string   `json:"make,omitempty"`
	Quick    bool     `json:"quick"`
	Machine  Machine  `json:"machine"`
	Versions Versions `json:"versions"`
	Settings Settings `json:"settings"`
	// Scenarios are the scenarios run, in order.
	Scenarios   []string `json:"scenarios"`
	Results     []Result `json:"results"`
	WallSeconds float64  `json:"wall_seconds"`
	// BusyBefore and BusyAfter are the machine's CPU busy share (0..1)
	// over a second before and after the run, the harness idle: well above
	// 0, other work shared the machine with the run.
	BusyBefore float64 `json:"cpu_busy_before"`
	BusyAfter  float64 `json:"cpu_busy_after"`
	// Warnings are what went wrong outside the measurements.
	Warnings []string `json:"warnings,omitempty"`
	// Plots are the plot files written, relative to the report.
	Plots []string `json:"plots,omitempty"`
}

// Settings are the load settings of a run (Config without the paths).
type Settings struct {
	Rate            float64 `json:"open_loop_rate_per_s"`
	Calls           int     `json:"open_loop_calls"`
	Warmup          int     `json:"open_loop_warmup_calls"`
	StreamInFlight  int     `json:"stream_in_flight"`
	StreamSeconds   float64 `json:"stream_seconds"`
	Levels          []int   `json:"throughput_levels"`
	LevelSeconds    float64 `json:"throughput_level_seconds"`
	Thaws           int     `json:"thaws"`
	Stems           int     `json:"stems"`
	Colds           int     `json:"colds"`
	Bursts          int     `json:"bursts"`
	BurstSize       int     `json:"burst_size"`
	DensitySteps    []int   `json:"density_steps"`
	DensityMemoryMB int     `json:"density_memory_mb"`
	FnGOMAXPROCS    int     `json:"function_gomaxprocs,omitempty"`
	AllFunctions    bool    `json:"all_functions"`
}

// SettingsOf returns the load settings of c.
func SettingsOf(c Config) Settings {
	return Settings{
		Rate: c.Rate, Calls: c.Calls, Warmup: c.Warmup, StreamInFlight: c.StreamInFlight, StreamSeconds: c.StreamDuration.Seconds(),
		Levels: c.Levels, LevelSeconds: c.LevelDuration.Seconds(), Thaws: c.Thaws, Stems: c.Stems, Colds: c.Colds,
		Bursts: c.Bursts, BurstSize: c.BurstSize, DensitySteps: c.DensitySteps, DensityMemoryMB: c.DensityMemoryMB,
		FnGOMAXPROCS: c.FnGOMAXPROCS, AllFunctions: c.AllFunctions,
	}
}

// Find returns the result named name, or nil.
func (r *Run) Find(name string) *Result {
	for i := range r.Results {
		if r.Results[i].Scenario == name {
			return &r.Results[i]
		}
	}
	return nil
}

// AddRatios fills every result's ratios to its floor, when the floor was
// measured in this run. Throughput ratios are kept only between closed
// loops (an open loop's throughput is its rate).
func (r *Run) AddRatios() {
	for i := range r.Results {
		x := &r.Results[i]
		f := r.Find(x.Floor)
		if f == nil || f.P50 == 0 || f.P99 == 0 || x.Calls == 0 {
			continue
		}
		// Sweeps report their peak: latencies compare only at the same
		// concurrency.
		if pc, fc := x.Extra["peak_concurrency"], f.Extra["peak_concurrency"]; pc == fc {
			x.RatioP50 = x.P50 / f.P50
			x.RatioP99 = x.P99 / f.P99
		}
		if strings.HasPrefix(x.Mode, "closed loop") && strings.HasPrefix(f.Mode, "closed loop") && f.Throughput > 0 {
			x.RatioThroughput = x.Throughput / f.Throughput
		}
	}
}

// WriteJSON writes the run to dir as run-<time>.json and returns the path.
func (r *Run) WriteJSON(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "run-"+r.Time.UTC().Format("20060102T150405Z")+".json")
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}

// ReadRun reads a run written by WriteJSON.
func ReadRun(path string) (*Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := new(Run)
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// fmtUS formats a duration in microseconds with a unit fit for its size.
func fmtUS(us float64) string {
	switch {
	case us <= 0:
		return "—"
	case us < 1000:
		return fmt.Sprintf("%.0f µs", us)
	case us < 10_000:
		return fmt.Sprintf("%.2f ms", us/1000)
	case us < 1_000_000:
		return fmt.Sprintf("%.1f ms", us/1000)
	}
	return fmt.Sprintf("%.2f s", us/1e6)
}

func fmtRatio(x float64) string {
	if x == 0 {
		return "—"
	}
	if x < 10 {
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.0f", x)
}

func fmtRate(x float64) string {
	if x == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", x)
}

// Goal is one of the figures kiln aims for.
type Goal struct {
	What     string
	Measured string
	// Met is "met", "not met" or "not measured".
	Met string
}

// Goals checks the run against kiln's targets. They are reported, never
// asserted.
func (r *Run) Goals() []Goal {
	var ts []Goal
	check := func(what string, res *Result, ok func(*Result) (string, bool, bool)) {
		t := Goal{What: what, Met: "not measured", Measured: "—"}
		if res != nil && res.Skipped != "" {
			t.Measured = "skipped: " + res.Skipped
		} else if res != nil && res.Calls > 0 {
			m, good, known := ok(res)
			t.Measured = m
			switch {
			case !known:
			case good:
				t.Met = "met"
			default:
				t.Met = "**not met**"
			}
		}
		ts = append(ts, t)
	}
	check("warm HTTP p50 within 3× the floor's", r.Find("warm-http"), func(x *Result) (string, bool, bool) {
		m := fmt.Sprintf("open loop: %s = %s× floor's %s", fmtUS(x.P50), fmtRatio(x.RatioP50), fmtUS(x.P50/max(x.RatioP50, 1e-9)))
		// The same one call at a time: no idle gaps, no sender wake-up.
		if seq := r.Find("warm-http-seq"); seq != nil && seq.RatioP50 > 0 {
			m += fmt.Sprintf("; one call at a time: %s = %s× floor's %s", fmtUS(seq.P50), fmtRatio(seq.RatioP50), fmtUS(seq.P50/seq.RatioP50))
		}
		return m, x.RatioP50 <= 3, x.RatioP50 > 0
	})
	under := func(limit float64) func(*Result) (string, bool, bool) {
		return func(x *Result) (string, bool, bool) { return "p50 " + fmtUS(x.P50), x.P50 < limit, true }
	}
	check("thawed p50 under 1 ms", r.Find("thawed"), under(1000))
	check("stem p50 under 10 ms", r.Find("stem"), under(10_000))
	check("cold p50 under 150 ms", r.Find("cold"), under(150_000))
	check("warm HTTP throughput at least half the floor's", r.Find("throughput"), func(x *Result) (string, bool, bool) {
		f := r.Find("throughput-floor")
		if f == nil {
			return fmt.Sprintf("%.0f/s", x.Throughput), false, false
		}
		return fmt.Sprintf("peak %.0f/s vs floor %.0f/s = %.2f", x.Throughput, f.Throughput, x.RatioThroughput), x.RatioThroughput >= 0.5, x.RatioThroughput > 0
	})
	met := r.Find("metering-on")
	if met == nil {
		met = r.Find("metering-cost")
	}
	check("metering cost under 5%", met, func(x *Result) (string, bool, bool) {
		p, t := x.Extra["cost_p50_pct"], x.Extra["cost_throughput_pct"]
		return fmt.Sprintf("p50 %+.1f%%, throughput %+.1f%%", p, -t), p < 5 && t < 5, true
	})
	return ts
}

// Markdown renders the run as the benchmark report. about holds each
// scenario's description.
func (r *Run) Markdown(about map[string]string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# kiln benchmarks\n\n")
	w("<!-- Generated by bench/cmd/kiln-bench: edit the harness, not this file. -->\n\n")
	how := "`" + r.Command + "`"
	if r.Make != "" {
		how = "`" + r.Make + "`, which runs " + how
	}
	w("Generated by %s on %s; the run took %s.", how, r.Time.UTC().Format("2006-01-02 15:04 MST"), (time.Duration(r.WallSeconds) * time.Second).String())
	if r.Quick {
		w(" **This is a quick run**: fewer calls, fewer scenarios and levels; use `make bench` for figures to quote.")
	}
	w("\n\n")
	if busy := max(r.BusyBefore, r.BusyAfter); busy > 0.15 {
		w("> **Other work shared the machine**: its CPU was %.0f%% busy just before or after the run with the harness idle. "+
			"Every figure below is inflated by it, the floors too; the ratios suffer less. Rerun on an idle machine for figures to quote.\n\n", 100*busy)
	}

	m, v := r.Machine, r.Versions
	w("## Machine\n\n")
	w("| | |\n|---|---|\n")
	w("| CPU | %s, %d cores |\n| memory | %d MiB |\n| kernel | %s, cgroup %s |\n| GOMAXPROCS | %d (harness; kilnd and functions: Go's default) |\n",
		m.CPU, m.Cores, m.MemoryMiB, m.Kernel, m.Cgroup, m.GOMAXPROCS)
	w("| other work on the machine | CPU %.0f%% busy in the second before the run, %.0f%% in the second after (harness idle) |\n", 100*r.BusyBefore, 100*r.BusyAfter)
	w("| Go | %s |\n| kiln | %s |\n| containerd | %s |\n| OCI runtime | %s: %s |\n\n",
		orDash(v.GoTool, v.Go), orDash(v.Kiln, "unknown (not a git checkout)"), orDash(v.Containerd, "not found"), v.Runtime, orDash(v.RuntimeVersion, "not found"))

	w("## How to read this\n\n")
	w("- Every row is one scenario (or one function of it), measured against a kilnd the harness started for it, with its own data directory and containerd. ")
	w("The **floor** rows are the same handlers with no kiln at all, measured in the same run on the same machine: ")
	w("`floor` is the function's handler in-process behind fasthttp on loopback, `floor-grpc` kiln's Invoker service echoing in-process over loopback gRPC. ")
	w("Each kiln row is divided by its floor (column *floor*): the ratio is what kiln adds, and it moves less between machines than the absolute figures do.\n")
	w("- **Open loop** rows send at a fixed rate (%.0f calls/s) whatever the answers do, and measure each call from the time it *should* have been sent, as wrk2 does, ", r.Settings.Rate)
	w("so a stall counts against every call it delayed (coordinated omission corrected). ")
	if f := r.Find("floor"); f != nil && f.SendLagP50 > 0 {
		w("The load generator shares the machine: waking it to send costs time too (the floor's calls left p50 %s after they were due, p99 %s), and that lateness counts, for the floor as for kiln; ",
			fmtUS(f.SendLagP50), fmtUS(f.SendLagP99))
	}
	w("the notes give each open-loop row's uncorrected service time (from the actual send) beside it, and the `-seq` rows measure the same calls one at a time, back to back.\n")
	w("- **Closed loop** rows keep N callers each waiting for its answer; their throughput is the machine's capacity with the load generator on the same cores. ")
	w("*One call at a time* rows (thawed, stem, cold, density) set the container up outside the timed region before each call, and keep only the calls kiln says (`X-Kiln-Start`) started the way the row measures; *left out* counts the others.\n")
	w("- Warm-up calls are never recorded. Percentiles come from HDR histograms (3 significant digits). Throughput is recorded calls over the measured time; for one-call-at-a-time rows it is 1/mean.\n")
	w("- Targets are reported, never asserted: a missed one is a finding, not a failed build.\n\n")

	w("## Results\n\n")
	w("| scenario | mode | calls | p50 | p90 | p99 | p99.9 | max | calls/s | floor | p50 ÷ floor | p99 ÷ floor | calls/s ÷ floor |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, x := range r.Results {
		if x.Skipped != "" {
			w("| %s | skipped: %s | | | | | | | | | | | |\n", x.Scenario, x.Skipped)
			continue
		}
		w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			x.Scenario, x.Mode, x.Calls, fmtUS(x.P50), fmtUS(x.P90), fmtUS(x.P99), fmtUS(x.P999), fmtUS(x.Max),
			fmtRate(x.Throughput), orDash(x.Floor, ""), fmtRatio(x.RatioP50), fmtRatio(x.RatioP99), fmtRatio(x.RatioThroughput))
	}
	w("\nNotes:\n\n")
	for _, x := range r.Results {
		var parts []string
		if x.Note != "" {
			parts = append(parts, x.Note)
		}
		if len(x.Starts) > 0 {
			parts = append(parts, "starts "+fmtCounts(x.Starts))
		}
		if len(x.Others) > 0 {
			parts = append(parts, "left out "+fmtCounts(x.Others))
		}
		if x.Errors > 0 {
			parts = append(parts, fmt.Sprintf("%d errors", x.Errors))
		}
		if x.ServiceP50 > 0 {
			parts = append(parts, fmt.Sprintf("uncorrected service time p50 %s, p99 %s; sent late by p50 %s, p99 %s",
				fmtUS(x.ServiceP50), fmtUS(x.ServiceP99), fmtUS(x.SendLagP50), fmtUS(x.SendLagP99)))
		}
		if len(parts) > 0 {
			w("- **%s**: %s.\n", x.Scenario, strings.Join(parts, "; "))
		}
	}
	w("\n")

	if len(r.Warnings) > 0 {
		w("Warnings:\n\n")
		for _, x := range r.Warnings {
			w("- %s.\n", x)
		}
		w("\n")
	}

	w("## Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, t := range r.Goals() {
		w("| %s | %s | %s |\n", t.What, t.Measured, t.Met)
	}
	w("\n")

	if t, f := r.Find("throughput"), r.Find("throughput-floor"); t != nil && len(t.Levels) > 0 {
		w("## Throughput against concurrency\n\n")
		w("| concurrency | kiln calls/s | kiln p50 | kiln p99 | floor calls/s | floor p50 | floor p99 | kiln ÷ floor |\n")
		w("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for i, l := range t.Levels {
			var fl Level
			if f != nil && i < len(f.Levels) {
				fl = f.Levels[i]
			}
			ratio := 0.0
			if fl.Throughput > 0 {
				ratio = l.Throughput / fl.Throughput
			}
			w("| %d | %.0f | %s | %s | %s | %s | %s | %s |\n", l.X, l.Throughput, fmtUS(l.P50), fmtUS(l.P99),
				fmtRate(fl.Throughput), fmtUS(fl.P50), fmtUS(fl.P99), fmtRatio(ratio))
		}
		w("\n")
	}
	if d := r.Find("density"); d != nil && len(d.Levels) > 0 {
		w("## Density\n\n| frozen containers | cgroup memory each | start each | thaw p50 | thaw p99 | |\n|---:|---:|---:|---:|---:|---|\n")
		for _, l := range d.Levels {
			retry := ""
			if l.Extra["retried"] > 0 {
				retry = "measured twice (first p50 ≥ 1 ms)"
			}
			w("| %d | %.1f MiB | %.0f ms | %s | %s | %s |\n", l.X, l.Extra["memory_per_container_mib"], l.Extra["start_ms"], fmtUS(l.P50), fmtUS(l.P99), retry)
		}
		w("\n")
	}

	if len(r.Plots) > 0 {
		w("## Plots\n\n")
		for _, p := range r.Plots {
			if b := filepath.Base(p); b == "ladder.png" || b == "throughput.png" || b == "cdf-all.png" {
				w("![%s](%s)\n\n", plotTitle(p), p)
			}
		}
		var cdfs []string
		for _, p := range r.Plots {
			if strings.Contains(p, "cdf-") && !strings.Contains(p, "cdf-all") {
				cdfs = append(cdfs, fmt.Sprintf("[%s](%s)", strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "cdf-"), ".png"), p))
			}
		}
		if len(cdfs) > 0 {
			w("Latency CDF of each scenario beside its floor: %s.\n\n", strings.Join(cdfs, ", "))
		}
	}

	w("## Scenarios\n\n")
	for _, s := range r.Scenarios {
		w("- `%s`: %s.\n", s, about[s])
	}
	w("\n## Reproduce\n\n")
	w("    make bench         # every scenario, under 10 minutes on 2 cores; rewrites this file and docs/bench/*.png\n")
	w("    make bench-quick   # under a minute; writes bench/results/quick.md\n")
	w("    go run ./bench/cmd/kiln-bench -scenarios floor,warm-http,thawed   # some scenarios (floors are added)\n\n")
	w("Each run also writes every figure, with the CDFs and the settings, to `bench/results/run-<time>.json`.\n")
	w("Settings of this run: %s.\n", settingsLine(r.Settings))
	return b.String()
}

func settingsLine(s Settings) string {
	return fmt.Sprintf("open loop %.0f/s, %d calls after %d warm-up; stream %d in flight for %.1fs; throughput levels %s, %.1fs each; "+
		"%d thaws, %d stem calls, %d cold calls; bursts: %d of %d calls; density steps %s at %d MiB",
		s.Rate, s.Calls, s.Warmup, s.StreamInFlight, s.StreamSeconds, joinInts(s.Levels), s.LevelSeconds,
		s.Thaws, s.Stems, s.Colds, s.Bursts, s.BurstSize, joinInts(s.DensitySteps), s.DensityMemoryMB)
}

func plotTitle(p string) string {
	return strings.TrimSuffix(filepath.Base(p), ".png")
}

func orDash(s, alt string) string {
	if s != "" {
		return s
	}
	if alt != "" {
		return alt
	}
	return "—"
}

func fmtCounts(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// ladder is the latency ladder: its steps, each with the results that can
// stand for it, the one-call-at-a-time ones first.
var ladder = []struct {
	step    string
	results []string
}{
	{"floor", []string{"floor-seq", "floor"}},
	{"warm", []string{"warm-http-seq", "warm-http"}},
	{"thawed", []string{"thawed"}},
	{"stem", []string{"stem"}},
	{"cold", []string{"cold"}},
}

// Ladder returns the steps of the latency ladder this run has, and the
// result measuring each.
func (r *Run) Ladder() (steps []string, results []Result) {
	for _, l := range ladder {
		for _, n := range l.results {
			if x := r.Find(n); x != nil && x.Calls > 0 {
				steps, results = append(steps, l.step), append(results, *x)
				break
			}
		}
	}
	return steps, results
}
