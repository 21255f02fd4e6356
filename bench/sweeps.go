package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func runBurst(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	c := NewHostClient(k.Addr, e.BurstSize)
	lat := NewLatencies()
	var alls []float64
	var wall time.Duration
	for b := 0; b < e.Bursts; b++ {
		name := fmt.Sprintf("burst-%d", b)
		if err := k.Deploy(ctx, name, e.Functions["echo"], e.spec()); err != nil {
			return nil, err
		}
		openConns(c, e.BurstSize)
		target := HTTPTarget(c, "/invoke/"+name, EchoBody, EchoCheck(EchoBody))
		gate := make(chan struct{})
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			last  time.Time
			first error
		)
		release := time.Now() // set again below, before the gate opens
		for i := 0; i < e.BurstSize; i++ {
			call := target()
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				kind, err := call(ctx)
				end := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					lat.Error()
					if first == nil {
						first = err
					}
					return
				}
				lat.Started(kind)
				lat.Record(end.Sub(release))
				if end.After(last) {
					last = end
				}
			}()
		}
		time.Sleep(50 * time.Millisecond) // every caller waits at the gate
		mu.Lock()
		release = time.Now()
		mu.Unlock()
		close(gate)
		wg.Wait()
		if first != nil {
			return nil, fmt.Errorf("burst %d: %w", b, first)
		}
		all := last.Sub(release)
		wall += all
		alls = append(alls, float64(all)/1e6)
		if err := k.Client.Delete(ctx, name); err != nil {
			return nil, err
		}
		e.Progress.Step(b+1, e.Bursts)
	}
	now := time.Now()
	lat.BeginAt(now.Add(-wall))
	lat.EndAt(now)
	r := lat.Result("burst")
	slices.Sort(alls)
	r.Floor = "floor-proc-seq"
	r.Mode = fmt.Sprintf("%d bursts of %d calls released at once, %d connections", e.Bursts, e.BurstSize, e.BurstSize)
	r.Extra = map[string]float64{"all_answered_ms": alls[len(alls)/2], "all_answered_max_ms": alls[len(alls)-1]}
	r.Note = fmt.Sprintf("all %d answered after %.0f ms (median of %d bursts); function defaults: max_containers 10, concurrency 1",
		e.BurstSize, alls[len(alls)/2], len(alls))
	return []Result{r}, nil
}

// openConns opens up to n connections of c, so that a burst does not
// measure TCP connects.
func openConns(c *fasthttp.HostClient, n int) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + c.Addr + "/healthz")
			_ = c.DoTimeout(req, resp, 10*time.Second)
		}()
	}
	wg.Wait()
}

// throughputFloors are the floors runThroughput measures beside kiln, by
// the name of their rows: the in-process reference, then kiln-floor's.
var throughputFloors = []struct{ name, kind string }{
	{"throughput-floor", ""},
	{"throughput-floor-proc", "echo"},
	{"throughput-floor-hop", "hop"},
	{"throughput-floor-grpc-hop", "grpc-hop"},
}

