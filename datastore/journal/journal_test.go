package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfx/kiln/datastore"
)

var quiet = WithLogger(slog.New(slog.DiscardHandler))

var base = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// record returns a plausible record with call id n.
func record(rng *rand.Rand, n int) datastore.UsageRecord {
	fns := []string{"resize", "thumb", "echo"}
	starts := []string{"warm", "thawed", "stem", "cold", ""}
	return datastore.UsageRecord{
		CallID:           callID(n),
		Function:         fns[rng.IntN(len(fns))],
		Revision:         "r1",
		Tenant:           fmt.Sprint("tenant-", rng.IntN(4)),
		Trigger:          "http",
		ReceivedAt:       base.Add(time.Duration(rng.Int64N(int64(time.Hour)))),
		QueueWait:        time.Duration(rng.Int64N(1e6)),
		Start:            starts[rng.IntN(len(starts))],
		InitTime:         time.Duration(rng.Int64N(1e8)),
		RunTime:          time.Duration(rng.Int64N(1e9)),
		TotalTime:        time.Duration(rng.Int64N(2e9)),
		CPUUser:          time.Duration(rng.Int64N(1e9)),
		CPUSystem:        time.Duration(rng.Int64N(1e8)),
		MemoryPeakBytes:  rng.Int64N(1 << 30),
		MemoryLimitBytes: 256 << 20,
		Shared:           rng.IntN(2) == 0,
		BytesIn:          rng.Int64N(1 << 20),
		BytesOut:         rng.Int64N(1 << 20),
		Status:           []int{200, 404, 500}[rng.IntN(3)],
		ErrorClass:       []string{"", "not_found", "internal"}[rng.IntN(3)],
		ContainerID:      fmt.Sprintf("c-%d", rng.IntN(8)),
		Node:             "node-1",
	}
}

func callID(n int) string { return fmt.Sprintf("0190c0de-0000-7000-8000-%012d", n) }

func same(a, b datastore.UsageRecord) bool {
	at, bt := a.ReceivedAt, b.ReceivedAt
	a.ReceivedAt, b.ReceivedAt = time.Time{}, time.Time{}
	return a == b && at.Equal(bt)
}

