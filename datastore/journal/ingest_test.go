package journal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfx/kiln/datastore"
)

const crashChildEnv = "KILN_JOURNAL_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

func openStore(t testing.TB, dir string) *datastore.Store {
	t.Helper()
	s, err := datastore.Open(context.Background(), filepath.Join(dir, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newIngester(t testing.TB, s *datastore.Store, src datastore.UsageSource, opts ...datastore.IngesterOption) *datastore.Ingester {
	t.Helper()
	opts = append([]datastore.IngesterOption{datastore.WithIngestLogger(slog.New(slog.DiscardHandler))}, opts...)
	in, err := datastore.NewIngester(s, src, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// callIDs returns every call id in the store (records from record()).
func callIDs(t testing.TB, s *datastore.Store) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for _, fn := range []string{"resize", "thumb", "echo"} {
		calls, err := s.ListCalls(context.Background(), datastore.CallFilter{Function: fn, Limit: datastore.MaxCallLimit})
		if err != nil {
			t.Fatal(err)
		}
		if len(calls) == datastore.MaxCallLimit {
			t.Fatalf("%d calls of %s or more: use a smaller test", len(calls), fn)
		}
		for _, c := range calls {
			ids[c.CallID] = true
		}
	}
	return ids
}

// totalCount is the number of calls the rollups hold.
func totalCount(t testing.TB, s *datastore.Store) int64 {
	t.Helper()
	rows, err := s.Report(context.Background(), datastore.ReportQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		return 0
	}
	return rows[0].Count
}

func TestIngestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, filepath.Join(dir, "usage"), WithSegmentSize(32<<10))
	s := openStore(t, dir)
	in := newIngester(t, s, j, datastore.WithBatchDelay(2*time.Millisecond), datastore.WithBatchSize(200))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()

	const writers, each = 32, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for i := range each {
				r := record(rng, w*each+i)
				if err := j.Append(&r); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 { // the agent retrying a record: a duplicate
					if err := j.Append(&r); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for j.Lag() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("lag still %d", j.Lag())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	ids := callIDs(t, s)
	if len(ids) != writers*each {
		t.Errorf("%d calls stored, want %d", len(ids), writers*each)
	}
	if n := totalCount(t, s); n != writers*each {
		t.Errorf("rollups count %d calls, want %d", n, writers*each)
	}
	if st := j.Stats(); st.Segments > 2 {
		t.Errorf("%d segments left after everything was ingested", st.Segments)
	}
}

// forgetfulSource passes reads through but drops Ingested: a crash between
// the commit and the journal hearing of it.
type forgetfulSource struct{ *Journal }

func (forgetfulSource) Ingested(datastore.JournalPosition) {}

func TestCrashAfterCommitBeforeAck(t *testing.T) {
	dir := t.TempDir()
	jdir := filepath.Join(dir, "usage")
	j := openJournal(t, jdir, WithSegmentSize(4096))
	s := openStore(t, dir)
	rng := rand.New(rand.NewPCG(3, 3))
	for i := range 300 {
		r := record(rng, i)
		j.Append(&r)
	}
	if n, err := newIngester(t, s, forgetfulSource{j}, datastore.WithBatchSize(64)).IngestAll(t.Context()); err != nil || n != 300 {
		t.Fatalf("IngestAll = %d, %v", n, err)
	}
	segs := len(segmentFiles(t, jdir))
	if segs < 5 || j.Lag() != 300 {
		t.Fatalf("%d segments, lag %d: the journal heard of the ingestion", segs, j.Lag())
	}
	j.Close()

	// Restart: the new ingester resumes from the stored position, inserts
	// nothing again, and the journal drops what SQLite holds.
	j = openJournal(t, jdir)
	n, err := newIngester(t, s, j).IngestAll(t.Context())
	if err != nil || n != 0 {
		t.Fatalf("IngestAll after restart = %d, %v; want 0", n, err)
	}
	if got := len(segmentFiles(t, jdir)); got > 2 {
		t.Errorf("%d segments left", got)
	}
	if j.Lag() != 0 || totalCount(t, s) != 300 {
		t.Errorf("lag %d, rollups %d", j.Lag(), totalCount(t, s))
	}
}

func TestIngestAllAfterRestartFindsEverything(t *testing.T) {
	// Records appended and never ingested (the agent stopped), then the
	// journal reopened: IngestAll at start finds them all.
	dir := t.TempDir()
	jdir := filepath.Join(dir, "usage")
	j, err := Open(jdir, quiet, WithSegmentSize(8192))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(4, 4))
	for i := range 500 {
		r := record(rng, i)
		j.Append(&r)
	}
	j.Close()
	j = openJournal(t, jdir)
	s := openStore(t, dir)
	n, err := newIngester(t, s, j).IngestAll(t.Context())
	if err != nil || n != 500 {
		t.Fatalf("IngestAll = %d, %v", n, err)
	}
	if j.Lag() != 0 || len(callIDs(t, s)) != 500 {
		t.Errorf("lag %d", j.Lag())
	}
}

// crashChild appends records from 4 goroutines, printing each call id once
// its Append has returned, while an ingester runs, until it is killed.
func crashChild(dir string) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	j, err := Open(filepath.Join(dir, "usage"), WithSegmentSize(16<<10), WithLogger(log))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := datastore.Open(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	in, err := datastore.NewIngester(s, j, datastore.WithBatchDelay(time.Millisecond), datastore.WithBatchSize(50), datastore.WithIngestLogger(log))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if _, err := in.IngestAll(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go in.Run(ctx)
	first := 0
	fmt.Sscan(os.Getenv(crashChildEnv+"_FIRST"), &first)
	for w := range 4 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(first+w), 5))
			for i := first + w; ; i += 4 {
				r := record(rng, i)
				if err := j.Append(&r); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				fmt.Fprintln(os.Stdout, r.CallID) // one write(2): lines never interleave
			}
		}()
	}
	select {}
}

func TestSIGKILLLosesNoAcknowledgedCall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s_FIRST=%d", crashChildEnv, round*1_000_000))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			acked[sc.Text()] = true
			if n++; n == 3000 {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v after %d calls, want killed", round, err, n)
		}
	}

	j := openJournal(t, filepath.Join(dir, "usage"))
	s := openStore(t, dir)
	if _, err := newIngester(t, s, j).IngestAll(t.Context()); err != nil {
		t.Fatal(err)
	}
	ids := callIDs(t, s)
	for id := range acked {
		if !ids[id] {
			t.Fatalf("acknowledged call %s lost (%d acknowledged, %d stored)", id, len(acked), len(ids))
		}
	}
	// At most one record per appender was appended but not yet printed.
	if len(ids) < len(acked) || len(ids) > len(acked)+3*4 {
		t.Errorf("%d calls stored for %d acknowledged", len(ids), len(acked))
	}
	if n := totalCount(t, s); n != int64(len(ids)) {
		t.Errorf("rollups count %d calls, calls table has %d: counted twice or missed", n, len(ids))
	}
	if j.Lag() != 0 {
		t.Errorf("lag %d after IngestAll", j.Lag())
	}
	t.Logf("%d calls acknowledged over 3 kills, %d stored, %d skipped segment tails", len(acked), len(ids), j.Stats().SkippedSegments)
}
