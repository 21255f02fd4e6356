package bench

import (
	"maps"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// HDR histogram bounds: nanoseconds from 100 ns to 120 s, 3 significant
// digits (a value is recorded within 0.1% of itself).
const (
	histMin = 100
	histMax = int64(120 * time.Second)
)

// Latencies records call latencies in HDR histograms. It is safe for
// concurrent use: the load generator's workers record into one Latencies.
type Latencies struct {
	mu sync.Mutex
	// h holds the latency the caller saw: from the intended send time in an
	// open loop (coordinated-omission corrected), from the send otherwise.
	h *hdrhistogram.Histogram
	// svc holds, in an open loop only, the time from the actual send to the
	// answer (the service time, not corrected).
	svc *hdrhistogram.Histogram
	// lag holds, in an open loop only, how late each call was sent.
	lag   *hdrhistogram.Histogram
	start time.Time
	end   time.Time
	// errors counts failed calls, others calls left out by start kind.
	errors int64
	others map[string]int64
	starts map[string]int64
}

// NewLatencies returns an empty recorder.
func NewLatencies() *Latencies {
	return &Latencies{
		h:      hdrhistogram.New(histMin, histMax, 3),
		svc:    hdrhistogram.New(histMin, histMax, 3),
		lag:    hdrhistogram.New(1, histMax, 2),
		others: make(map[string]int64),
		starts: make(map[string]int64),
	}
}

// Begin marks the start of the measured interval.
func (l *Latencies) Begin() { l.BeginAt(time.Now()) }

// BeginAt marks the start of the measured interval at t.
func (l *Latencies) BeginAt(t time.Time) {
	l.mu.Lock()
	l.start = t
	l.mu.Unlock()
}

// End marks the end of the measured interval.
func (l *Latencies) End() { l.EndAt(time.Now()) }

// EndAt marks the end of the measured interval at t.
func (l *Latencies) EndAt(t time.Time) {
	l.mu.Lock()
	l.end = t
	l.mu.Unlock()
}

// Record adds one call's latency.
func (l *Latencies) Record(d time.Duration) {
	l.mu.Lock()
	_ = l.h.RecordValue(clamp(d))
	l.mu.Unlock()
}

// RecordOpen adds one open-loop call: lat from its intended send time, svc
// from its actual send, lag the delay between the two.
func (l *Latencies) RecordOpen(lat, svc, lag time.Duration) {
	l.mu.Lock()
	_ = l.h.RecordValue(clamp(lat))
	_ = l.svc.RecordValue(clamp(svc))
	_ = l.lag.RecordValue(min(max(lag.Nanoseconds(), 1), histMax))
	l.mu.Unlock()
}

// Error counts a failed call.
func (l *Latencies) Error() {
	l.mu.Lock()
	l.errors++
	l.mu.Unlock()
}

// Other counts a call left out because it started as kind, not as the
// scenario measures.
func (l *Latencies) Other(kind string) {
	if kind == "" {
		kind = "none"
	}
	l.mu.Lock()
	l.others[kind]++
	l.mu.Unlock()
}

// Started counts a call that kiln started as kind (recorded or not).
func (l *Latencies) Started(kind string) {
	if kind == "" {
		kind = "none"
	}
	l.mu.Lock()
	l.starts[kind]++
	l.mu.Unlock()
}

// Merge adds o's calls to l, and widens l's measured interval by o's
// length (so that Throughput stays calls over measured time).
func (l *Latencies) Merge(o *Latencies) {
	o.mu.Lock()
	defer o.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.h.Merge(o.h)
	l.svc.Merge(o.svc)
	l.lag.Merge(o.lag)
	l.errors += o.errors
	for k, v := range o.others {
		l.others[k] += v
	}
	for k, v := range o.starts {
		l.starts[k] += v
	}
	if l.start.IsZero() {
		l.start, l.end = o.start, o.end
		return
	}
	l.end = l.end.Add(o.end.Sub(o.start))
}

// Count returns the number of recorded calls.
func (l *Latencies) Count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h.TotalCount()
}

func clamp(d time.Duration) int64 { return min(max(d.Nanoseconds(), histMin), histMax) }

