// Package bench is kiln's benchmark harness: scenarios that measure call
// latency and throughput against a real kilnd, each beside the floor (the
// same echo handler in-process behind fasthttp) measured in the same run.
package bench

import (
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies records call latencies in an HDR histogram (1 µs to 60 s, 3
// significant digits).
type Latencies struct {
	h     *hdrhistogram.Histogram
	start time.Time
	end   time.Time
}

// NewLatencies returns an empty recorder.
func NewLatencies() *Latencies {
	return &Latencies{h: hdrhistogram.New(1, int64(60*time.Second/time.Microsecond)*1000, 3)}
}

// Begin marks the start of the measured interval.
func (l *Latencies) Begin() { l.start = time.Now() }

// End marks the end of the measured interval.
func (l *Latencies) End() { l.end = time.Now() }

// Record adds one call's latency.
func (l *Latencies) Record(d time.Duration) {
	_ = l.h.RecordValue(max(d.Nanoseconds(), 1))
}

// Result is one scenario's figures. Durations are in microseconds.
type Result struct {
	Scenario   string  `json:"scenario"`
	Calls      int64   `json:"calls"`
	P50        float64 `json:"p50_us"`
	P90        float64 `json:"p90_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	Max        float64 `json:"max_us"`
	Mean       float64 `json:"mean_us"`
	Throughput float64 `json:"throughput_per_s"`
	// RatioP50 and RatioP99 divide this scenario's figures by the floor's.
	RatioP50 float64 `json:"ratio_p50,omitempty"`
	RatioP99 float64 `json:"ratio_p99,omitempty"`
	Note     string  `json:"note,omitempty"`
}

// Result summarises the recorded latencies.
func (l *Latencies) Result(name string) Result {
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	r := Result{
		Scenario: name,
		Calls:    l.h.TotalCount(),
		P50:      us(l.h.ValueAtQuantile(50)),
		P90:      us(l.h.ValueAtQuantile(90)),
		P99:      us(l.h.ValueAtQuantile(99)),
		P999:     us(l.h.ValueAtQuantile(99.9)),
		Max:      us(l.h.Max()),
		Mean:     l.h.Mean() / 1e3,
	}
	if el := l.end.Sub(l.start); el > 0 {
		r.Throughput = float64(r.Calls) / el.Seconds()
	}
	return r
}

// Machine describes where a run happened.
type Machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	Kernel     string `json:"kernel"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
}

// ThisMachine reads the machine's description.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		m.Kernel = b.String()
	}
	return m
}
