package datastore

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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

// steadyRecords returns n records as a busy node journals them: one
// function and tenant, warm 200s, received 66 µs apart (15,000 calls/s),
// call ids numbered from first.
func steadyRecords(n, first int) []UsageRecord {
	base := benchDay.Add(12 * time.Hour)
	out := make([]UsageRecord, n)
	for i := range out {
		k := first + i
		out[i] = UsageRecord{
			CallID:   fmt.Sprintf("019ad1c2-%04x-7000-8000-%012x", k>>16&0xffff, k),
			Function: "echo", Revision: "sha256-3f1c0e5a9b7d2c4e6f8a0b1c2d3e4f5a", Trigger: "http",
			ReceivedAt: base.Add(time.Duration(k) * 66 * time.Microsecond), QueueWait: 3 * time.Microsecond,
			Start: "warm", RunTime: 120*time.Microsecond + time.Duration(k%1000), TotalTime: 300 * time.Microsecond,
			CPUUser: 50 * time.Microsecond, CPUSystem: 20 * time.Microsecond,
			MemoryPeakBytes: 9 << 20, MemoryLimitBytes: 128 << 20, BytesIn: 13, BytesOut: 13, Status: 200,
			ContainerID: "echo-0190c0de1234", Node: "node-1",
		}
	}
	return out
}

// BenchmarkIngestBatch is the SQLite side of ingestion: one batch
// transaction of new calls as a busy node produces them, into a table
// that grows as the benchmark runs. The records are built before the
// timer starts.
func BenchmarkIngestBatch(b *testing.B) {
	for _, size := range []int{100, 1000, 4096} {
		b.Run(fmt.Sprint("batch-", size), func(b *testing.B) {
			s, err := Open(b.Context(), filepath.Join(b.TempDir(), "kiln.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			recs := steadyRecords(size*b.N, 0)
			acc := new(rollupBatch)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			for i := range b.N {
				batch := recs[i*size : (i+1)*size]
				n, err := s.ingestBatch(b.Context(), batch, JournalPosition{Segment: 1, Offset: int64((i + 1) * size)}, acc)
				if err != nil || n != size {
					b.Fatalf("ingestBatch = %d, %v", n, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(size*b.N), "ns/record")
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(size*b.N), "cpu-ns/record")
		})
	}
}

// processCPU returns the CPU time, user and system, the process has used:
// SQLite's I/O waits count in ns/op but not here.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
