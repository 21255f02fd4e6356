package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/bench/functions/handlers"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Config is what a run measures and how hard.
type Config struct {
	// Kilnd and Executor are the binaries under test; RuntimeBinary the OCI
	// runtime kilnd is told to use (runc or crun).
	Kilnd, Executor, RuntimeBinary string
	// KilndArgs are added to every kilnd's command line (after the
	// harness's own, so that they win), e.g. a CPU placement to compare.
	KilndArgs []string
	// Functions maps a benchmark function's name (echo, json, primes) to
	// its built binary.
	Functions map[string]string
	// FnGOMAXPROCS, when positive, is set in the functions' environment.
	FnGOMAXPROCS int
	// Floor is the kiln-floor binary of the out-of-process floors;
	// FloorGOMAXPROCS, when positive, the GOMAXPROCS of their edges
	// (default: kilnd's, half the CPUs).
	Floor           string
	FloorGOMAXPROCS int
	// AllFunctions runs floor and warm-http on the json and primes
	// functions too, not only on echo.
	AllFunctions bool

	// Rate, Calls and Warmup shape the open-loop latency scenarios.
	Rate          float64
	Calls, Warmup int
	// StreamInFlight is warm-stream's calls in flight, StreamDuration its
	// measured time (after half a second of warm-up).
	StreamInFlight int
	StreamDuration time.Duration
	// Levels are throughput's concurrency levels, each run LevelWarmup
	// unrecorded then LevelDuration recorded.
	Levels                     []int
	LevelDuration, LevelWarmup time.Duration
	// Thaws, Stems and Colds are the measured calls of thawed, stem and
	// cold (after 2 unrecorded ones each).
	Thaws, Stems, Colds int
	// Bursts bursts of BurstSize calls each.
	Bursts, BurstSize int
	// DensitySteps are the frozen container counts density tries, in
	// order, DensityThaws thaws measured at each, each container limited
	// to DensityMemoryMB.
	DensitySteps    []int
	DensityThaws    int
	DensityMemoryMB int
	// Deadline is when the run should be over: density stops growing
	// before it.
	Deadline time.Time
}

// Bodies the scenarios send.
var (
	// EchoBody is what echo calls send (64 bytes).
	EchoBody = []byte("kiln benchmark echo body: 64 bytes of ASCII text for every call.")
	// JSONBody is an order for the json function (8 items).
	JSONBody = []byte(`{"id":"order-4711","items":[` +
		`{"name":"flour","qty":2,"price":1.25},{"name":"yeast","qty":1,"price":0.45},` +
		`{"name":"salt","qty":1,"price":0.3},{"name":"water","qty":3,"price":0.1},` +
		`{"name":"olive oil","qty":1,"price":6.9},{"name":"sugar","qty":1,"price":1.1},` +
		`{"name":"rye","qty":2,"price":1.8},{"name":"seeds","qty":1,"price":2.4}]}`)
	// PrimesBody asks the primes function for the primes up to 100000
	// (9592; about half a millisecond of CPU here).
	PrimesBody = []byte("100000")
)

// Handlers are the benchmark functions' handlers by name, as the floor
// serves them.
var Handlers = handlers.ByName

// Env is what a scenario runs with.
type Env struct {
	Config
	Progress *Progress
	// Help is kilnd's --help output.
	Help string
	// LogDir, when set, keeps the log of every kilnd the run started, as
	// <scenario>-<n>.log.
	LogDir string
	// Current is the running scenario's name.
	Current string
	// Warnings are what went wrong outside the measurements (kilnd leaving
	// containers behind), for the report.
	Warnings []string
	kilnds   int
}

// Scenario is one named, reproducible measurement.
type Scenario struct {
	Name string
	// About says what it measures, for the report.
	About string
	// Weight is its expected share of a full run's time (seconds), for
	// the progress bar.
	Weight float64
	// Quick says whether -quick runs it by default.
	Quick bool
	// Floors names the floor scenarios it needs in the same run: the one
	// its rows are divided by, and those the report shows beside.
	Floors []string
	Run    func(ctx context.Context, e *Env) ([]Result, error)
}