func runThroughput(ctx context.Context, e *Env) ([]Result, error) {
	maxC := slices.Max(e.Levels)
	type part struct {
		name, note string
		t          Target
		best       *Latencies
		r          Result
	}
	var parts []*part
	for _, fl := range throughputFloors {
		p := &part{name: fl.name}
		if fl.kind == "" {
			f, err := StartFloor(Handlers)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			p.t = HTTPTarget(NewHostClient(f.Addr(), maxC), "/echo", EchoBody, EchoCheck(EchoBody))
			p.note = "reference: in-process fasthttp echo, sharing the harness's process"
		} else {
			f, err := e.startProcFloor(ctx, fl.kind)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			p.t = HTTPTarget(NewHostClient(f.Addr, maxC), "/echo", EchoBody, EchoCheck(EchoBody))
			p.note = "kiln-floor " + fl.kind + " (" + f.Procs() + ")"
		}
		parts = append(parts, p)
	}
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	// Enough warm containers for the highest level (64 calls each), so
	// that no level waits for a cold start.
	s := e.warmSpec()
	s.MinWarm = int32(min((maxC+63)/64, 10))
	s.MaxContainers = max(s.MinWarm, 10)
	if err := k.Deploy(ctx, "echo", e.Functions["echo"], s); err != nil {
		return nil, err
	}
	if _, err := k.WaitContainers(ctx, "echo", 20*time.Millisecond, 60*time.Second, func(cs []*kilnv1.Container) bool {
		ready := 0
		for _, c := range cs {
			if c.State == "ready" || c.State == "busy" || c.State == "frozen" {
				ready++
			}
		}
		return ready >= int(s.MinWarm)
	}); err != nil {
		return nil, err
	}
	parts = append(parts, &part{
		name: "throughput", t: HTTPTarget(NewHostClient(k.Addr, maxC), "/invoke/echo", EchoBody, EchoCheck(EchoBody)),
		note: fmt.Sprintf("echo with %d warm containers taking 64 calls each", s.MinWarm),
	})
	steps := len(parts) * len(e.Levels)
	// At each level every floor and kiln take their turn, so that drift of
	// the machine hits all alike.
	for li, c := range e.Levels {
		for pi, p := range parts {
			step := li*len(parts) + pi
			lat, err := ClosedLoop{
				Concurrency: c, Duration: e.LevelDuration, Warmup: e.LevelWarmup,
				Progress: func(done, total int) { e.Progress.Set((float64(step) + float64(done)/float64(total)) / float64(steps)) },
			}.Run(ctx, p.t)
			if err != nil {
				return nil, fmt.Errorf("%s c=%d: %w", p.name, c, err)
			}
			lr := lat.Result(p.name)
			p.r.Levels = append(p.r.Levels, Level{X: c, Calls: lr.Calls, Throughput: lr.Throughput, P50: lr.P50, P99: lr.P99})
			if p.best == nil || lr.Throughput > p.r.Throughput {
				levels := p.r.Levels
				p.best, p.r = lat, lr
				p.r.Levels = levels
				p.r.Extra = map[string]float64{"peak_concurrency": float64(c)}
			}
		}
	}
	var out []Result
	for _, p := range parts {
		r := p.r
		r.Mode = fmt.Sprintf("closed loop, concurrency %s, %v each", joinInts(e.Levels), e.LevelDuration)
		r.Note = fmt.Sprintf("figures at the peak, concurrency %d; %s", int(r.Extra["peak_concurrency"]), p.note)
		switch p.name {
		case "throughput":
			r.Floor = "throughput-floor-proc"
			r.Beside = []string{"throughput-floor-hop", "throughput-floor-grpc-hop", "throughput-floor"}
		case "throughput-floor-hop", "throughput-floor-grpc-hop":
			r.Floor = "throughput-floor-proc"
		default:
			r.Floor = p.name
		}
		out = append(out, r)
	}
	return out, nil
}

// AtLevel returns the level of r measured at concurrency x, or nil.
func (r *Result) AtLevel(x int) *Level {
	for i := range r.Levels {
		if r.Levels[i].X == x {
			return &r.Levels[i]
		}
	}
	return nil
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.Itoa(x))
	}
	return strings.Join(s, ",")
}

// meteringRounds is how many times metering-cost measures each of off and
// on, alternating, so that drift of a shared machine hits both alike.
const meteringRounds = 3

