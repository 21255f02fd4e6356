package datastore

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistBucketBounds(t *testing.T) {
	// Every bucket's lower bound maps to it, and the value just below maps
	// to the previous bucket.
	for i := 1; i < histBuckets; i++ {
		lo := histLower(i)
		if got := histBucket(lo); got != i {
			t.Errorf("histBucket(histLower(%d) = %d) = %d", i, lo, got)
		}
		if got := histBucket(lo - 1); got != i-1 {
			t.Errorf("histBucket(%d) = %d, want %d", lo-1, got, i-1)
		}
		if i > 1 {
			// At most 25% wider than the bucket below.
			w, prev := histLower(i+1)-lo, lo-histLower(i-1)
			if i < histBuckets-1 && (w < prev || float64(w) > 2*float64(prev)) {
				t.Errorf("bucket %d width %d after %d", i, w, prev)
			}
		}
	}
	for _, c := range []struct {
		ns   int64
		want int
	}{{-5, 0}, {0, 0}, {1023, 0}, {1024, 1}, {1280, 2}, {2047, 4}, {2048, 5}, {1 << 42, histBuckets - 1}, {math.MaxInt64, histBuckets - 1}} {
		if got := histBucket(c.ns); got != c.want {
			t.Errorf("histBucket(%d) = %d, want %d", c.ns, got, c.want)
		}
	}
	if histLower(histBuckets-1) != 1<<histMaxExp || time.Duration(1<<histMaxExp) < time.Hour {
		t.Errorf("top bucket starts at %v, want past an hour", time.Duration(histLower(histBuckets-1)))
	}
}

func TestHistBlobRoundTrip(t *testing.T) {
	var h runHist
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		h.add(int64(math.Exp2(rng.Float64() * 45)))
	}
	h.add(math.MaxInt64)
	var got runHist
	if err := got.mergeBlob(h.appendBlob(nil)); err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Error("histogram changed through its blob")
	}
	if err := got.mergeBlob(h.appendBlob(nil)); err != nil {
		t.Fatal(err)
	}
	for i := range h {
		if got[i] != 2*h[i] {
			t.Fatalf("bucket %d: merged %d, want %d", i, got[i], 2*h[i])
		}
	}
	var empty runHist
	if b := empty.appendBlob(nil); len(b) != 1 {
		t.Errorf("empty histogram blob is %d bytes", len(b))
	}
	for _, bad := range [][]byte{nil, {}, {2}, {1, 200, 1}, {1, 5}, {1, 0x80}, {1, 5, 0x80}} {
		var x runHist
		if err := x.mergeBlob(bad); err == nil {
			t.Errorf("mergeBlob(%v) succeeded", bad)
		}
	}
}

// exactQuantile is the nearest-rank q-quantile of sorted vs.
func exactQuantile(vs []int64, q float64) int64 {
	rank := int(math.Ceil(q * float64(len(vs))))
	return vs[min(max(rank, 1), len(vs))-1]
}

func TestHistQuantileWithinBucket(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	shapes := map[string]func() int64{
		"log-uniform": func() int64 { return int64(math.Exp2(10 + rng.Float64()*30)) },
		"narrow":      func() int64 { return 5_000_000 + rng.Int64N(100_000) },
		"bimodal": func() int64 {
			if rng.IntN(10) == 0 {
				return 2_000_000_000 + rng.Int64N(1e9)
			}
			return 50_000 + rng.Int64N(10_000)
		},
		"sub-µs":   func() int64 { return rng.Int64N(1000) },
		"overflow": func() int64 { return 1<<43 + rng.Int64N(1<<40) },
	}
	for name, gen := range shapes {
		for _, n := range []int{1, 2, 7, 100, 5000} {
			var h runHist
			vs := make([]int64, n)
			for i := range vs {
				vs[i] = gen()
				h.add(vs[i])
			}
			slices.Sort(vs)
			for _, q := range []float64{0.5, 0.9, 0.99, 1} {
				exact := exactQuantile(vs, q)
				est := int64(h.quantile(q))
				if histBucket(est) != histBucket(exact) {
					t.Errorf("%s n=%d q=%v: estimate %d in bucket %d, exact %d in bucket %d",
						name, n, q, est, histBucket(est), exact, histBucket(exact))
				}
			}
		}
	}
	var empty runHist
	if got := empty.quantile(0.5); got != 0 {
		t.Errorf("empty quantile = %v", got)
	}
}

func TestHistMergeSQL(t *testing.T) {
	s := openTest(t)
	var a, b runHist
	a.add(5000)
	b.add(5000)
	b.add(1 << 30)
	var got []byte
	if err := s.write.QueryRowContext(t.Context(), `SELECT kiln_hist_merge(?, ?)`, a.appendBlob(nil), b.appendBlob(nil)).Scan(&got); err != nil {
		t.Fatal(err)
	}
	var h runHist
	if err := h.mergeBlob(got); err != nil {
		t.Fatal(err)
	}
	if h[histBucket(5000)] != 2 || h[histBucket(1<<30)] != 1 {
		t.Errorf("merged histogram is wrong: %v", got)
	}
	if err := s.read.QueryRowContext(t.Context(), `SELECT kiln_hist_merge(NULL, ?)`, a.appendBlob(nil)).Scan(&got); err != nil {
		t.Fatalf("read handle, NULL argument: %v", err)
	}
	for _, bad := range []string{`x'01', x'0201'`, `x'01', 42`} {
		if err := s.write.QueryRowContext(t.Context(), `SELECT kiln_hist_merge(`+bad+`)`).Scan(&got); err == nil {
			t.Errorf("kiln_hist_merge(%s) succeeded", bad)
		}
	}

	// A damaged rollup row makes ingestion fail instead of overwriting it.
	rec := UsageRecord{CallID: "a", Function: "f", Tenant: "t", ReceivedAt: testBase, Status: 200, RunTime: 5000}
	ingestBatches(t, s, 1, []UsageRecord{rec})
	if _, err := s.write.ExecContext(t.Context(), `UPDATE usage_rollup SET hist = x'07'`); err != nil {
		t.Fatal(err)
	}
	rec.CallID = "b"
	if _, err := s.ingestBatch(t.Context(), []UsageRecord{rec}, JournalPosition{Segment: 1}, new(rollupBatch)); err == nil {
		t.Error("ingestion over a damaged rollup succeeded")
	}
	if _, err := s.GetCall(t.Context(), "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the failed batch left its call behind: %v", err)
	}
}
