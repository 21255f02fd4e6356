package datastore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var testBase = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// countRows returns SELECT COUNT(*) or SUM(count) results.
func queryInt(t testing.TB, s *Store, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := s.read.QueryRowContext(t.Context(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func TestIngestDuplicatesOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	var recs []UsageRecord
	for i := range 50 {
		recs = append(recs, randRecord(rng, testBase, time.Hour, i))
	}
	// Duplicates inside a batch, across batches, and with other fields
	// changed: the first record wins.
	dup := recs[7]
	dup.Status, dup.BytesIn = 599, 1
	withDups := append([]UsageRecord{}, recs...)
	withDups = append(withDups, recs[3], recs[3], dup)
	withDups = append(withDups, recs[:20]...)

	for _, batch := range []int{1, 7, 1000} {
		t.Run(fmt.Sprint("batch ", batch), func(t *testing.T) {
			s := openTest(t)
			src := newMemSource(false)
			src.append(withDups...)
			in, err := NewIngester(s, src, WithBatchSize(batch))
			if err != nil {
				t.Fatal(err)
			}
			n, err := in.IngestAll(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if n != len(recs) {
				t.Errorf("IngestAll inserted %d, want %d", n, len(recs))
			}
			// Re-reading everything from the start (a lost position) adds nothing.
			if n := ingestBatches(t, s, batch, withDups); n != 0 {
				t.Errorf("second ingestion inserted %d", n)
			}
			if got := queryInt(t, s, `SELECT COUNT(*) FROM calls`); got != int64(len(recs)) {
				t.Errorf("%d calls, want %d", got, len(recs))
			}
			if got := queryInt(t, s, `SELECT SUM(count) FROM usage_rollup`); got != int64(len(recs)) {
				t.Errorf("rollups count %d calls, want %d", got, len(recs))
			}
			got, err := s.GetCall(t.Context(), recs[7].CallID)
			if err != nil {
				t.Fatal(err)
			}
			if !sameRecord(got, recs[7]) {
				t.Errorf("duplicate replaced the first record: %+v", got)
			}
		})
	}
}

// rollupVsRaw compares each rollup table with the same aggregates computed
// from the calls table.
func rollupVsRaw(t *testing.T, s *Store) {
	t.Helper()
	for _, l := range rollupLevels {
		rollupVsRawLevel(t, s, l)
	}
}

func rollupVsRawLevel(t *testing.T, s *Store, l *rollupLevel) {
	t.Helper()
	rows, err := s.read.QueryContext(t.Context(), fmt.Sprintf(`
WITH raw AS (
	SELECT (received_ns / %[3]d) * %[3]d AS bucket, function, tenant, status, start,
		COUNT(*) AS count, SUM(run_ns) AS run_ns, SUM(total_ns) AS total_ns, SUM(queue_ns) AS queue_ns,
		SUM(CASE WHEN run_ns > 0 AND memory_limit_bytes > 0
			THEN memory_limit_bytes / 1073741824.0 * ((run_ns + 999999) / 1000000) / 1000.0 ELSE 0 END) AS gb,
		SUM(cpu_user_ns + cpu_system_ns) AS cpu_ns, SUM(bytes_in) AS bytes_in, SUM(bytes_out) AS bytes_out
	FROM calls GROUP BY 1, 2, 3, 4, 5)
SELECT COALESCE(raw.bucket, r.%[2]s), COALESCE(raw.function, r.function), COALESCE(raw.tenant, r.tenant),
	COALESCE(raw.status, r.status), COALESCE(raw.start, r.start),
	raw.count, raw.run_ns, raw.total_ns, raw.queue_ns, raw.gb, raw.cpu_ns, raw.bytes_in, raw.bytes_out,
	r.count, r.run_ns, r.total_ns, r.queue_ns, r.gb_seconds, r.cpu_ns, r.bytes_in, r.bytes_out
FROM raw FULL OUTER JOIN %[1]s r ON raw.bucket = r.%[2]s AND raw.function = r.function
	AND raw.tenant = r.tenant AND raw.status = r.status AND raw.start = r.start`, l.table, l.column, l.width))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			minute       *int64
			fn, tn, st   *string
			status       *int64
			raw, rollup  [7]*int64
			rawGB, rolGB *float64
		)
		if err := rows.Scan(&minute, &fn, &tn, &status, &st,
			&raw[0], &raw[1], &raw[2], &raw[3], &rawGB, &raw[4], &raw[5], &raw[6],
			&rollup[0], &rollup[1], &rollup[2], &rollup[3], &rolGB, &rollup[4], &rollup[5], &rollup[6]); err != nil {
			t.Fatal(err)
		}
		n++
		if raw[0] == nil || rollup[0] == nil {
			t.Errorf("%s: group %v/%v/%v/%v/%v only on one side: raw %v, rollup %v", l.table, deref(minute), deref(fn), deref(tn), deref(status), deref(st), raw[0] != nil, rollup[0] != nil)
			continue
		}
		for i := range raw {
			if *raw[i] != *rollup[i] {
				t.Errorf("%s: group %d/%s/%s/%d/%s column %d: raw %d, rollup %d", l.table, *minute, *fn, *tn, *status, *st, i, *raw[i], *rollup[i])
			}
		}
		if math.Abs(*rawGB-*rolGB) > 1e-9*math.Max(1, math.Abs(*rawGB)) {
			t.Errorf("%s: group %d/%s/%s/%d/%s: raw GB-s %v, rollup %v", l.table, *minute, *fn, *tn, *status, *st, *rawGB, *rolGB)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("%s: no groups compared", l.table)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestRollupsMatchRawCalls(t *testing.T) {
	seeds := uint64(3)
	if testing.Short() {
		seeds = 1
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			s := openTest(t)
			rng := rand.New(rand.NewPCG(seed, 99))
			var recs []UsageRecord
			for i := range 2000 {
				recs = append(recs, randRecord(rng, testBase, 2*time.Hour, i))
			}
			// Some duplicates, and batches of random sizes, so that rollup
			// rows are updated several times.
			for range 200 {
				recs = append(recs, recs[rng.IntN(len(recs))])
			}
			rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
			for len(recs) > 0 {
				n := min(1+rng.IntN(400), len(recs))
				ingestBatches(t, s, n, recs[:n])
				recs = recs[n:]
			}
			rollupVsRaw(t, s)

			// The GB-seconds in SQL above match UsageRecord.GBSeconds.
			var want float64
			calls, err := s.ListCalls(t.Context(), CallFilter{Limit: MaxCallLimit})
			if err != nil {
				t.Fatal(err)
			}
			for i := range calls {
				want += calls[i].GBSeconds()
			}
			rep, err := s.Report(t.Context(), ReportQuery{})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep) != 1 || rep[0].Count != int64(len(calls)) || math.Abs(rep[0].GBSeconds-want) > 1e-9*want {
				t.Errorf("report %+v, want %d calls and %v GB-s", rep, len(calls), want)
			}
		})
	}
}

func TestIngestPositionCommittedWithRows(t *testing.T) {
	ctx := t.Context()
	s := openTest(t)
	rng := rand.New(rand.NewPCG(5, 5))
	src := newMemSource(false)
	for i := range 25 {
		src.append(randRecord(rng, testBase, time.Hour, i))
	}
	in, err := NewIngester(s, src, WithBatchSize(10))
	if err != nil {
		t.Fatal(err)
	}
	if pos, err := s.ingestPosition(ctx); err != nil || pos != (JournalPosition{}) {
		t.Fatalf("position before ingestion = %v, %v; want zero", pos, err)
	}
	if n, err := in.IngestAll(ctx); err != nil || n != 25 {
		t.Fatalf("IngestAll = %d, %v", n, err)
	}
	want := JournalPosition{Segment: 1, Offset: 25}
	if pos, err := s.ingestPosition(ctx); err != nil || pos != want {
		t.Fatalf("stored position = %v, %v; want %v", pos, err, want)
	}
	if got := fmt.Sprint(src.ingested); got != "[1:10 1:20 1:25]" {
		t.Errorf("Ingested calls = %s", got)
	}

	// A new Ingester (a restart) resumes from the stored position.
	for i := 25; i < 30; i++ {
		src.append(randRecord(rng, testBase, time.Hour, i))
	}
	src.froms = nil
	in2, err := NewIngester(s, src)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := in2.IngestAll(ctx); err != nil || n != 5 {
		t.Fatalf("IngestAll after restart = %d, %v; want 5", n, err)
	}
	if src.froms[0] != want {
		t.Errorf("restarted ingester read from %v, want %v", src.froms[0], want)
	}
}

func TestIngestFailureLeavesNothingHalfDone(t *testing.T) {
	s := openTest(t)
	rng := rand.New(rand.NewPCG(6, 6))
	src := newMemSource(false)
	for i := range 30 {
		src.append(randRecord(rng, testBase, time.Hour, i))
	}
	in, err := NewIngester(s, src, WithBatchSize(10))
	if err != nil {
		t.Fatal(err)
	}

	// A failing read: nothing written, nothing acknowledged.
	boom := errors.New("disk on fire")
	src.failRead = boom
	if _, err := in.IngestAll(t.Context()); !errors.Is(err, boom) {
		t.Fatalf("IngestAll with a failing source = %v", err)
	}
	if n := queryInt(t, s, `SELECT COUNT(*) FROM calls`); n != 0 || len(src.ingested) != 0 {
		t.Fatalf("after a failed read: %d calls, Ingested %v", n, src.ingested)
	}

	// A cancelled ctx fails the batch transaction as a whole.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := in.IngestAll(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("IngestAll with a cancelled ctx = %v, want context.Canceled", err)
	}
	if _, err := s.ingestBatch(ctx, src.recs[:10], JournalPosition{Segment: 1, Offset: 10}, new(rollupBatch)); !errors.Is(err, context.Canceled) {
		t.Fatalf("ingestBatch with a cancelled ctx = %v", err)
	}
	if n := queryInt(t, s, `SELECT COUNT(*) FROM calls`) + queryInt(t, s, `SELECT COUNT(*) FROM usage_rollup`) +
		queryInt(t, s, `SELECT COUNT(*) FROM ingest_position`); n != 0 {
		t.Fatalf("a cancelled ingestion left %d rows", n)
	}

	// The next pass does everything, once.
	if n, err := in.IngestAll(t.Context()); err != nil || n != 30 {
		t.Fatalf("IngestAll = %d, %v; want 30", n, err)
	}
	rollupVsRaw(t, s)
}