// Result is one row of the report: a scenario's (or one of its parts')
// figures. Durations are in microseconds.
type Result struct {
	Scenario string `json:"scenario"`
	// Floor names the result this one's ratios divide by: the floor that
	// fits it. Beside names other floors the report shows it against.
	Floor  string   `json:"floor,omitempty"`
	Beside []string `json:"beside,omitempty"`
	// Mode says how the load was applied: "open loop 500/s", "closed loop
	// c=64", "one call at a time".
	Mode  string `json:"mode,omitempty"`
	Calls int64  `json:"calls"`
	// Errors counts failed calls; Others the calls left out because they
	// did not start as the scenario measures (by X-Kiln-Start).
	Errors int64            `json:"errors,omitempty"`
	Others map[string]int64 `json:"others,omitempty"`
	// Starts counts the measured calls by how kiln started them.
	Starts     map[string]int64 `json:"starts,omitempty"`
	P50        float64          `json:"p50_us"`
	P90        float64          `json:"p90_us"`
	P99        float64          `json:"p99_us"`
	P999       float64          `json:"p999_us"`
	Max        float64          `json:"max_us"`
	Mean       float64          `json:"mean_us"`
	Throughput float64          `json:"throughput_per_s"`
	// ServiceP50 and ServiceP99 are, for an open loop, the percentiles
	// from the actual send (without the coordinated-omission correction).
	ServiceP50 float64 `json:"service_p50_us,omitempty"`
	ServiceP99 float64 `json:"service_p99_us,omitempty"`
	// SendLagP50 and SendLagP99 are, for an open loop, how late the load
	// generator sent calls (its own share of the corrected latency).
	SendLagP50 float64 `json:"send_lag_p50_us,omitempty"`
	SendLagP99 float64 `json:"send_lag_p99_us,omitempty"`
	// Ratios divide this result's figures by its Floor's.
	RatioP50        float64 `json:"ratio_p50,omitempty"`
	RatioP99        float64 `json:"ratio_p99,omitempty"`
	RatioThroughput float64 `json:"ratio_throughput,omitempty"`
	// Budget is where a traced call's time went, segment by segment
	// (budget-http, budget-grpc).
	Budget []Segment `json:"budget,omitempty"`
	// Levels holds a sweep's steps (throughput, density).
	Levels []Level `json:"levels,omitempty"`
	// CDF is the latency distribution: (quantile, µs) points.
	CDF []Point `json:"cdf,omitempty"`
	// Extra holds figures particular to the scenario (burst: all_answered_ms;
	// density: memory per container; metering: cost).
	Extra map[string]float64 `json:"extra,omitempty"`
	// Seconds is the wall time the measurement took.
	Seconds float64 `json:"seconds"`
	Note    string  `json:"note,omitempty"`
	// Skipped says why the scenario did not run.
	Skipped string `json:"skipped,omitempty"`
}

// Level is one step of a sweep.
type Level struct {
	// X is the step: concurrency (throughput) or frozen containers (density).
	X          int     `json:"x"`
	Calls      int64   `json:"calls"`
	Throughput float64 `json:"throughput_per_s"`
	P50        float64 `json:"p50_us"`
	P99        float64 `json:"p99_us"`
	// Extra as in Result.
	Extra map[string]float64 `json:"extra,omitempty"`
}

// Point is one point of a CDF: the fraction Q of calls took at most US µs.
type Point struct {
	Q  float64 `json:"q"`
	US float64 `json:"us"`
}

// cdfQuantiles are the quantiles a Result's CDF keeps: dense in the tail.
var cdfQuantiles = func() []float64 {
	var qs []float64
	for q := 0.0; q < 90; q += 2.5 {
		qs = append(qs, q)
	}
	for q := 90.0; q < 99; q += 0.5 {
		qs = append(qs, q)
	}
	return append(qs, 99, 99.5, 99.9, 99.95, 99.99, 100)
}()

// Result summarises the recorded latencies as the result named name.
func (l *Latencies) Result(name string) Result {
	l.mu.Lock()
	defer l.mu.Unlock()
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	h := l.h
	r := Result{
		Scenario: name,
		Calls:    h.TotalCount(),
		Errors:   l.errors,
	}
	if len(l.others) > 0 {
		r.Others = maps.Clone(l.others)
	}
	if len(l.starts) > 0 {
		r.Starts = maps.Clone(l.starts)
	}
	if r.Calls > 0 {
		r.P50 = us(h.ValueAtQuantile(50))
		r.P90 = us(h.ValueAtQuantile(90))
		r.P99 = us(h.ValueAtQuantile(99))
		r.P999 = us(h.ValueAtQuantile(99.9))
		r.Max = us(h.Max())
		r.Mean = h.Mean() / 1e3
		for _, q := range cdfQuantiles {
			v := h.ValueAtQuantile(q)
			if q == 0 {
				v = h.Min()
			}
			r.CDF = append(r.CDF, Point{Q: q / 100, US: us(v)})
		}
	}
	if l.svc.TotalCount() > 0 {
		r.ServiceP50 = us(l.svc.ValueAtQuantile(50))
		r.ServiceP99 = us(l.svc.ValueAtQuantile(99))
		r.SendLagP50 = us(l.lag.ValueAtQuantile(50))
		r.SendLagP99 = us(l.lag.ValueAtQuantile(99))
	}
	if el := l.end.Sub(l.start); el > 0 {
		r.Throughput = float64(r.Calls) / el.Seconds()
		r.Seconds = el.Seconds()
	}
	return r
}