// Scenarios lists every scenario in the order a run measures them.
var Scenarios = []Scenario{
	{Name: "floor", Weight: 27, Quick: true, Run: runFloor,
		About: "reference, not a target: the functions' own handlers in-process behind fasthttp on loopback, in the harness's process"},
	{Name: "floor-grpc", Weight: 13, Quick: true, Run: runFloorGRPC,
		About: "reference, not a target: kiln's Invoker service echoing in-process over loopback gRPC, through api/client"},
	{Name: "floor-proc", Weight: 27, Quick: true, Run: runFloorProc,
		About: "the same handlers behind fasthttp in a process of their own (kiln-floor echo), with kilnd's GOMAXPROCS: the HTTP floor"},
	{Name: "floor-hop", Weight: 10, Quick: true, Floors: []string{"floor-proc"}, Run: runFloorHop,
		About: "a fasthttp process relaying every call over one unix-socket connection of length-prefixed frames, many calls in flight, " +
			"to a second process that echoes (kiln-floor hop and sink): the least any design with the function in another process pays"},
	{Name: "floor-grpc-hop", Weight: 25, Quick: true, Floors: []string{"floor-proc"}, Run: runFloorGRPCHop,
		About: "the same relay over one long-lived gRPC bidi stream on a unix socket (kiln-floor grpc-hop and sink), " +
			"reached over HTTP and through kiln's Invoker service (unary and InvokeStream): the floor of kiln's own shape, and of its gRPC rows"},
	{Name: "warm-http", Weight: 29, Quick: true, Floors: []string{"floor-proc", "floor-hop", "floor-grpc-hop", "floor"}, Run: runWarmHTTP,
		About: "a running container: HTTP → kilnd → executor stream → Go function"},
	{Name: "warm-grpc", Weight: 10, Quick: true, Floors: []string{"floor-grpc-hop", "floor-grpc"}, Run: runWarmGRPC,
		About: "a running container through the gRPC unary Invoke"},
	{Name: "warm-stream", Weight: 5, Quick: true, Floors: []string{"floor-grpc-hop", "floor-grpc"}, Run: runWarmStream,
		About: "a running container, 64 calls in flight on one gRPC InvokeStream"},
	{Name: "budget", Weight: 8, Quick: true, Floors: []string{"floor-proc", "floor-hop", "floor-grpc-hop"}, Run: runBudget,
		About: "where a warm call's time goes: echo calls one at a time, each traced with CLOCK_MONOTONIC stamps by the load generator, kilnd and the executor, over HTTP and gRPC"},
	{Name: "thawed", Weight: 5, Quick: true, Floors: []string{"floor-proc"}, Run: runThawed,
		About: "a frozen container per call, thawed through the cgroup freezer"},
	{Name: "stem", Weight: 21, Quick: true, Floors: []string{"floor-proc"}, Run: runStem,
		About: "a frozen stem cell specialised into the function per call"},
	{Name: "cold", Weight: 21, Quick: true, Floors: []string{"floor-proc"}, Run: runCold,
		About: "a new container started per call (no stem cells)"},
	{Name: "runtimes", Weight: 200, Quick: false, Run: runRuntimes,
		About: "for each runtime (go, python3, ruby, node, binary, cpp, csharp, java): its root filesystem built from the Debian mirror, then an echo function's warm, thawed, cold and stem-cell calls, one at a time, each beside go's in the same kilnd"},
	{Name: "burst", Weight: 8, Floors: []string{"floor-proc"}, Run: runBurst,
		About: "200 calls at once on a function with no container"},
	{Name: "throughput", Weight: 115, Quick: true, Run: runThroughput,
		About: "closed loop at rising concurrency on warm-http and on every HTTP floor"},
	{Name: "metering-cost", Weight: 65, Floors: []string{"floor-proc"}, Run: runMetering,
		About: "warm-http with metering on and off"},
	{Name: "density", Weight: 75, Floors: []string{"floor-proc"}, Run: runDensity,
		About: "memory per frozen container, and thaw latency as frozen containers pile up"},
}

// Select returns the scenarios named in list (comma-separated; empty: all,
// or the quick set), with the floors they need added, in run order.
func Select(list string, quick bool) ([]Scenario, error) {
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	for n := range want {
		if !slices.ContainsFunc(Scenarios, func(s Scenario) bool { return s.Name == n }) {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", n, strings.Join(Names(), ", "))
		}
	}
	all := len(want) == 0
	for _, s := range Scenarios {
		if all && (!quick || s.Quick) {
			want[s.Name] = true
		}
	}
	// The floors of what is wanted, and theirs.
	for added := true; added; {
		added = false
		for _, s := range Scenarios {
			if !want[s.Name] {
				continue
			}
			for _, f := range s.Floors {
				if !want[f] {
					want[f], added = true, true
				}
			}
		}
	}
	var out []Scenario
	for _, s := range Scenarios {
		if want[s.Name] {
			out = append(out, s)
		}
	}
	return out, nil
}

