package datastore

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// benchDir holds databases shared by benchmarks (built once per process),
// removed by TestMain.
var benchDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

var (
	reportDBOnce sync.Once
	reportDB     *Store
	reportDBErr  error
	reportDBInfo string
)

// benchDay is the day the synthetic calls of BenchmarkReport fall on.
var benchDay = time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)

const benchCalls = 1_000_000

// openReportDB returns a store holding benchCalls synthetic calls spread
// evenly over benchDay: 20 functions, 10 tenants, mostly 200s and warm
// starts, log-normal run times around 5 ms. They go in through the
// ingester's batch path, 1000 per transaction, in time order as the journal
// would deliver them.
func openReportDB(b *testing.B) *Store {
	reportDBOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-bench")
		if err != nil {
			reportDBErr = err
			return
		}
		benchDir = dir
		s, err := Open(context.Background(), filepath.Join(dir, "report.db"))
		if err != nil {
			reportDBErr = err
			return
		}
		rng := rand.New(rand.NewPCG(42, 42))
		pickWeighted := func(vals []string, weights []int) string {
			n := rng.IntN(100)
			for i, w := range weights {
				if n < w {
					return vals[i]
				}
				n -= w
			}
			return vals[len(vals)-1]
		}
		statuses := []int{200, 404, 500, 429, 503}
		statusW := []int{90, 4, 3, 2, 1}
		step := 24 * time.Hour / benchCalls
		acc := new(rollupBatch)
		batch := make([]UsageRecord, 0, 1000)
		start := time.Now()
		for i := range benchCalls {
			st := 200
			n := rng.IntN(100)
			for k, w := range statusW {
				if n < w {
					st = statuses[k]
					break
				}
				n -= w
			}
			run := time.Duration(5e6 * math.Exp(rng.NormFloat64()))
			batch = append(batch, UsageRecord{
				CallID:           fmt.Sprintf("0190c0de-0000-7000-8000-%012d", i),
				Function:         fmt.Sprintf("fn-%02d", rng.IntN(20)),
				Revision:         "r1",
				Tenant:           fmt.Sprintf("tenant-%d", rng.IntN(10)),
				Trigger:          "http",
				ReceivedAt:       benchDay.Add(time.Duration(i)*step + time.Duration(rng.Int64N(int64(step)))),
				QueueWait:        time.Duration(rng.Int64N(50_000)),
				Start:            pickWeighted([]string{"warm", "thawed", "stem", "cold", ""}, []int{90, 6, 2, 1, 1}),
				RunTime:          run,
				TotalTime:        run + 80*time.Microsecond,
				CPUUser:          run / 2,
				CPUSystem:        run / 10,
				MemoryPeakBytes:  40 << 20,
				MemoryLimitBytes: 128 << 20,
				BytesIn:          512,
				BytesOut:         2048,
				Status:           st,
				ContainerID:      fmt.Sprintf("c-%d", rng.IntN(100)),
				Node:             "node-1",
			})
			if len(batch) == cap(batch) {
				if _, err := s.ingestBatch(context.Background(), batch, JournalPosition{Segment: 1, Offset: int64(i)}, acc); err != nil {
					reportDBErr = err
					return
				}
				batch = batch[:0]
			}
		}
		took := time.Since(start)
		var rollups [numLevels]int64
		for i, l := range rollupLevels {
			if err := s.read.QueryRow(`SELECT COUNT(*) FROM ` + l.table).Scan(&rollups[i]); err != nil {
				reportDBErr = err
				return
			}
		}
		reportDB = s
		reportDBInfo = fmt.Sprintf("%d calls generated and ingested in %v (%.0f records/s); rollup rows: %d minute, %d hour, %d day",
			benchCalls, took.Round(time.Millisecond), benchCalls/took.Seconds(), rollups[0], rollups[1], rollups[2])
	})
	if reportDBErr != nil {
		b.Fatal(reportDBErr)
	}
	b.Log(reportDBInfo)
	return reportDB
}

// BenchmarkReport runs reports over a day of 1,000,000 calls.
func BenchmarkReport(b *testing.B) {
	s := openReportDB(b)
	day := ReportQuery{From: benchDay, To: benchDay.Add(24 * time.Hour)}
	with := func(q ReportQuery, f func(*ReportQuery)) ReportQuery { f(&q); return q }
	cases := []struct {
		name string
		q    ReportQuery
	}{
		{"day/total", day},
		{"day/by-function", with(day, func(q *ReportQuery) { q.GroupBy = GroupByFunction })},
		{"day/by-tenant", with(day, func(q *ReportQuery) { q.GroupBy = GroupByTenant })},
		{"day/by-hour", with(day, func(q *ReportQuery) { q.GroupBy = GroupByHour })},
		{"day/by-minute", with(day, func(q *ReportQuery) { q.GroupBy = GroupByMinute })},
		{"day/one-tenant/by-function", with(day, func(q *ReportQuery) { q.Tenant, q.GroupBy = "tenant-3", GroupByFunction })},
		{"day/one-function/by-hour", with(day, func(q *ReportQuery) { q.Function, q.GroupBy = "fn-07", GroupByHour })},
		{"hour/by-minute", ReportQuery{From: benchDay.Add(12 * time.Hour), To: benchDay.Add(13 * time.Hour), GroupBy: GroupByMinute}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var rows []ReportRow
			for b.Loop() {
				var err error
				if rows, err = s.Report(b.Context(), c.q); err != nil {
					b.Fatal(err)
				}
			}
			var n int64
			for _, r := range rows {
				n += r.Count
			}
			b.ReportMetric(float64(n), "calls")
			b.ReportMetric(float64(len(rows)), "rows")
		})
	}
}

// BenchmarkListCalls lists the newest 100 calls of one tenant out of a day
// of 1,000,000.
func BenchmarkListCalls(b *testing.B) {
	s := openReportDB(b)
	b.ReportAllocs()
	for b.Loop() {
		calls, err := s.ListCalls(b.Context(), CallFilter{Tenant: "tenant-3", Limit: 100})
		if err != nil || len(calls) != 100 {
			b.Fatal(len(calls), err)
		}
	}
}