// waitFor polls cond until it holds or the test's time runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRun(t *testing.T) {
	for _, signal := range []bool{true, false} {
		t.Run(fmt.Sprint("signal ", signal), func(t *testing.T) {
			s := openTest(t)
			src := newMemSource(signal)
			in, err := NewIngester(s, src, WithBatchDelay(5*time.Millisecond), WithRetryDelay(time.Millisecond),
				WithIngestLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- in.Run(ctx) }()

			rng := rand.New(rand.NewPCG(7, 7))
			for i := range 100 {
				src.append(randRecord(rng, testBase, time.Hour, i))
				if i%10 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			waitFor(t, "100 calls", func() bool { return queryInt(t, s, `SELECT COUNT(*) FROM calls`) == 100 })

			// A failing pass is retried.
			src.mu.Lock()
			src.failRead = errors.New("transient")
			src.mu.Unlock()
			src.append(randRecord(rng, testBase, time.Hour, 100))
			waitFor(t, "the call after a failure", func() bool { return queryInt(t, s, `SELECT COUNT(*) FROM calls`) == 101 })

			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
			rollupVsRaw(t, s)
		})
	}
}

func TestNewIngesterValidates(t *testing.T) {
	s := openTest(t)
	src := newMemSource(false)
	for name, f := range map[string]func() (*Ingester, error){
		"nil store":  func() (*Ingester, error) { return NewIngester(nil, src) },
		"nil source": func() (*Ingester, error) { return NewIngester(s, nil) },
		"batch 0":    func() (*Ingester, error) { return NewIngester(s, src, WithBatchSize(0)) },
		"nil logger": func() (*Ingester, error) { return NewIngester(s, src, WithIngestLogger(nil)) },
	} {
		if _, err := f(); err == nil {
			t.Errorf("%s: NewIngester succeeded", name)
		}
	}
}