func runMetering(ctx context.Context, e *Env) ([]Result, error) {
	if !HasFlag(e.Help, "metering") {
		return []Result{{Scenario: "metering-cost", Skipped: "kilnd --help lists no --metering flag yet"}}, nil
	}
	var (
		lats  = map[bool]*Latencies{false: NewLatencies(), true: NewLatencies()}
		p50s  = map[bool][]float64{}
		tputs = map[bool][]float64{}
		calls = max(e.Calls/meteringRounds, 200)
		step  = 0
	)
	for round := 0; round < meteringRounds; round++ {
		for _, on := range []bool{false, true} {
			lat, tput, err := e.meteringRound(ctx, on, calls)
			if err != nil {
				return nil, fmt.Errorf("metering=%v, round %d: %w", on, round+1, err)
			}
			lats[on].Merge(lat)
			p50s[on] = append(p50s[on], lat.Result("").P50)
			tputs[on] = append(tputs[on], tput)
			step++
			e.Progress.Step(step, 2*meteringRounds)
		}
	}
	var out []Result
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "metering-off", true: "metering-on"}[on]
		r := lats[on].Result(name)
		r.Floor = "floor-proc"
		r.Mode = fmt.Sprintf("open loop %.0f/s, 8 senders, %d rounds of %d calls", e.Rate, meteringRounds, calls)
		r.Extra = map[string]float64{"median_round_p50_us": median(p50s[on]), "median_closed_loop_c16_per_s": median(tputs[on])}
		r.Note = fmt.Sprintf("kilnd --metering=%v, a fresh kilnd per round, off and on alternating; round p50s %s; closed loop at concurrency 16: %s calls/s",
			on, fmtList(p50s[on], fmtUS), fmtList(tputs[on], func(v float64) string { return fmt.Sprintf("%.0f", v) }))
		out = append(out, r)
	}
	off, on := out[0].Extra, out[1].Extra
	out[1].Extra["cost_p50_pct"] = 100 * (on["median_round_p50_us"]/off["median_round_p50_us"] - 1)
	out[1].Extra["cost_throughput_pct"] = 100 * (1 - on["median_closed_loop_c16_per_s"]/off["median_closed_loop_c16_per_s"])
	out[1].Note += fmt.Sprintf("; cost (medians of the rounds): p50 %+.1f%%, throughput %+.1f%%", out[1].Extra["cost_p50_pct"], -out[1].Extra["cost_throughput_pct"])
	return out, nil
}

// meteringRound measures warm-http on a fresh kilnd with metering on or
// off: an open loop of calls, then a closed loop at concurrency 16.
func (e *Env) meteringRound(ctx context.Context, on bool, calls int) (*Latencies, float64, error) {
	k, err := e.startKilnd(ctx, "--metering="+strconv.FormatBool(on))
	if err != nil {
		return nil, 0, err
	}
	defer e.stop(k)
	if err := e.deployWarm(ctx, k, "echo"); err != nil {
		return nil, 0, err
	}
	c := NewHostClient(k.Addr, 16)
	target := HTTPTarget(c, "/invoke/echo", EchoBody, EchoCheck(EchoBody))
	ol := e.openLoop("")
	ol.Calls, ol.Progress = calls, nil
	lat, err := ol.Run(ctx, target)
	if err != nil {
		return nil, 0, err
	}
	tput, err := ClosedLoop{Concurrency: 16, Duration: e.LevelDuration, Warmup: e.LevelWarmup}.Run(ctx, target)
	if err != nil {
		return nil, 0, err
	}
	return lat, tput.Result("").Throughput, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtList(xs []float64, f func(float64) string) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, f(x))
	}
	return strings.Join(parts, ", ")
}

// densitySettle is the pause between density's containers listing and the
// call it precedes.
var densitySettle = 5 * time.Millisecond