func openJournal(t testing.TB, dir string, opts ...Option) *Journal {
	t.Helper()
	j, err := Open(dir, append([]Option{quiet}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// readAll reads every record from pos on, in batches of n.
func readAll(t testing.TB, j *Journal, pos datastore.JournalPosition, n int) ([]datastore.UsageRecord, datastore.JournalPosition) {
	t.Helper()
	var all []datastore.UsageRecord
	for {
		recs, next, err := j.ReadUsage(pos, nil, n)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
		if len(recs) == 0 && next == pos {
			return all, pos
		}
		pos = next
	}
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "usage-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var d payloadDecoder
	recs := []datastore.UsageRecord{
		{CallID: "x", ReceivedAt: time.Unix(0, 1).UTC()},
		{CallID: strings.Repeat("é", 1000), Function: "\x00\xff", ReceivedAt: time.Unix(-5, 0).UTC(),
			QueueWait: -1, RunTime: 1<<63 - 1, CPUUser: -1 << 63, Status: -7, MemoryLimitBytes: -1, Shared: true},
	}
	for i := range 200 {
		recs = append(recs, record(rng, i))
	}
	for _, r := range recs {
		b, err := appendFrame(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		p, n, err := nextFrame(b)
		if err != nil || n != len(b) {
			t.Fatalf("nextFrame = %d, %v; want %d", n, err, len(b))
		}
		var got datastore.UsageRecord
		if err := d.decode(p, &got); err != nil {
			t.Fatal(err)
		}
		if !same(got, r) {
			t.Fatalf("round trip:\n got  %+v\n want %+v", got, r)
		}
		if got.ReceivedAt.Location() != time.UTC {
			t.Errorf("ReceivedAt in %v", got.ReceivedAt.Location())
		}
	}
	// A typical record is small.
	r := record(rng, 1)
	if b, _ := appendFrame(nil, &r); len(b) > 160 {
		t.Errorf("typical frame is %d bytes", len(b))
	}
}

func TestAppendAndRead(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, dir)
	rng := rand.New(rand.NewPCG(3, 4))
	var want []datastore.UsageRecord
	for i := range 1000 {
		r := record(rng, i)
		if err := j.Append(&r); err != nil {
			t.Fatal(err)
		}
		want = append(want, r)
	}
	for _, n := range []int{1, 7, 1000, 5000} {
		got, end := readAll(t, j, datastore.JournalPosition{}, n)
		if len(got) != len(want) {
			t.Fatalf("batch %d: read %d records, want %d", n, len(got), len(want))
		}
		for i := range got {
			if !same(got[i], want[i]) {
				t.Fatalf("batch %d: record %d differs", n, i)
			}
		}
		if st, err := os.Stat(segmentFiles(t, dir)[0]); err != nil || end.Offset != st.Size() {
			t.Errorf("end position %v, file size %v (%v)", end, st.Size(), err)
		}
	}
	// Reading from the middle, at a frame boundary.
	recs, mid, err := j.ReadUsage(datastore.JournalPosition{}, nil, 400)
	if err != nil || len(recs) != 400 {
		t.Fatal(len(recs), err)
	}
	rest, _ := readAll(t, j, mid, 100)
	if len(rest) != 600 || !same(rest[0], want[400]) {
		t.Errorf("read from %v: %d records", mid, len(rest))
	}
	if got := j.Stats(); got.Appended != 1000 || got.Segments != 1 || got.SkippedSegments != 0 {
		t.Errorf("Stats = %+v", got)
	}
}

func TestAppendValidates(t *testing.T) {
	j := openJournal(t, t.TempDir())
	for name, r := range map[string]datastore.UsageRecord{
		"no call id":       {ReceivedAt: base},
		"no received time": {CallID: "x"},
		"too big":          {CallID: "x", ReceivedAt: base, Function: strings.Repeat("f", MaxPayload)},
	} {
		if err := j.Append(&r); err == nil {
			t.Errorf("%s: Append succeeded", name)
		}
	}
	if recs, _, _ := j.ReadUsage(datastore.JournalPosition{}, nil, 10); len(recs) != 0 || j.Lag() != 0 {
		t.Errorf("refused records were written: %d, lag %d", len(recs), j.Lag())
	}
	// A journal still works after refusals.
	r := record(rand.New(rand.NewPCG(1, 1)), 1)
	if err := j.Append(&r); err != nil {
		t.Fatal(err)
	}
}

func TestRotationAndRemoval(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, dir, WithSegmentSize(4096))
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 500 {
		r := record(rng, i)
		if err := j.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	files := segmentFiles(t, dir)
	if len(files) < 10 {
		t.Fatalf("%d segments, want many", len(files))
	}
	for _, f := range files[:len(files)-1] {
		if st, _ := os.Stat(f); st.Size() > 4096 {
			t.Errorf("%s is %d bytes, over the segment size", f, st.Size())
		}
	}
	if j.Lag() != 500 {
		t.Errorf("Lag = %d, want 500", j.Lag())
	}

	// Read half, acknowledge: segments before the position go, Lag follows.
	recs, pos, err := j.ReadUsage(datastore.JournalPosition{}, nil, 250)
	if err != nil || len(recs) != 250 {
		t.Fatal(len(recs), err)
	}
	j.Ingested(pos)
	if j.Lag() != 250 {
		t.Errorf("Lag after 250 ingested = %d", j.Lag())
	}
	left := segmentFiles(t, dir)
	if len(left) >= len(files) || filepath.Base(left[0]) != segmentName(pos.Segment) {
		t.Errorf("after Ingested(%v): segments %v", pos, left)
	}
	rest, end := readAll(t, j, pos, 1000)
	if len(rest) != 250 || rest[0].CallID != callID(250) || rest[249].CallID != callID(499) {
		t.Fatalf("rest: %d records", len(rest))
	}
	j.Ingested(end)
	if j.Lag() != 0 || len(segmentFiles(t, dir)) != 1 {
		t.Errorf("after all ingested: Lag %d, segments %v", j.Lag(), segmentFiles(t, dir))
	}
	// A stale position in a removed segment reads again from the start of
	// the next segment still there: duplicates, never gaps.
	again, next := readAll(t, j, pos, 1000)
	if next != end || len(again) == 0 || !same(again[len(again)-1], rest[len(rest)-1]) {
		t.Errorf("read from a removed segment: %d records up to %v, want a tail of the journal up to %v", len(again), next, end)
	}
}

func TestReopenStartsNewSegment(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 8))
	var want []string
	for round := range 3 {
		j, err := Open(dir, quiet)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			r := record(rng, round*10+i)
			if err := j.Append(&r); err != nil {
				t.Fatal(err)
			}
			want = append(want, r.CallID)
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		if err := j.Close(); !errors.Is(err, ErrClosed) {
			t.Errorf("second Close = %v", err)
		}
	}
	j := openJournal(t, dir)
	if n := len(segmentFiles(t, dir)); n != 4 {
		t.Errorf("%d segments after 4 opens, want 4", n)
	}
	if j.Lag() != 30 {
		t.Errorf("Lag before any read = %d, want 30", j.Lag())
	}
	got, _ := readAll(t, j, datastore.JournalPosition{}, 7)
	var ids []string
	for _, r := range got {
		ids = append(ids, r.CallID)
	}
	if !slices.Equal(ids, want) {
		t.Errorf("read %v, want %v", ids, want)
	}
}

func TestLockExcludesSecondOpen(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, dir)
	if j2, err := Open(dir, quiet); err == nil {
		j2.Close()
		t.Fatal("second Open of a locked directory succeeded")
	}
	j.Close()
	j3, err := Open(dir, quiet)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	j3.Close()
}

