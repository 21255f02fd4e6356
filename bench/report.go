package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
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
	// KilndArgs are the flags added to every kilnd.
	KilndArgs []string `json:"kilnd_args,omitempty"`
	// FloorEdgeGOMAXPROCS and FloorFnGOMAXPROCS are those of the
	// out-of-process floors' edges (kilnd's share) and function processes.
	FloorEdgeGOMAXPROCS int `json:"floor_edge_gomaxprocs,omitempty"`
	FloorFnGOMAXPROCS   int `json:"floor_function_gomaxprocs,omitempty"`
}

// SettingsOf returns the load settings of c.
func SettingsOf(c Config) Settings {
	return Settings{
		Rate: c.Rate, Calls: c.Calls, Warmup: c.Warmup, StreamInFlight: c.StreamInFlight, StreamSeconds: c.StreamDuration.Seconds(),
		Levels: c.Levels, LevelSeconds: c.LevelDuration.Seconds(), Thaws: c.Thaws, Stems: c.Stems, Colds: c.Colds,
		Bursts: c.Bursts, BurstSize: c.BurstSize, DensitySteps: c.DensitySteps, DensityMemoryMB: c.DensityMemoryMB,
		FnGOMAXPROCS: c.FnGOMAXPROCS, AllFunctions: c.AllFunctions, KilndArgs: c.KilndArgs,
		FloorEdgeGOMAXPROCS: c.EdgeProcs(), FloorFnGOMAXPROCS: c.FnProcs(),
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
// measured in this run.
func (r *Run) AddRatios() {
	for i := range r.Results {
		x := &r.Results[i]
		x.RatioP50, x.RatioP99, x.RatioThroughput = ratios(x, r.Find(x.Floor))
	}
}

// ratios divides x's figures by floor f's (0 where they do not compare).
// Throughput ratios are kept only between closed loops (an open loop's
// throughput is its rate); sweeps report their peak, and their latencies
// compare only at the same concurrency.
func ratios(x, f *Result) (p50, p99, throughput float64) {
	if f == nil || f.P50 == 0 || f.P99 == 0 || x.Calls == 0 {
		return 0, 0, 0
	}
	if pc, fc := x.Extra["peak_concurrency"], f.Extra["peak_concurrency"]; pc == fc {
		p50, p99 = x.P50/f.P50, x.P99/f.P99
	}
	if strings.HasPrefix(x.Mode, "closed loop") && strings.HasPrefix(f.Mode, "closed loop") && f.Throughput > 0 {
		throughput = x.Throughput / f.Throughput
	}
	return p50, p99, throughput
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

// Goals checks the run against kiln's targets, each against the floor that
// fits it. They are reported, never asserted.
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
	// against says how x's figure q compares with its floor's and with
	// those beside, and returns the ratio to its floor (0: not measured).
	against := func(x *Result, q func(*Result) float64) (string, float64) {
		f := r.Find(x.Floor)
		if f == nil || q(f) == 0 {
			return fmtUS(q(x)) + " (floor " + x.Floor + " not measured)", 0
		}
		ratio := q(x) / q(f)
		m := fmt.Sprintf("%s = %s× %s's %s", fmtUS(q(x)), fmtRatio(ratio), x.Floor, fmtUS(q(f)))
		var beside []string
		for _, n := range x.Beside {
			if b := r.Find(n); b != nil && q(b) > 0 {
				beside = append(beside, fmt.Sprintf("%s× %s's", fmtRatio(q(x)/q(b)), n))
			}
		}
		if len(beside) > 0 {
			m += " (" + strings.Join(beside, ", ") + ")"
		}
		return m, ratio
	}
	p50 := func(x *Result) float64 { return x.P50 }
	p99 := func(x *Result) float64 { return x.P99 }
	warmP50 := func(limit float64) func(*Result) (string, bool, bool) {
		return func(x *Result) (string, bool, bool) {
			m, ratio := against(x, p50)
			m = "open loop: " + m
			// The same one call at a time: no idle gaps, no sender wake-up.
			if seq := r.Find("warm-http-seq"); seq != nil && seq.Calls > 0 {
				sm, _ := against(seq, p50)
				m += "; one call at a time: " + sm
			}
			return m, ratio <= limit, ratio > 0
		}
	}
	check("warm HTTP p50 ≤ 2× floor-proc's", r.Find("warm-http"), warmP50(2))
	check("stretch: warm HTTP p50 ≤ 1.5× floor-proc's", r.Find("warm-http"), warmP50(1.5))
	check("warm HTTP p99 ≤ 3× floor-proc's p99", r.Find("warm-http"), func(x *Result) (string, bool, bool) {
		m, ratio := against(x, p99)
		return "open loop: " + m, ratio <= 3, ratio > 0
	})
	under := func(limit float64) func(*Result) (string, bool, bool) {
		return func(x *Result) (string, bool, bool) { return "p50 " + fmtUS(x.P50), x.P50 < limit, true }
	}
	check("thawed p50 under 1 ms", r.Find("thawed"), under(1000))
	check("stem p50 under 10 ms", r.Find("stem"), under(10_000))
	check("cold p50 under 150 ms", r.Find("cold"), under(150_000))
	const conns = 64
	check(fmt.Sprintf("warm HTTP throughput at %d connections ≥ 0.5× floor-proc's", conns), r.Find("throughput"), func(x *Result) (string, bool, bool) {
		l := x.AtLevel(conns)
		if l == nil {
			return fmt.Sprintf("no level at %d connections", conns), false, false
		}
		f := r.Find("throughput-floor-proc")
		if f == nil || f.AtLevel(conns) == nil || f.AtLevel(conns).Throughput == 0 {
			return fmt.Sprintf("%.0f/s (floor-proc not measured)", l.Throughput), false, false
		}
		ratio := l.Throughput / f.AtLevel(conns).Throughput
		m := fmt.Sprintf("%.0f/s = %s× floor-proc's %.0f/s", l.Throughput, fmtRatio(ratio), f.AtLevel(conns).Throughput)
		var beside []string
		for _, n := range x.Beside {
			if b := r.Find(n); b != nil && b.AtLevel(conns) != nil && b.AtLevel(conns).Throughput > 0 {
				beside = append(beside, fmt.Sprintf("%s× %s's", fmtRatio(l.Throughput/b.AtLevel(conns).Throughput), strings.TrimPrefix(n, "throughput-")))
			}
		}
		if len(beside) > 0 {
			m += " (" + strings.Join(beside, ", ") + ")"
		}
		return m, ratio >= 0.5, true
	})
	check("warm-stream ≥ 50k calls/s", r.Find("warm-stream"), func(x *Result) (string, bool, bool) {
		m := fmt.Sprintf("%.0f calls/s", x.Throughput)
		if f := r.Find(x.Floor); f != nil && f.Throughput > 0 {
			m += fmt.Sprintf(" (%s: %.0f/s)", x.Floor, f.Throughput)
		}
		return m, x.Throughput >= 50_000, true
	})
	for _, rt := range []string{"python3", "node", "ruby"} {
		check(rt+" stem p50 under 15 ms", r.Find("runtime-stem-"+rt), under(15_000))
		check(rt+" warm p50 ≤ 1.3× go's warm", r.Find("runtime-warm-"+rt), func(x *Result) (string, bool, bool) {
			m, ratio := against(x, p50)
			return m, ratio <= 1.3, ratio > 0
		})
	}
	check("binary warm p50 under 2 ms (a fork per call)", r.Find("runtime-warm-binary"), under(2000))
	met := r.Find("metering-on")
	if met == nil {
		met = r.Find("metering-cost")
	}
	check("metering cost under 3%", met, func(x *Result) (string, bool, bool) {
		p, t := x.Extra["cost_p50_pct"], x.Extra["cost_throughput_pct"]
		return fmt.Sprintf("p50 %+.1f%%, throughput %+.1f%%", p, -t), p < 3 && t < 3, true
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
	w("| CPU | %s, %d cores |\n| memory | %d MiB |\n| kernel | %s, cgroup %s |\n", m.CPU, m.Cores, m.MemoryMiB, m.Kernel, m.Cgroup)
	fnProcs := "kiln's default for a Go function without a CPU quota, 1"
	if r.Settings.FnGOMAXPROCS > 0 {
		fnProcs = fmt.Sprint(r.Settings.FnGOMAXPROCS)
	}
	w("| GOMAXPROCS | harness %d; kilnd its --gomaxprocs default (half the CPUs); functions %s; "+
		"out-of-process floors: edge %s, function's process %s |\n",
		m.GOMAXPROCS, fnProcs, orDash(itoaPos(r.Settings.FloorEdgeGOMAXPROCS), ""), orDash(itoaPos(r.Settings.FloorFnGOMAXPROCS), ""))
	w("| other work on the machine | CPU %.0f%% busy in the second before the run, %.0f%% in the second after (harness idle) |\n", 100*r.BusyBefore, 100*r.BusyAfter)
	w("| Go | %s |\n| kiln | %s |\n| containerd | %s |\n| OCI runtime | %s: %s |\n\n",
		orDash(v.GoTool, v.Go), orDash(v.Kiln, "unknown (not a git checkout)"), orDash(v.Containerd, "not found"), v.Runtime, orDash(v.RuntimeVersion, "not found"))

	w("## How to read this\n\n")
	w("- Every row is one scenario (or one function of it), measured against a kilnd the harness started for it, with its own data directory and containerd. ")
	w("The **floor** rows are the same calls with no kiln at all, measured in the same run on the same machine, each in processes of its own (`kiln-floor`, bench/cmd/kiln-floor), ")
	w("the edge with kilnd's GOMAXPROCS and the function's process with a function's: ")
	w("`floor-proc` is the function's handler behind fasthttp in its own process; ")
	w("`floor-hop` a fasthttp process relaying every call over one unix-socket connection of length-prefixed frames, many calls in flight, to a second process that echoes: the least any design with the function in another process pays; ")
	w("`floor-grpc-hop` the same relay over one long-lived gRPC bidi stream, kiln's own shape, reached over HTTP and, as `-unary` and `-stream`, through kiln's Invoker service. ")
	w("`floor` and `floor-grpc` run in the harness's own process: **references, not targets**, since no design with a second process can come near them.\n")
	w("- Each kiln row is divided by the floor that fits it (column *floor*): warm HTTP rows and the one-call-at-a-time rows by `floor-proc`, warm gRPC rows by `floor-grpc-hop`'s gRPC rows, throughput by `floor-proc`'s. ")
	w("The hop floors are divided by `floor-proc`: that ratio is what one hop to another process costs. ")
	w("The ratio is what kiln adds, and it moves less between machines than the absolute figures do; *Against every floor* below shows the kiln rows beside the other floors too.\n")
	w("- **Open loop** rows send at a fixed rate (%.0f calls/s) whatever the answers do, and measure each call from the time it *should* have been sent, as wrk2 does, ", r.Settings.Rate)
	w("so a stall counts against every call it delayed (coordinated omission corrected). ")
	if f := r.Find("floor-proc"); f != nil && f.SendLagP50 > 0 {
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

	if rows := r.againstFloors(); len(rows) > 0 {
		w("## Against every floor\n\n")
		w("Each kiln row divided by the floor that fits it (first, *fits*) and by the others of the same shape. Sweeps compare at their peaks.\n\n")
		w("| kiln row | floor | floor's p50 | floor's p99 | floor's calls/s | p50 ÷ floor | p99 ÷ floor | calls/s ÷ floor |\n")
		w("|---|---|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range rows {
			w("%s\n", row)
		}
		w("\n")
	}

	if t := r.Find("throughput"); t != nil && len(t.Levels) > 0 {
		w("## Throughput against concurrency\n\n")
		w("Calls/s of each closed loop; kiln's p50 and p99 beside floor-proc's. In-process is the reference floor in the harness's own process.\n\n")
		w("| concurrency | kiln calls/s | kiln p50 | kiln p99 | floor-proc calls/s | floor-proc p50 | floor-proc p99 | kiln ÷ floor-proc | floor-hop calls/s | floor-grpc-hop calls/s | in-process calls/s |\n")
		w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		level := func(name string, x int) Level {
			if f := r.Find(name); f != nil {
				if l := f.AtLevel(x); l != nil {
					return *l
				}
			}
			return Level{}
		}
		for _, l := range t.Levels {
			fp := level("throughput-floor-proc", l.X)
			ratio := 0.0
			if fp.Throughput > 0 {
				ratio = l.Throughput / fp.Throughput
			}
			w("| %d | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", l.X, l.Throughput, fmtUS(l.P50), fmtUS(l.P99),
				fmtRate(fp.Throughput), fmtUS(fp.P50), fmtUS(fp.P99), fmtRatio(ratio),
				fmtRate(level("throughput-floor-hop", l.X).Throughput), fmtRate(level("throughput-floor-grpc-hop", l.X).Throughput),
				fmtRate(level("throughput-floor", l.X).Throughput))
		}
		w("\n")
	}
	if h, g := r.Find("budget-http"), r.Find("budget-grpc"); h != nil && len(h.Budget) > 0 {
		w("## Latency budget\n\n")
		w("docs/LATENCY.md reads this table: what it says about the floors, and what is left to cut.\n\n")
		w("Where a warm echo call's time goes, one call at a time (`budget` scenario): every point is stamped with the host's CLOCK_MONOTONIC by the process that passes it (the load generator, kilnd, the executor in its container), so each segment is measured, not inferred. Medians of each segment; they need not add up to the call's median.\n\n")
		w("| segment | HTTP p50 | HTTP p90 | share | gRPC p50 | gRPC p90 | share |\n|---|---:|---:|---:|---:|---:|---:|\n")
		grpcSeg := map[string]Segment{}
		if g != nil {
			for _, s := range g.Budget {
				grpcSeg[s.From+">"+s.To] = s
			}
		}
		for _, s := range h.Budget {
			gs, ok := grpcSeg[s.From+">"+s.To]
			gp50, gp90, gsh := "—", "—", "—"
			if ok {
				gp50, gp90, gsh = fmtUS(gs.P50), fmtUS(gs.P90), fmt.Sprintf("%.0f%%", 100*gs.Share)
			}
			w("| %s | %s | %s | %.0f%% | %s | %s | %s |\n", s.Name, fmtUS(s.P50), fmtUS(s.P90), 100*s.Share, gp50, gp90, gsh)
		}
		gp50 := "—"
		if g != nil {
			gp50 = fmtUS(g.P50)
		}
		w("| **the whole call, as the load generator saw it** | **%s** | %s | | **%s** | | |\n\n", fmtUS(h.P50), fmtUS(h.P90), gp50)
	}
	if r.Find("runtime-warm-go") != nil {
		w("## Runtimes\n\n")
		w("An echo function of each runtime, one call at a time (`runtimes` scenario); each figure beside go's in the same kilnd. The root filesystem was built from the Debian mirror in the run.\n\n")
		w("| runtime | root filesystem | build | cold p50 | stem p50 | thawed p50 | warm p50 | warm p99 | warm p50 ÷ go's |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, rt := range append([]string{"go"}, RuntimeNames()...) {
			p50Of := func(name string) string {
				if x := r.Find(name); x != nil && x.Calls > 0 {
					return fmtUS(x.P50)
				}
				return "—"
			}
			size, build := "—", "—"
			if x := r.Find("runtime-cold-" + rt); x != nil && x.Extra["rootfs_mib"] > 0 {
				size, build = fmt.Sprintf("%.1f MiB", x.Extra["rootfs_mib"]), fmt.Sprintf("%.1f s", x.Extra["rootfs_build_s"])
			}
			warm := r.Find("runtime-warm-" + rt)
			p99, ratio := "—", "—"
			if warm != nil && warm.Calls > 0 {
				p99 = fmtUS(warm.P99)
				if warm.RatioP50 > 0 {
					ratio = fmtRatio(warm.RatioP50)
				}
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", rt, size, build, p50Of("runtime-cold-"+rt), p50Of("runtime-stem-"+rt),
				p50Of("runtime-thawed-"+rt), p50Of("runtime-warm-"+rt), p99, ratio)
		}
		w("\n")
	}
	if d := r.Find("density"); d != nil && len(d.Levels) > 0 {
		w("## Density\n\n| frozen containers | cgroup memory each | kilnd RSS each | start each | thaw p50 | thaw p99 | |\n|---:|---:|---:|---:|---:|---:|---|\n")
		for _, l := range d.Levels {
			retry := ""
			if l.Extra["retried"] > 0 {
				retry = "measured twice (first p50 ≥ 1 ms)"
			}
			w("| %d | %.1f MiB | %.0f KiB | %.0f ms | %s | %s | %s |\n", l.X, l.Extra["memory_per_container_mib"], l.Extra["kilnd_rss_per_container_kib"], l.Extra["start_ms"], fmtUS(l.P50), fmtUS(l.P99), retry)
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
	w("    make bench         # every scenario, about 16 minutes on 2 cores (the runtimes build their root filesystems); rewrites this file and docs/bench/*.png\n")
	w("    make bench-quick   # under a minute; writes bench/results/quick.md\n")
	w("    go run ./bench/cmd/kiln-bench -scenarios floor,warm-http,thawed   # some scenarios (floors are added)\n\n")
	w("Each run also writes every figure, with the CDFs and the settings, to `bench/results/run-<time>.json`.\n")
	w("Settings of this run: %s.\n", settingsLine(r.Settings))
	return b.String()
}

func settingsLine(s Settings) string {
	extra := ""
	if len(s.KilndArgs) > 0 {
		extra = "; every kilnd with " + strings.Join(s.KilndArgs, " ")
	}
	return fmt.Sprintf("open loop %.0f/s, %d calls after %d warm-up; stream %d in flight for %.1fs; throughput levels %s, %.1fs each; "+
		"%d thaws, %d stem calls, %d cold calls; bursts: %d of %d calls; density steps %s at %d MiB",
		s.Rate, s.Calls, s.Warmup, s.StreamInFlight, s.StreamSeconds, joinInts(s.Levels), s.LevelSeconds,
		s.Thaws, s.Stems, s.Colds, s.Bursts, s.BurstSize, joinInts(s.DensitySteps), s.DensityMemoryMB) + extra
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
	{"in-process (ref.)", []string{"floor-seq", "floor"}},
	{"floor-proc", []string{"floor-proc-seq", "floor-proc"}},
	{"floor-hop", []string{"floor-hop-seq", "floor-hop"}},
	{"floor-grpc-hop", []string{"floor-grpc-hop-seq", "floor-grpc-hop"}},
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

// againstFloors renders a table row for each floor of each kiln row that
// names floors beside its own.
func (r *Run) againstFloors() []string {
	var rows []string
	for i := range r.Results {
		x := &r.Results[i]
		if len(x.Beside) == 0 || x.Calls == 0 {
			continue
		}
		named := false
		for j, n := range append([]string{x.Floor}, x.Beside...) {
			f := r.Find(n)
			if f == nil || f.Calls == 0 {
				continue
			}
			p50, p99, tput := ratios(x, f)
			label := n
			if j == 0 {
				label += " (fits)"
			}
			name := ""
			if !named {
				name, named = x.Scenario, true
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s |", name, label,
				fmtUS(f.P50), fmtUS(f.P99), fmtRate(f.Throughput), fmtRatio(p50), fmtRatio(p99), fmtRatio(tput)))
		}
	}
	return rows
}

// itoaPos formats a positive n; "" otherwise.
func itoaPos(n int) string {
	if n <= 0 {
		return ""
	}
	return strconv.Itoa(n)
}