func runDensity(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx)
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	maxN := slices.Max(e.DensitySteps)
	spec := func(n int) *kilnv1.FunctionSpec {
		s := e.spec()
		s.MemoryMb, s.FreezeAfter, s.MaxContainers, s.MinWarm = int32(e.DensityMemoryMB), durationpb.New(0), int32(maxN), int32(n)
		return s
	}
	c := NewHostClient(k.Addr, 1)
	target := HTTPTarget(c, "/invoke/dense", EchoBody, EchoCheck(EchoBody))
	thaws := func(n int) (*Latencies, error) {
		return oneAtATime(ctx, func(int, int) {}, 5, e.DensityThaws, "thawed", target, func(int) error {
			_, err := k.WaitContainers(ctx, "dense", time.Millisecond, 30*time.Second, AllFrozen(n))
			// Listing n containers with their cgroup figures is work for
			// kilnd (and garbage to collect): let it settle.
			time.Sleep(densitySettle)
			return err
		})
	}
	var (
		levels   []Level
		best     Result // at the most frozen containers with thaw p50 under 1 ms
		perStart time.Duration
		stopped  string
		have     int
	)
	availStart := MemAvailable()
	availEnd := availStart
	rssStart := k.RSS() // kilnd with no container
	for si, n := range e.DensitySteps {
		// Stop growing when this step would overrun the run's budget.
		if perStart > 0 {
			est := time.Duration(n-have)*perStart + time.Duration(e.DensityThaws)*20*time.Millisecond
			if time.Now().Add(est).After(e.Deadline) {
				stopped = fmt.Sprintf("stopped before %d: the run's time budget", n)
				break
			}
		}
		t0 := time.Now()
		if err := k.Deploy(ctx, "dense", e.Functions["echo"], spec(n)); err != nil {
			return nil, err
		}
		cs, err := waitFrozen(ctx, k, "dense", n, e.Deadline)
		if err != nil {
			stopped = fmt.Sprintf("stopped at %d: %v", n, err)
			if len(levels) > 0 {
				break
			}
			return nil, errors.New(stopped)
		}
		perStart = time.Since(t0) / time.Duration(max(len(cs)-have, 1))
		have = len(cs)
		availEnd = MemAvailable()
		mem := meanMemory(cs)
		lat, err := thaws(n)
		if err != nil {
			return nil, fmt.Errorf("%d frozen: %w", n, err)
		}
		lr := lat.Result("density")
		retried := 0.0
		if lr.P50 >= 1000 {
			// One more try: on a shared VM a burst of other work can
			// make a step look slow.
			if lat, err = thaws(n); err != nil {
				return nil, fmt.Errorf("%d frozen: %w", n, err)
			}
			lr, retried = lat.Result("density"), 1
		}
		// kilnd's own memory for the containers it holds: RSS growth
		// since it held none, per container (Go's heap garbage included).
		kilndPer := float64(k.RSS()-rssStart) / float64(max(have, 1))
		levels = append(levels, Level{X: have, Calls: lr.Calls, Throughput: lr.Throughput, P50: lr.P50, P99: lr.P99,
			Extra: map[string]float64{"memory_per_container_mib": mem / (1 << 20), "start_ms": float64(perStart) / 1e6, "retried": retried,
				"kilnd_rss_per_container_kib": kilndPer / 1024}})
		e.Progress.Step(si+1, len(e.DensitySteps))
		if lr.P50 < 1000 {
			best = lr
		}
	}
	if len(levels) == 0 {
		return nil, fmt.Errorf("no step measured (%s)", stopped)
	}
	// Stop the containers through the API, not by kilnd's shutdown, and
	// wait until their shims are gone.
	t0 := time.Now()
	delErr := k.Client.Delete(ctx, "dense")
	deleted := time.Since(t0)
	for k.Shims() > 0 && time.Since(t0) < deleted+30*time.Second && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
	}
	gone, left := time.Since(t0), k.Shims()
	r := best
	if r.Calls == 0 { // no step under 1 ms: report the first
		r = Result{Scenario: "density", Calls: levels[0].Calls, P50: levels[0].P50, P99: levels[0].P99}
	}
	last := levels[len(levels)-1]
	m := ThisMachine()
	mem := last.Extra["memory_per_container_mib"]
	node := float64(availStart-availEnd) / (1 << 20) / float64(max(have, 1))
	budget := parseBudgetHelp(e.Help)
	r.Floor, r.Levels = "floor-proc-seq", levels
	r.Extra = map[string]float64{
		"frozen_measured":               float64(last.X),
		"memory_per_container_mib":      mem,
		"node_memory_per_container_mib": node,
		"fit_by_ram":                    float64(availStart>>20) / max(node, mem, 0.001),
		"fit_by_limit":                  float64(m.MemoryMiB) * float64(budget) / 100 / float64(e.DensityMemoryMB),
		"kilnd_rss_per_container_kib":   last.Extra["kilnd_rss_per_container_kib"],
	}
	under := 0
	for _, l := range levels {
		if l.P50 < 1000 {
			under = l.X
		}
	}
	r.Extra["frozen_under_1ms"] = float64(under)
	r.Mode = "one call at a time, all containers frozen before each"
	r.Note = fmt.Sprintf("figures at %d frozen containers (the most with thaw p50 under 1 ms; measured up to %d, %d MiB limit each). "+
		"Each frozen container: %.1f MiB in its cgroup, %.1f MiB of the node's available memory (shim and kernel included; other work on the machine blurs this). "+
		"kilnd's own RSS grew %.0f KiB per container held. "+
		"Fit: ≈ %.0f by available memory, %.0f by kiln's --memory-budget (%d%% of RAM) were each counted at its limit; kilnd counts a frozen one at its use plus --frozen-margin",
		under, last.X, e.DensityMemoryMB, mem, node, r.Extra["kilnd_rss_per_container_kib"], r.Extra["fit_by_ram"], r.Extra["fit_by_limit"], budget)
	if stopped != "" {
		r.Note += "; " + stopped
	}
	r.Extra["delete_s"] = deleted.Seconds()
	r.Extra["all_stopped_s"] = gone.Seconds()
	r.Extra["delete_ms_per_container"] = float64(deleted.Milliseconds()) / float64(max(have, 1))
	r.Note += fmt.Sprintf("; deleting the function (%d containers) answered after %.1f s (%.1f ms each)", have, deleted.Seconds(), r.Extra["delete_ms_per_container"])
	if delErr != nil {
		r.Note += fmt.Sprintf(" with an error: %v", delErr)
	}
	if left > 0 {
		r.Note += fmt.Sprintf(", and %d shims were still running %.0f s later", left, gone.Seconds())
	} else {
		r.Note += fmt.Sprintf(", the last shim exited after %.1f s", gone.Seconds())
	}
	return []Result{r}, nil
}