func TestClosed(t *testing.T) {
	j := openJournal(t, t.TempDir())
	j.Close()
	r := record(rand.New(rand.NewPCG(1, 1)), 1)
	if err := j.Append(&r); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v", err)
	}
	if _, _, err := j.ReadUsage(datastore.JournalPosition{}, nil, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadUsage after Close = %v", err)
	}
	j.Ingested(datastore.JournalPosition{Segment: 99}) // no panic
}

// writeSegments makes a journal of segs segments of n records each, closes
// it, and returns the records and segment files.
func writeSegments(t *testing.T, dir string, segs, n int) ([]datastore.UsageRecord, []string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(9, 9))
	var recs []datastore.UsageRecord
	for s := range segs {
		j, err := Open(dir, quiet)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			r := record(rng, s*n+i)
			if err := j.Append(&r); err != nil {
				t.Fatal(err)
			}
			recs = append(recs, r)
		}
		j.Close()
	}
	return recs, segmentFiles(t, dir)
}

func TestDamagedFrames(t *testing.T) {
	frameEnds := func(t *testing.T, path string) []int64 {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var ends []int64
		var off int
		for off < len(b) {
			_, n, err := nextFrame(b[off:])
			if err != nil {
				t.Fatal(err)
			}
			off += n
			ends = append(ends, int64(off))
		}
		return ends
	}
	cases := []struct {
		name    string
		damage  func(t *testing.T, files []string) // files: 3 segments of 20 records
		want    []int                              // call ids read, in order
		skipped int64
	}{
		{
			name: "torn last frame of the last segment",
			damage: func(t *testing.T, files []string) {
				ends := frameEnds(t, files[2])
				os.Truncate(files[2], ends[19]-3)
			},
			want: seq(0, 59), skipped: 1,
		},
		{
			name: "torn header",
			damage: func(t *testing.T, files []string) {
				ends := frameEnds(t, files[2])
				os.Truncate(files[2], ends[18]+5)
			},
			want: seq(0, 59), skipped: 1,
		},
		{
			name: "flipped byte in the last frame",
			damage: func(t *testing.T, files []string) {
				ends := frameEnds(t, files[2])
				flip(t, files[2], ends[19]-10)
			},
			want: seq(0, 59), skipped: 1,
		},
		{
			name: "flipped length in a middle segment: rest of that segment skipped",
			damage: func(t *testing.T, files []string) {
				ends := frameEnds(t, files[1])
				flip(t, files[1], ends[9]+3) // the top byte of frame 10's length
			},
			want: append(seq(0, 30), seq(40, 60)...), skipped: 1,
		},
		{
			name: "zeros after the last frame (a crash with delayed allocation)",
			damage: func(t *testing.T, files []string) {
				f, _ := os.OpenFile(files[2], os.O_WRONLY|os.O_APPEND, 0)
				f.Write(make([]byte, 4096))
				f.Close()
			},
			want: seq(0, 60), skipped: 1,
		},
		{
			name: "empty segment",
			damage: func(t *testing.T, files []string) {
				os.Truncate(files[0], 0)
			},
			want: seq(20, 60),
		},
		{
			name: "intact frame with an unknown payload version",
			damage: func(t *testing.T, files []string) {
				r := datastore.UsageRecord{CallID: "future", ReceivedAt: base}
				b, _ := appendFrame(nil, &r)
				b[frameHeader] = 9
				binaryPutCRC(b)
				f, _ := os.OpenFile(files[0], os.O_WRONLY|os.O_APPEND, 0)
				f.Write(b)
				f.Close()
			},
			want: seq(0, 60),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			_, files := writeSegments(t, dir, 3, 20)
			// The empty active segments of each Open are in between.
			var full []string
			for _, f := range files {
				if st, _ := os.Stat(f); st.Size() > 0 {
					full = append(full, f)
				}
			}
			c.damage(t, full)
			var logs bytes.Buffer
			j, err := Open(dir, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			for range 2 { // reading again neither changes the result nor counts twice
				got, _ := readAll(t, j, datastore.JournalPosition{}, 8)
				var ids []int
				for _, r := range got {
					var n int
					fmt.Sscanf(r.CallID[len(r.CallID)-12:], "%d", &n)
					ids = append(ids, n)
				}
				if !slices.Equal(ids, c.want) {
					t.Errorf("read %v\nwant %v", ids, c.want)
				}
			}
			if st := j.Stats(); st.SkippedSegments != c.skipped {
				t.Errorf("SkippedSegments = %d, want %d; log:\n%s", st.SkippedSegments, c.skipped, logs.String())
			}
			if c.skipped > 0 && !strings.Contains(logs.String(), "damaged segment") {
				t.Errorf("no warning logged:\n%s", logs.String())
			}
			// Appends after the damage are read.
			r := record(rand.New(rand.NewPCG(1, 1)), 1000)
			if err := j.Append(&r); err != nil {
				t.Fatal(err)
			}
			got, end := readAll(t, j, datastore.JournalPosition{}, 100)
			if len(got) != len(c.want)+1 || got[len(got)-1].CallID != callID(1000) {
				t.Errorf("after a new append: %d records", len(got))
			}
			j.Ingested(end)
			if j.Lag() != 0 {
				t.Errorf("Lag after reading everything = %d", j.Lag())
			}
		})
	}
}