// Names lists the scenarios' names.
func Names() []string {
	var ns []string
	for _, s := range Scenarios {
		ns = append(ns, s.Name)
	}
	return ns
}

// functions is how many of echo, json and primes floor and warm-http run.
func (e *Env) functions() int {
	if e.AllFunctions {
		return 3
	}
	return 1
}

// openLoop is the open loop of the latency scenarios.
func (e *Env) openLoop(want string) OpenLoop {
	return OpenLoop{Rate: e.Rate, Calls: e.Calls, Warmup: e.Warmup, Workers: 8, Want: want, Progress: e.Progress.Step}
}

// part returns a progress function for part i of n of a scenario.
func (e *Env) part(i, n int) func(done, total int) {
	return func(done, total int) {
		if total > 0 {
			e.Progress.Set((float64(i) + float64(done)/float64(total)) / float64(n))
		}
	}
}

func (e *Env) openMode() string { return fmt.Sprintf("open loop %.0f/s, 8 senders", e.Rate) }

// startKilnd starts a kilnd of the configured runtime with extra args.
func (e *Env) startKilnd(ctx context.Context, args ...string) (*Kilnd, error) {
	args = append(append([]string{"--runtime-binary", e.RuntimeBinary}, args...), e.KilndArgs...)
	k, err := StartKilnd(ctx, e.Kilnd, args...)
	if err == nil && e.LogDir != "" {
		e.kilnds++
		k.KeepLog = filepath.Join(e.LogDir, fmt.Sprintf("%s-%d.log", e.Current, e.kilnds))
	}
	return k, err
}

// stop stops k and warns when kilnd left containers behind.
func (e *Env) stop(k *Kilnd) {
	if n := k.Stop(); n > 0 {
		w := fmt.Sprintf("%s: kilnd left %d containers running after SIGTERM; the harness killed them", e.Current, n)
		e.Warnings = append(e.Warnings, w)
		e.Progress.Logf("warning: %s", w)
	}
}

// spec returns a function spec with the configured environment.
func (e *Env) spec() *kilnv1.FunctionSpec {
	s := &kilnv1.FunctionSpec{}
	if e.FnGOMAXPROCS > 0 {
		s.Env = map[string]string{"GOMAXPROCS": fmt.Sprint(e.FnGOMAXPROCS)}
	}
	return s
}

// warmSpec keeps one container (which kiln parks frozen until the first
// warm-up call) and never freezes it once used; it takes up to 64 calls at
// once before kiln adds containers.
func (e *Env) warmSpec() *kilnv1.FunctionSpec {
	s := e.spec()
	s.MinWarm, s.Concurrency, s.FreezeAfter = 1, 64, durationpb.New(-time.Second)
	return s
}

// deployWarm deploys the benchmark functions with warmSpec and waits for
// their first containers.
func (e *Env) deployWarm(ctx context.Context, k *Kilnd, fns ...string) error {
	for _, fn := range fns {
		if err := k.Deploy(ctx, fn, e.Functions[fn], e.warmSpec()); err != nil {
			return fmt.Errorf("deploy %s: %w", fn, err)
		}
		if _, err := k.WaitContainers(ctx, fn, 20*time.Millisecond, 30*time.Second, func(cs []*kilnv1.Container) bool {
			return len(cs) > 0 && cs[0].State != "creating" && cs[0].State != "starting"
		}); err != nil {
			return err
		}
	}
	return nil
}

// Summary is a one-line account of r for the progress log.
func Summary(r Result) string {
	if r.Skipped != "" {
		return "skipped: " + r.Skipped
	}
	s := fmt.Sprintf("p50 %s p99 %s, %.0f calls/s, %d calls", fmtUS(r.P50), fmtUS(r.P99), r.Throughput, r.Calls)
	if len(r.Others) > 0 {
		s += fmt.Sprintf(", left out %v", r.Others)
	}
	return s
}

func runFloor(ctx context.Context, e *Env) ([]Result, error) {
	f, err := StartFloor(Handlers)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return e.httpFloor(ctx, f.Addr(), httpFloorRows{
		prefix: "floor", functions: e.functions(), note: "reference: in-process fasthttp in the harness's process",
	})
}

// seqMode is the mode of the back-to-back rows.
const seqMode = "one call at a time, back to back"