// densityStall is how long density waits for kiln to start one more
// container before it gives up on a step.
const densityStall = 30 * time.Second

// waitFrozen waits until function name has n containers, all frozen. It
// fails when no container was added for densityStall, or at deadline.
func waitFrozen(ctx context.Context, k *Kilnd, name string, n int, deadline time.Time) ([]*kilnv1.Container, error) {
	best, since := -1, time.Now()
	for {
		cs, err := k.Containers(ctx, name)
		if err != nil {
			return nil, err
		}
		frozen := 0
		for _, c := range cs {
			if c.State == "frozen" {
				frozen++
			}
		}
		if len(cs) >= n && frozen == len(cs) {
			return cs, nil
		}
		if frozen > best {
			best, since = frozen, time.Now()
		}
		switch {
		case time.Since(since) > densityStall:
			return nil, fmt.Errorf("kiln stalled at %s for %v", states(cs), densityStall)
		case time.Now().After(deadline):
			return nil, fmt.Errorf("the run's time budget ran out at %s", states(cs))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// meanMemory is the mean memory use of containers cs, from the containers
// listing or, where that says 0, from the container's cgroup.
func meanMemory(cs []*kilnv1.Container) float64 {
	var sum float64
	for _, c := range cs {
		b := c.MemoryBytes
		if b == 0 {
			b = cgroupMemory(c.Id)
		}
		sum += float64(b)
	}
	return sum / float64(max(len(cs), 1))
}

// cgroupMemory reads the memory use of kiln's container id from its cgroup
// (v1 memory.usage_in_bytes, or v2 memory.current); 0 when unreadable.
func cgroupMemory(id string) int64 {
	for _, p := range []string{
		filepath.Join("/sys/fs/cgroup/memory/kiln", id, "memory.usage_in_bytes"),
		filepath.Join("/sys/fs/cgroup/kiln", id, "memory.current"),
		filepath.Join("/sys/fs/cgroup/unified/kiln", id, "memory.current"),
	} {
		if b, err := os.ReadFile(p); err == nil {
			if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
				return v
			}
		}
	}
	return 0
}

// parseBudgetHelp reads the default of kilnd's --memory-budget as a
// percentage of RAM from its help ("default \"75%\""); 0 when it is not one.
func parseBudgetHelp(help string) int64 {
	for _, line := range strings.Split(help, "\n") {
		if !strings.Contains(line, "memory") {
			continue
		}
		if _, rest, ok := strings.Cut(line, `(default "`); ok {
			if pct, _, ok := strings.Cut(rest, `%"`); ok {
				v, _ := strconv.ParseInt(pct, 10, 64)
				return v
			}
		}
	}
	return 0
}