func binaryPutCRC(frame []byte) {
	binary.LittleEndian.PutUint32(frame[4:], crc32.Checksum(frame[frameHeader:], castagnoli))
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x80
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, dir, WithSegmentSize(64<<10))
	const writers, each = 32, 300
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var read []datastore.UsageRecord
	var readErr error
	// A reader follows the writers, acknowledging as it goes.
	var rwg sync.WaitGroup
	rwg.Go(func() {
		var pos datastore.JournalPosition
		for {
			recs, next, err := j.ReadUsage(pos, nil, 100)
			if err != nil {
				readErr = err
				return
			}
			read = append(read, recs...)
			if next != pos {
				j.Ingested(next)
			}
			if len(recs) == 0 && next == pos {
				select {
				case <-stop:
					recs, next, _ = j.ReadUsage(pos, nil, 1<<30)
					read = append(read, recs...)
					j.Ingested(next)
					return
				case <-j.Appended():
				case <-time.After(10 * time.Millisecond):
				}
			}
			pos = next
		}
	})
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range each {
				r := record(rng, w*each+i)
				if err := j.Append(&r); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}
	seen := make(map[string]int, writers*each)
	for _, r := range read {
		seen[r.CallID]++
	}
	for n := range writers * each {
		if seen[callID(n)] != 1 {
			t.Fatalf("call %d read %d times", n, seen[callID(n)])
		}
	}
	if len(read) != writers*each {
		t.Errorf("read %d records, want %d", len(read), writers*each)
	}
	if st := j.Stats(); st.Appended != writers*each || st.Lag != 0 || st.Segments > 2 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestPositionBeyondJournalRereads(t *testing.T) {
	// A database whose position comes from a journal directory since wiped.
	j := openJournal(t, t.TempDir())
	rng := rand.New(rand.NewPCG(2, 2))
	for i := range 5 {
		r := record(rng, i)
		j.Append(&r)
	}
	got, _ := readAll(t, j, datastore.JournalPosition{Segment: 40, Offset: 1234}, 10)
	if len(got) != 5 {
		t.Errorf("read %d records from a position beyond the journal, want all 5", len(got))
	}
	got, _ = readAll(t, j, datastore.JournalPosition{Segment: 1, Offset: 1 << 40}, 10)
	if len(got) != 5 {
		t.Errorf("read %d records from past the end of a segment, want all 5", len(got))
	}
}

func TestSync(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, dir, WithSync(), WithSegmentSize(1024))
	rng := rand.New(rand.NewPCG(4, 4))
	for i := range 20 {
		r := record(rng, i)
		if err := j.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := readAll(t, j, datastore.JournalPosition{}, 100); len(got) != 20 {
		t.Errorf("read %d", len(got))
	}
}