func TestMinuteOf(t *testing.T) {
	for _, c := range []struct{ ns, want int64 }{
		{0, 0}, {59_999_999_999, 0}, {60e9, 60e9}, {-1, -60e9}, {-60e9, -60e9},
	} {
		if got := minuteOf(c.ns); got != c.want {
			t.Errorf("minuteOf(%d) = %d, want %d", c.ns, got, c.want)
		}
	}
}

// TestIngestBatchChunks runs batches whose sizes fall on and around the
// multi-row statements' sizes, with and without repeated call ids, and
// checks the calls, the rollups and the count of new calls against what
// ingesting one record at a time gives.
func TestIngestBatchChunks(t *testing.T) {
	maxChunk := insertChunkSizes[0]
	type batch struct {
		fresh int   // new records
		dups  []int // then repeats of these indexes into all records so far (negative: from the end)
	}
	cases := []struct {
		name    string
		batches []batch
	}{
		{"one", []batch{{fresh: 1}}},
		{"max chunk", []batch{{fresh: maxChunk}}},
		{"max chunk plus one", []batch{{fresh: maxChunk + 1}}},
		{"not a multiple of any chunk", []batch{{fresh: 2*maxChunk + 3*32 + 4 + 3}}},
		{"default max batch", []batch{{fresh: 4096}}},
		{"repeat inside a chunk", []batch{{fresh: 10, dups: []int{3}}}},
		{"repeat of the first record at a chunk's end", []batch{{fresh: maxChunk - 1, dups: []int{0}}}},
		{"repeat in a later chunk of the batch", []batch{{fresh: maxChunk + 40, dups: []int{5, 6, -1}}}},
		{"repeats across batches", []batch{{fresh: 300}, {fresh: 7, dups: []int{0, 299, 150}}, {dups: []int{1, 2}}}},
		{"a batch of repeats only", []batch{{fresh: maxChunk}, {dups: make([]int, maxChunk)}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(11, 11))
			s := openTest(t)
			var all []UsageRecord
			seen := map[string]bool{}
			wantCalls := 0
			for bi, b := range c.batches {
				var recs []UsageRecord
				for range b.fresh {
					all = append(all, randRecord(rng, testBase, time.Hour, len(all)))
					recs = append(recs, all[len(all)-1])
				}
				for _, d := range b.dups {
					if d < 0 {
						d += len(all)
					}
					dup := all[d]
					dup.Status, dup.BytesIn = 599, -1 // must not replace the first record
					recs = append(recs, dup)
				}
				wantNew := 0
				for _, r := range recs {
					if !seen[r.CallID] {
						seen[r.CallID] = true
						wantNew++
					}
				}
				wantCalls += wantNew
				got, err := s.ingestBatch(t.Context(), recs, JournalPosition{Segment: 1, Offset: int64(bi + 1)}, new(rollupBatch))
				if err != nil {
					t.Fatal(err)
				}
				if got != wantNew {
					t.Errorf("batch %d of %d records: %d new, want %d", bi, len(recs), got, wantNew)
				}
			}
			if got := queryInt(t, s, `SELECT COUNT(*) FROM calls`); got != int64(wantCalls) {
				t.Errorf("%d calls, want %d", got, wantCalls)
			}
			for _, l := range rollupLevels {
				if got := queryInt(t, s, `SELECT SUM(count) FROM `+l.table); got != int64(wantCalls) {
					t.Errorf("%s counts %d calls, want %d", l.table, got, wantCalls)
				}
			}
			if n := queryInt(t, s, `SELECT COUNT(*) FROM calls WHERE status = 599 OR bytes_in = -1`); n != 0 {
				t.Errorf("%d repeated records replaced the first", n)
			}
			for _, r := range all {
				got, err := s.GetCall(t.Context(), r.CallID)
				if err != nil {
					t.Fatal(err)
				}
				if !sameRecord(got, r) {
					t.Fatalf("call %s = %+v, want %+v", r.CallID, got, r)
				}
			}
			rollupVsRaw(t, s)
		})
	}
}

