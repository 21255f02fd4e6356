// Command kiln-bench runs kiln's benchmark scenarios against kilnd
// processes it starts itself, beside the floors measured in the same run
// (kiln-floor processes it builds and starts, and in-process references),
// and writes the results as JSON, a markdown report and PNG plots.
//
//	kiln-bench [-quick] [-scenarios floor,warm-http,...] [-out bench/results] [-report docs/BENCHMARKS.md]
//
// It needs root, containerd and runc or crun, and the binaries of `make
// build` (./bin/kilnd, ./bin/kiln-executor).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kilndBin  = flag.String("kilnd", "./bin/kilnd", "kilnd `binary` to benchmark")
		executor  = flag.String("executor", "./bin/kiln-executor", "static stem cell executor `binary` (stem scenario)")
		runtimeB  = flag.String("runtime-binary", "crun", "OCI runtime kilnd runs containers with: crun or runc")
		scenarios = flag.String("scenarios", "", "comma-separated `names` of the scenarios to run (default: all, or the quick set); floors they need are added: "+strings.Join(bench.Names(), ","))
		quick     = flag.Bool("quick", false, "fewer calls, scenarios and levels: a look in under a minute")
		out       = flag.String("out", "bench/results", "`directory` for the JSON result of the run")
		report    = flag.String("report", "", "markdown report `file` to write (empty: none)")
		plots     = flag.String("plots", "", "`directory` for the PNG plots (default: bench/ beside the report, or -out)")
		makeLabel = flag.String("make", "", "the make target running this, for the report")
		rate      = flag.Float64("rate", 500, "open-loop `calls/s` of the latency scenarios")
		n         = flag.Int("n", 0, "measured calls per open-loop scenario (default 4000, quick 500)")
		warmup    = flag.Int("warmup", 0, "unrecorded calls before each open-loop scenario (default 500, quick 100)")
		levels    = flag.String("levels", "", "throughput's concurrency `levels` (default 1,2,4,...,256; quick 1,8,64)")
		density   = flag.String("density-steps", "", "density's frozen container `counts` (default 8,16,32,64,128,256,512,1000; quick 8,16)")
		budget    = flag.Duration("budget", 0, "time the run should take at most: density stops growing before it (default 14m, quick 50s)")
		kilndArgs = flag.String("kilnd-args", "", "space-separated `flags` added to every kilnd the run starts (e.g. \"--kilnd-cpus 0 --container-cpus 1\")")
		fnProcs   = flag.Int("fn-gomaxprocs", 0, "GOMAXPROCS of the benchmark functions and of the floors' function processes (0: kiln's default, 1)")
		edgeProcs = flag.Int("floor-gomaxprocs", 0, "GOMAXPROCS of the out-of-process floors' edges (0: kilnd's default, half the CPUs)")
		fromJSON  = flag.String("from-json", "", "regenerate the report and plots from this run `file` instead of measuring")
	)
	flag.Parse()
	if *fromJSON != "" {
		r, err := bench.ReadRun(*fromJSON)
		if err != nil {
			return err
		}
		return writeReport(r, *report, plotsDir(*plots, *report, *out))
	}
	start := time.Now()
	var (
		err      error
		selected []bench.Scenario
	)
	cfg := bench.Config{
		Kilnd: *kilndBin, Executor: *executor, RuntimeBinary: *runtimeB, KilndArgs: strings.Fields(*kilndArgs), FnGOMAXPROCS: *fnProcs, FloorGOMAXPROCS: *edgeProcs, AllFunctions: true,
		Rate: *rate, Calls: 4000, Warmup: 500,
		StreamInFlight: 64, StreamDuration: 3 * time.Second,
		Levels:        []int{1, 2, 4, 8, 16, 32, 64, 128, 256},
		LevelDuration: 2 * time.Second, LevelWarmup: 500 * time.Millisecond,
		Thaws: 2000, Stems: 60, Colds: 40,
		Bursts: 3, BurstSize: 200,
		DensitySteps: []int{8, 16, 32, 64, 128, 256, 512, 1000}, DensityThaws: 200, DensityMemoryMB: 32,
		Deadline: start.Add(14 * time.Minute),
	}
	if *quick {
		cfg.Calls, cfg.Warmup, cfg.StreamDuration, cfg.AllFunctions = 500, 100, 700*time.Millisecond, false
		cfg.Levels, cfg.LevelDuration, cfg.LevelWarmup = []int{1, 8, 64}, 400*time.Millisecond, 200*time.Millisecond
		cfg.Thaws, cfg.Stems, cfg.Colds, cfg.Bursts = 150, 6, 5, 1
		cfg.DensitySteps, cfg.DensityThaws = []int{8, 16}, 50
		cfg.Deadline = start.Add(50 * time.Second)
	}
	if *n > 0 {
		cfg.Calls = *n
	}
	if *warmup > 0 {
		cfg.Warmup = *warmup
	}
	if *budget > 0 {
		cfg.Deadline = start.Add(*budget)
	}
	if *levels != "" {
		if cfg.Levels, err = ints("-levels", *levels); err != nil {
			return err
		}
	}
	if *density != "" {
		if cfg.DensitySteps, err = ints("-density-steps", *density); err != nil {
			return err
		}
	}
	if cfg.Rate <= 0 {
		return errors.New("-rate must be positive")
	}
	if *runtimeB != "runc" && *runtimeB != "crun" {
		return fmt.Errorf("-runtime-binary %q: want runc or crun", *runtimeB)
	}
	selected, err = bench.Select(*scenarios, *quick)
	if err != nil {
		return err
	}
	if _, err := os.Stat(cfg.Kilnd); err != nil {
		return fmt.Errorf("kilnd: %w (run make build)", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "kiln-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cfg.Functions = map[string]string{}
	for _, fn := range []string{"echo", "json", "primes"} {
		if cfg.Functions[fn], err = bench.BuildFunction(ctx, "./bench/functions/"+fn, tmp); err != nil {
			return err
		}
	}
	if cfg.Floor, err = bench.BuildFunction(ctx, "./bench/cmd/kiln-floor", tmp); err != nil {
		return err
	}

	var names []string
	weights := 0.0
	for _, s := range selected {
		names = append(names, s.Name)
		weights += s.Weight
	}
	r := &bench.Run{
		Time:       start,
		BusyBefore: bench.CPUBusy(time.Second),
		Command:    "go run ./bench/cmd/kiln-bench " + shellJoin(os.Args[1:]),
		Make:       *makeLabel,
		Quick:      *quick,
		Machine:    bench.ThisMachine(),
		Versions:   bench.TheseVersions(ctx, *runtimeB),
		Settings:   bench.SettingsOf(cfg),
		Scenarios:  names,
	}
	r.Command = strings.TrimSpace(r.Command)
	prog := bench.NewProgress(os.Stderr, weights)
	env := &bench.Env{Config: cfg, Progress: prog, Help: bench.KilndHelp(ctx, cfg.Kilnd),
		LogDir: filepath.Join(*out, "logs-"+start.UTC().Format("20060102T150405Z"))}
	prog.Logf("kiln-bench: %s; %s, %s, %s", strings.Join(names, ", "), r.Versions.Kiln, r.Versions.Containerd, r.Versions.RuntimeVersion)
	var failed []string
	for _, s := range selected {
		prog.Begin(s.Name, s.Weight)
		env.Current = s.Name
		t0 := time.Now()
		res, err := s.Run(ctx, env)
		if ctx.Err() != nil {
			prog.Finish()
			return ctx.Err()
		}
		if err != nil {
			failed = append(failed, s.Name)
			res = []bench.Result{{Scenario: s.Name, Skipped: "failed: " + oneLine(err.Error())}}
			prog.End(fmt.Sprintf("FAILED after %v: %v", time.Since(t0).Round(time.Millisecond), err))
		} else {
			var sums []string
			for _, x := range res {
				sums = append(sums, x.Scenario+" "+bench.Summary(x))
			}
			prog.End(fmt.Sprintf("%v; %s", time.Since(t0).Round(100*time.Millisecond), strings.Join(sums, " | ")))
		}
		r.Results = append(r.Results, res...)
	}
	prog.Finish()
	r.Warnings = env.Warnings
	r.AddRatios()
	r.WallSeconds = time.Since(start).Seconds()
	r.BusyAfter = bench.CPUBusy(time.Second)
	if err := writeReport(r, *report, plotsDir(*plots, *report, *out)); err != nil {
		return err
	}
	path, err := r.WriteJSON(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "results: %s; kilnd logs: %s; report: %s; %d plots; %v\n", path, env.LogDir, orNone(*report), len(r.Plots), time.Since(start).Round(time.Second))
	if len(failed) > 0 {
		return fmt.Errorf("scenarios failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// plotsDir is where the plots go: -plots, else bench/ beside the report,
// else plots/ in the results directory.
func plotsDir(plots, report, out string) string {
	switch {
	case plots != "":
		return plots
	case report != "":
		return filepath.Join(filepath.Dir(report), "bench")
	}
	return filepath.Join(out, "plots")
}

// writeReport draws the plots and writes the markdown report (to stdout
// when report is empty).
func writeReport(r *bench.Run, report, plots string) error {
	relTo := filepath.Dir(report)
	if report == "" {
		relTo = "."
	}
	if err := r.WritePlots(plots, relTo); err != nil {
		return err
	}
	about := map[string]string{}
	for _, s := range bench.Scenarios {
		about[s.Name] = s.About
	}
	md := r.Markdown(about)
	if report == "" {
		fmt.Print(md)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(report), 0o755); err != nil {
		return err
	}
	return os.WriteFile(report, []byte(md), 0o644)
}

// shellJoin joins args as a shell would need them typed.
func shellJoin(args []string) string {
	var out []string
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$`\\*?;&|<>()") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

// ints parses a comma-separated list of positive integers.
func ints(flag, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%s %q: want positive integers", flag, s)
		}
		out = append(out, v)
	}
	return out, nil
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
