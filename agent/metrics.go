package agent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/pool"
)

// Metrics are the agent's Prometheus metrics: per-call counters and
// histograms updated on the call path, and collectors that read the pool
// and the usage journal at scrape time.
type Metrics struct {
	calls     *prometheus.CounterVec
	errors    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	queueWait prometheus.Histogram
}

// NewMetrics creates the call metrics and registers them with reg (nil:
// not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_calls_total",
			Help: "Calls by function (empty for calls of no deployed function), HTTP status answered and start kind (warm, thawed, stem, cold, or none).",
		}, []string{"function", "status", "start"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_call_errors_total",
			Help: "Failed calls by function and error class (the usage record's error_class: oom, pids_exhausted, exited, executor_failure, response_too_large, deadline_exceeded for a timeout, function_error, ...).",
		}, []string{"function", "class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_call_duration_seconds",
			Help:    "Time from receiving a call to answering it, by function (empty for calls of no deployed function).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 20), // 50µs .. 26s
		}, []string{"function"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_queue_wait_seconds",
			Help:    "Time calls waited for a free container.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 12), // 10µs .. 42s
		}),
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.errors, m.duration, m.queueWait)
	}
	return m
}

// statusLabels avoids formatting the common statuses on every call.
var statusLabels = func() map[int]string {
	m := make(map[int]string)
	for s := 100; s < 600; s++ {
		m[s] = strconv.Itoa(s)
	}
	return m
}()

func (m *Metrics) observe(r *datastore.UsageRecord) {
	status, ok := statusLabels[r.Status]
	if !ok {
		status = strconv.Itoa(r.Status)
	}
	start := r.Start
	if start == "" {
		start = "none"
	}
	// A call refused before it reached a deployed function (an unknown or
	// malformed name) counts under function="": a client that makes up
	// names cannot make up series, whose memory is never given back.
	function := r.Function
	if r.Revision == "" {
		function = ""
	}
	m.calls.WithLabelValues(function, status, start).Inc()
	if r.ErrorClass != "" {
		m.errors.WithLabelValues(function, r.ErrorClass).Inc()
	}
	m.duration.WithLabelValues(function).Observe(r.TotalTime.Seconds())
	m.queueWait.Observe(r.QueueWait.Seconds())
}

// PoolCollector exports a pool's containers by function and state and its
// event counters at scrape time.
type PoolCollector struct {
	pool       *pool.Pool
	containers *prometheus.Desc
	waiting    *prometheus.Desc
	memory     *prometheus.Desc
	events     map[string]*prometheus.Desc
}

// NewPoolCollector returns a collector of p; register it with a registry.
func NewPoolCollector(p *pool.Pool) *PoolCollector {
	counter := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, nil, nil)
	}
	return &PoolCollector{
		pool:       p,
		containers: prometheus.NewDesc("kiln_containers", "Containers by function (empty for stem cells) and state.", []string{"function", "state"}, nil),
		waiting:    prometheus.NewDesc("kiln_queued_calls", "Calls waiting for a container, by function.", []string{"function"}, nil),
		memory:     prometheus.NewDesc("kiln_container_memory_reserved_bytes", "Memory charged to the node budget for live containers: each one's limit, or a frozen one's use when the pool charges frozen containers by use.", nil, nil),
		events: map[string]*prometheus.Desc{
			"cold":           counter("kiln_cold_starts_total", "Containers created for calls or min_warm."),
			"thaw":           counter("kiln_thaws_total", "Frozen containers thawed for a call."),
			"freeze":         counter("kiln_freezes_total", "Containers frozen."),
			"specialization": counter("kiln_specializations_total", "Stem cells turned into a function's container."),
			"eviction":       counter("kiln_evictions_total", "Frozen containers stopped to make room in the memory budget."),
			"failure":        counter("kiln_container_failures_total", "Containers that failed (crash, timeout, failed start)."),
			"idle":           counter("kiln_idle_stops_total", "Containers stopped after idle_timeout."),
			"refused_thaw":   counter("kiln_refused_thaws_total", "Frozen containers left frozen because the memory budget could not hold their limit again."),
		},
	}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.containers
	ch <- c.waiting
	ch <- c.memory
	for _, d := range c.events {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stats()
	for fn, states := range s.Containers {
		for st, n := range states {
			ch <- prometheus.MustNewConstMetric(c.containers, prometheus.GaugeValue, float64(n), fn, st.String())
		}
	}
	for fn, n := range s.Waiting {
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(n), fn)
	}
	ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(s.MemoryUsedBytes))
	for name, v := range map[string]int64{
		"cold": s.ColdStarts, "thaw": s.Thaws, "freeze": s.Freezes, "specialization": s.Specializations,
		"eviction": s.Evictions, "failure": s.Failures, "idle": s.IdleStops,
		"refused_thaw": s.RefusedThaws,
	} {
		ch <- prometheus.MustNewConstMetric(c.events[name], prometheus.CounterValue, float64(v))
	}
}