func runFloorGRPC(ctx context.Context, e *Env) ([]Result, error) {
	f, err := StartGRPCFloor()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := client.NewGRPC(f.Addr())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ol := e.openLoop("")
	ol.Progress = e.part(0, 2)
	lat, err := ol.Run(ctx, GRPCUnaryTarget(c, "echo", EchoBody))
	if err != nil {
		return nil, fmt.Errorf("unary: %w", err)
	}
	unary := lat.Result("floor-grpc")
	unary.Floor, unary.Mode = "floor-grpc", e.openMode()
	unary.Note = "reference: in-process gRPC echo in the harness's process, unary Invoke"
	stream, err := e.streamLoop(ctx, c, "floor-grpc-stream", e.part(1, 2))
	if err != nil {
		return nil, err
	}
	stream.Floor, stream.Note = "floor-grpc-stream", "reference: in-process gRPC echo in the harness's process, InvokeStream"
	return []Result{unary, stream}, nil
}

// streamLoop runs the closed loop of warm-stream: StreamInFlight callers
// on one stream of c.
func (e *Env) streamLoop(ctx context.Context, c *client.GRPCClient, name string, progress func(done, total int)) (Result, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.OpenStream(sctx)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	lat, err := ClosedLoop{
		Concurrency: e.StreamInFlight, Duration: e.StreamDuration, Warmup: e.LevelWarmup, Progress: progress,
	}.Run(ctx, GRPCStreamTarget(s, "echo", EchoBody))
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	r := lat.Result(name)
	r.Mode = fmt.Sprintf("closed loop, %d in flight on one stream", e.StreamInFlight)
	return r, nil
}

func runWarmHTTP(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	if err := e.deployWarm(ctx, k, []string{"echo", "json", "primes"}[:e.functions()]...); err != nil {
		return nil, err
	}
	c := NewHostClient(k.Addr, 8)
	var out []Result
	for _, fn := range []struct {
		name, floor, fn string
		body            []byte
		check           func([]byte) error
	}{
		{"warm-http", "floor-proc", "echo", EchoBody, EchoCheck(EchoBody)},
		{"warm-http-json", "floor-proc-json", "json", JSONBody, nil},
		{"warm-http-primes", "floor-proc-primes", "primes", PrimesBody, nil},
	}[:e.functions()] {
		ol := e.openLoop("")
		ol.Progress = e.part(len(out), e.functions()+1)
		lat, err := ol.Run(ctx, HTTPTarget(c, "/invoke/"+fn.fn, fn.body, fn.check))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fn.name, err)
		}
		r := lat.Result(fn.name)
		r.Floor, r.Mode = fn.floor, e.openMode()
		if fn.fn == "echo" {
			r.Beside = []string{"floor-hop", "floor-grpc-hop", "floor"}
		} else {
			r.Beside = []string{strings.Replace(fn.floor, "floor-proc", "floor", 1)}
		}
		r.Note = "function " + fn.fn + ", one container (concurrency 64, never frozen)"
		out = append(out, r)
	}
	lat, err := oneAtATime(ctx, e.part(e.functions(), e.functions()+1), e.Warmup, e.Calls, "warm",
		HTTPTarget(c, "/invoke/echo", EchoBody, EchoCheck(EchoBody)), nil)
	if err != nil {
		return nil, fmt.Errorf("warm-http-seq: %w", err)
	}
	r := lat.Result("warm-http-seq")
	r.Floor, r.Mode, r.Note = "floor-proc-seq", seqMode, "function echo, the same container"
	r.Beside = []string{"floor-hop-seq", "floor-grpc-hop-seq", "floor-seq"}
	return append(out, r), nil
}

