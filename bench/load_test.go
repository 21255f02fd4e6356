package bench

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestOpenLoopCorrectsCoordinatedOmission stalls one call of an open loop
// for 50 ms: the calls due during the stall must be measured from when they
// were due, not from when they could be sent.
func TestOpenLoopCorrectsCoordinatedOmission(t *testing.T) {
	var n atomic.Int64
	target := func() Call {
		return func(ctx context.Context) (string, error) {
			if n.Add(1) == 50 {
				time.Sleep(50 * time.Millisecond)
			}
			return "warm", nil
		}
	}
	lat, err := OpenLoop{Rate: 1000, Calls: 200, Workers: 1}.Run(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	r := lat.Result("t")
	if r.Calls != 200 || r.Starts["warm"] != 200 {
		t.Fatalf("calls %d, starts %v; want 200 warm", r.Calls, r.Starts)
	}
	// About 50 of the 200 calls were due during the stall: the corrected
	// p80 is well above a millisecond, the uncorrected service time not.
	if q := quantile(r, 0.8); q < 1000 {
		t.Errorf("corrected p80 = %.0f µs, want the stall to count (≥ 1 ms)", q)
	}
	if r.Max < 50_000 {
		t.Errorf("max = %.0f µs, want ≥ 50 ms", r.Max)
	}
	if r.ServiceP50 > 1000 {
		t.Errorf("service p50 = %.0f µs, want the calls themselves fast", r.ServiceP50)
	}
}

func quantile(r Result, q float64) float64 {
	for _, p := range r.CDF {
		if p.Q >= q {
			return p.US
		}
	}
	return r.Max
}

func TestOpenLoopWarmupAndFilter(t *testing.T) {
	var n atomic.Int64
	target := func() Call {
		return func(ctx context.Context) (string, error) {
			if n.Add(1)%4 == 0 {
				return "cold", nil
			}
			return "warm", nil
		}
	}
	lat, err := OpenLoop{Rate: 5000, Calls: 100, Warmup: 20, Workers: 2, Want: "warm"}.Run(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	r := lat.Result("t")
	if got := r.Calls + r.Others["cold"]; got != 100 {
		t.Errorf("recorded %d + left out %d = %d, want the 100 measured calls", r.Calls, r.Others["cold"], got)
	}
	if r.Others["cold"] == 0 || r.Starts["cold"] != r.Others["cold"] {
		t.Errorf("others %v starts %v", r.Others, r.Starts)
	}
	if n.Load() != 120 {
		t.Errorf("%d calls made, want 120 (20 warm-up)", n.Load())
	}
}

func TestLoopsFailOnErrors(t *testing.T) {
	boom := errors.New("boom")
	target := func() Call {
		return func(ctx context.Context) (string, error) { return "", boom }
	}
	if _, err := (OpenLoop{Rate: 5000, Calls: 20}).Run(context.Background(), target); !errors.Is(err, boom) {
		t.Errorf("open loop: err = %v, want boom", err)
	}
	if _, err := (ClosedLoop{Concurrency: 2, Calls: 20}).Run(context.Background(), target); !errors.Is(err, boom) {
		t.Errorf("closed loop: err = %v, want boom", err)
	}
}

func TestClosedLoopDuration(t *testing.T) {
	target := func() Call {
		return func(ctx context.Context) (string, error) {
			time.Sleep(time.Millisecond)
			return "warm", nil
		}
	}
	lat, err := ClosedLoop{Concurrency: 4, Duration: 100 * time.Millisecond, Warmup: 20 * time.Millisecond}.Run(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	r := lat.Result("t")
	// 4 callers at about 1 call per ms each (the sleep may run long).
	if r.Calls < 50 || r.Calls > 400 || r.Throughput < 500 || r.Throughput > 4000 {
		t.Errorf("calls %d, throughput %.0f/s: want about 4 per ms", r.Calls, r.Throughput)
	}
	if r.P50 < 1000 {
		t.Errorf("p50 %.0f µs, want ≥ the 1 ms sleep", r.P50)
	}
}

func TestSelectAddsFloors(t *testing.T) {
	got, err := Select("stem,warm-stream", false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range got {
		names = append(names, s.Name)
	}
	// warm-stream's floors, stem's, and floor-grpc-hop's own (floor-proc).
	if want := "floor-grpc,floor-proc,floor-grpc-hop,warm-stream,stem"; strings.Join(names, ",") != want {
		t.Errorf("Select = %v, want %s", names, want)
	}
	if _, err := Select("nope", false); err == nil {
		t.Error("unknown scenario accepted")
	}
	quick, _ := Select("", true)
	all, _ := Select("", false)
	if len(quick) >= len(all) || len(all) != len(Scenarios) {
		t.Errorf("quick %d, all %d of %d scenarios", len(quick), len(all), len(Scenarios))
	}
	for _, want := range []string{"floor-proc", "floor-hop", "floor-grpc-hop"} {
		if !slices.ContainsFunc(quick, func(s Scenario) bool { return s.Name == want }) {
			t.Errorf("the quick set lacks %s", want)
		}
	}
}

const help = `Usage of kilnd:
  -http address
    	HTTP API listen address (default "127.0.0.1:8080")
  -memory-budget SIZE
    	sum of container memory limits the node allows: SIZE (512Mi, 16G, bytes) or a percentage of RAM (default "75%")
  -metering
    	write a usage record per call (default true)
`

func TestHelpParsing(t *testing.T) {
	if !HasFlag(help, "metering") || !HasFlag(help, "http") || HasFlag(help, "meter") || HasFlag(help, "stem-cells") {
		t.Error("HasFlag")
	}
	if got := parseBudgetHelp(help); got != 75 {
		t.Errorf("parseBudgetHelp = %d, want 75", got)
	}
}

func TestReportRendersEveryResult(t *testing.T) {
	r := &Run{Settings: Settings{Rate: 500, Levels: []int{1, 2}}, Scenarios: []string{"floor-proc", "floor-hop", "warm-http"}}
	l := NewLatencies()
	l.BeginAt(time.Now().Add(-time.Second))
	for i := 1; i <= 100; i++ {
		l.RecordOpen(time.Duration(i)*time.Microsecond, time.Duration(i)*time.Microsecond, 0)
	}
	l.End()
	floor := l.Result("floor-proc")
	floor.Floor = "floor-proc"
	hop := l.Result("floor-hop")
	hop.Floor, hop.P50 = "floor-proc", 1.5*floor.P50
	warm := l.Result("warm-http")
	warm.Floor, warm.Beside, warm.P50 = "floor-proc", []string{"floor-hop"}, 3*floor.P50
	tput := func(name string, perS float64) Result {
		return Result{Scenario: name, Calls: 1000, P50: 1, P99: 1, Throughput: perS, Mode: "closed loop",
			Levels: []Level{{X: 1, Throughput: perS / 4}, {X: 64, Throughput: perS}}}
	}
	tf, tk := tput("throughput-floor-proc", 40000), tput("throughput", 24000)
	tk.Floor = "throughput-floor-proc"
	r.Results = []Result{floor, hop, warm, tf, tk, {Scenario: "metering-cost", Skipped: "no flag"}}
	r.AddRatios()
	if r.Results[2].RatioP50 != 3 || r.Results[1].RatioP50 != 1.5 {
		t.Errorf("ratios %v and %v, want 3 and 1.5", r.Results[2].RatioP50, r.Results[1].RatioP50)
	}
	md := r.Markdown(map[string]string{"floor-proc": "the floor", "warm-http": "warm"})
	for _, want := range []string{
		"| floor-proc |", "| warm-http |", "skipped: no flag",
		"| warm HTTP p50 ≤ 2× floor-proc's | open loop: ", "= 3.00× floor-proc's", "2.00× floor-hop's",
		"**not met**", "not measured",
		"## Against every floor", "| warm-http | floor-proc (fits) |", "|  | floor-hop |",
		"| warm HTTP throughput at 64 connections ≥ 0.5× floor-proc's | 24000/s = 0.60× floor-proc's 40000/s | met |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