func TestInsertCallsSQL(t *testing.T) {
	for _, n := range insertChunkSizes {
		if got := strings.Count(insertCallsSQL(n), "?"); got != n*callParams {
			t.Errorf("insertCallsSQL(%d) has %d placeholders, want %d", n, got, n*callParams)
		}
	}
	if got := len(appendCallArgs(nil, &UsageRecord{})); got != callParams {
		t.Errorf("appendCallArgs appends %d parameters, want %d", got, callParams)
	}
	if insertChunkSizes[len(insertChunkSizes)-1] != 1 {
		t.Errorf("the smallest chunk is %d rows: some batch sizes cannot be cut", insertChunkSizes[len(insertChunkSizes)-1])
	}
	for i := 1; i < len(insertChunkSizes); i++ {
		if insertChunkSizes[i] >= insertChunkSizes[i-1] {
			t.Errorf("insertChunkSizes %v are not largest first", insertChunkSizes)
		}
	}
}

// TestIngestBatchCancelledMidway cancels batches at random moments: each
// one is then committed whole, position included, or leaves nothing.
func TestIngestBatchCancelledMidway(t *testing.T) {
	s := openTest(t)
	rng := rand.New(rand.NewPCG(12, 12))
	const size = 2000
	next, calls, committed := 0, int64(0), 0
	batch := func() []UsageRecord {
		recs := make([]UsageRecord, size)
		for i := range recs {
			recs[i] = randRecord(rng, testBase, time.Hour, next)
			next++
		}
		return recs
	}
	// Cancellations fall anywhere within twice the time of a whole batch.
	start := time.Now()
	if _, err := s.ingestBatch(t.Context(), batch(), JournalPosition{Segment: 1}, new(rollupBatch)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	calls += size
	for attempt := range 20 {
		recs := batch()
		ctx, cancel := context.WithCancel(t.Context())
		timer := time.AfterFunc(time.Duration(rng.Int64N(int64(2*took))), cancel)
		pos := JournalPosition{Segment: 1, Offset: int64(attempt + 1)}
		n, err := s.ingestBatch(ctx, recs, pos, new(rollupBatch))
		timer.Stop()
		cancel()
		switch {
		case err == nil && n == size:
			calls += size
			committed++
			if got, err := s.ingestPosition(t.Context()); err != nil || got != pos {
				t.Fatalf("attempt %d: committed, but the position is %v, %v", attempt, got, err)
			}
		case errors.Is(err, context.Canceled):
		default:
			t.Fatalf("attempt %d: ingestBatch = %d, %v", attempt, n, err)
		}
		if got := queryInt(t, s, `SELECT COUNT(*) FROM calls`); got != calls {
			t.Fatalf("attempt %d (err %v): %d calls, want %d", attempt, err, got, calls)
		}
		if got := queryInt(t, s, `SELECT COALESCE(SUM(count), 0) FROM usage_rollup`); got != calls {
			t.Fatalf("attempt %d: rollups count %d calls, want %d", attempt, got, calls)
		}
	}
	t.Logf("%d of 20 batches committed before their cancellation", committed)
}