func runWarmGRPC(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	if err := e.deployWarm(ctx, k, "echo"); err != nil {
		return nil, err
	}
	c, err := client.NewGRPC(k.GRPCAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	lat, err := e.openLoop("").Run(ctx, GRPCUnaryTarget(c, "echo", EchoBody))
	if err != nil {
		return nil, err
	}
	r := lat.Result("warm-grpc")
	r.Floor, r.Mode, r.Note = "floor-grpc-hop-unary", e.openMode(), "unary Invoke, one container"
	r.Beside = []string{"floor-grpc"}
	return []Result{r}, nil
}

func runWarmStream(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	if err := e.deployWarm(ctx, k, "echo"); err != nil {
		return nil, err
	}
	c, err := client.NewGRPC(k.GRPCAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r, err := e.streamLoop(ctx, c, "warm-stream", e.Progress.Step)
	if err != nil {
		return nil, err
	}
	r.Floor, r.Note = "floor-grpc-hop-stream", "one container (concurrency 64)"
	r.Beside = []string{"floor-grpc-stream"}
	return []Result{r}, nil
}

// oneAtATime makes warmup+n single calls of target, running prepare (not
// timed; nil: nothing) before each, and records the calls that started as
// want. progress is told the measured calls done.
func oneAtATime(ctx context.Context, progress func(done, total int), warmup, n int, want string, target Target, prepare func(i int) error) (*Latencies, error) {
	call := target()
	lat := NewLatencies()
	var timed time.Duration
	for i := 0; i < warmup+n; i++ {
		if prepare != nil {
			if err := prepare(i); err != nil {
				return nil, fmt.Errorf("call %d: %w", i, err)
			}
		}
		t0 := time.Now()
		kind, err := call(ctx)
		d := time.Since(t0)
		if i < warmup {
			continue
		}
		timed += d
		if err != nil {
			lat.Error()
			return nil, fmt.Errorf("call %d: %w", i, err)
		}
		lat.Started(kind)
		switch {
		case kind != want:
			lat.Other(kind)
		default:
			lat.Record(d)
		}
		if done := i - warmup + 1; done%16 == 0 || done == n {
			progress(done, n)
		}
	}
	// Throughput of one-at-a-time calls is 1/mean over the timed calls.
	now := time.Now()
	lat.BeginAt(now.Add(-timed))
	lat.EndAt(now)
	return lat, nil
}

func runThawed(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	s := e.spec()
	s.MinWarm, s.MaxContainers, s.FreezeAfter = 1, 1, durationpb.New(0)
	if err := k.Deploy(ctx, "thaw", e.Functions["echo"], s); err != nil {
		return nil, err
	}
	c := NewHostClient(k.Addr, 1)
	lat, err := oneAtATime(ctx, e.Progress.Step, 20, e.Thaws, "thawed", HTTPTarget(c, "/invoke/thaw", EchoBody, EchoCheck(EchoBody)), func(int) error {
		_, err := k.WaitContainers(ctx, "thaw", time.Millisecond, 30*time.Second, AllFrozen(1))
		return err
	})
	if err != nil {
		return nil, err
	}
	r := lat.Result("thawed")
	r.Floor, r.Mode = "floor-proc-seq", "one call at a time, the container frozen before each"
	r.Note = "freeze_after 0, one container; only calls answered X-Kiln-Start: thawed"
	return []Result{r}, nil
}

func runStem(ctx context.Context, e *Env) ([]Result, error) {
	const stems = 2
	args := []string{"--stem-cells", fmt.Sprintf("go=%d", stems)}
	if e.Executor != "" {
		args = append(args, "--executor-binary", e.Executor)
	}
	k, err := e.startKilnd(ctx, args...)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	const warmup = 2
	names := make([]string, warmup+e.Stems)
	for i := range names {
		names[i] = fmt.Sprintf("stem-%d", i)
		if err := k.Deploy(ctx, names[i], e.Functions["echo"], e.spec()); err != nil {
			return nil, err
		}
	}
	// Each call takes a stem cell; before the next, the pool must have
	// started its replacement (logged "stem cell ready").
	res, err := e.eachNewFunction(ctx, k, names, "stem", e.Progress.Step, func(i int) error {
		return k.WaitLog(ctx, "stem cell ready", stems+i, 60*time.Second)
	})
	if err != nil {
		return nil, err
	}
	r := *res
	r.Floor, r.Mode = "floor-proc-seq", "one call at a time, each to a new function"
	r.Note = fmt.Sprintf("--stem-cells go=%d, refilled before each call; only calls answered X-Kiln-Start: stem", stems)
	return []Result{r}, nil
}

func runCold(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	const warmup = 2
	names := make([]string, warmup+e.Colds)
	for i := range names {
		names[i] = fmt.Sprintf("cold-%d", i)
		if err := k.Deploy(ctx, names[i], e.Functions["echo"], e.spec()); err != nil {
			return nil, err
		}
	}
	res, err := e.eachNewFunction(ctx, k, names, "cold", e.Progress.Step, nil)
	if err != nil {
		return nil, err
	}
	r := *res
	r.Floor, r.Mode = "floor-proc-seq", "one call at a time, each to a new function"
	r.Note = "no stem cells, runtime " + e.RuntimeBinary + "; the previous function deleted before each call"
	return []Result{r}, nil
}
