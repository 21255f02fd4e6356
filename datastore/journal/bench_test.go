package journal

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/kilnfx/kiln/datastore"
)

// BenchmarkAppend is the per-call cost on the agent's hot path.
func BenchmarkAppend(b *testing.B) {
	j := openJournal(b, b.TempDir())
	r := record(rand.New(rand.NewPCG(1, 1)), 1)
	b.ReportAllocs()
	for b.Loop() {
		if err := j.Append(&r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendLatency reports the distribution of single appends:
// p50-ns and p99-ns beside the mean.
func BenchmarkAppendLatency(b *testing.B) {
	j := openJournal(b, b.TempDir())
	r := record(rand.New(rand.NewPCG(1, 1)), 1)
	h := hdrhistogram.New(1, int64(time.Second), 3)
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		if err := j.Append(&r); err != nil {
			b.Fatal(err)
		}
		_ = h.RecordValue(int64(time.Since(t0)))
	}
	b.ReportMetric(float64(h.ValueAtQuantile(50)), "p50-ns")
	b.ReportMetric(float64(h.ValueAtQuantile(99)), "p99-ns")
}

// BenchmarkAppendParallel appends from GOMAXPROCS goroutines at once.
func BenchmarkAppendParallel(b *testing.B) {
	j := openJournal(b, b.TempDir())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := record(rand.New(rand.NewPCG(1, 1)), 1)
		for pb.Next() {
			if err := j.Append(&r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAppendSync is Append WithSync: one fdatasync per record.
func BenchmarkAppendSync(b *testing.B) {
	j := openJournal(b, b.TempDir(), WithSync())
	r := record(rand.New(rand.NewPCG(1, 1)), 1)
	b.ReportAllocs()
	for b.Loop() {
		if err := j.Append(&r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadUsage reads and decodes records in batches of 1000.
func BenchmarkReadUsage(b *testing.B) {
	j := openJournal(b, b.TempDir())
	rng := rand.New(rand.NewPCG(1, 1))
	const n = 100_000
	for i := range n {
		r := record(rng, i)
		j.Append(&r)
	}
	buf := make([]datastore.UsageRecord, 0, 1000)
	b.ReportAllocs()
	read := 0
	for b.Loop() {
		var pos datastore.JournalPosition
		for {
			recs, next, err := j.ReadUsage(pos, buf[:0], 1000)
			if err != nil {
				b.Fatal(err)
			}
			read += len(recs)
			if len(recs) == 0 {
				break
			}
			pos = next
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkIngest is ingestion throughput, journal to SQLite, in batches of
// 1000 unique records; the appends are not timed.
func BenchmarkIngest(b *testing.B) {
	dir := b.TempDir()
	j := openJournal(b, filepath.Join(dir, "usage"))
	s := openStore(b, dir)
	in := newIngester(b, s, j)
	rng := rand.New(rand.NewPCG(1, 1))
	const chunk = 20_000
	next, total := 0, 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for range chunk {
			r := record(rng, next)
			r.ReceivedAt = base.Add(time.Duration(next) * time.Millisecond)
			next++
			if err := j.Append(&r); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		n, err := in.IngestAll(b.Context())
		if err != nil || n != chunk {
			b.Fatalf("IngestAll = %d, %v", n, err)
		}
		total += n
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
}
