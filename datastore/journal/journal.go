package journal

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kilnfx/kiln/datastore"
)

// ErrClosed is returned by every method of a closed Journal.
var ErrClosed = errors.New("journal: closed")

// DefaultSegmentSize is the size past which Append starts a new segment.
const DefaultSegmentSize = 64 << 20

const (
	segPrefix = "usage-"
	segSuffix = ".log"
	lockName  = "LOCK"
)

// segmentName returns the file name of segment seq; names sort like seqs.
func segmentName(seq uint64) string { return fmt.Sprintf("%s%020d%s", segPrefix, seq, segSuffix) }

// parseSegmentName returns the seq of a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, segPrefix)
	if !ok {
		return 0, false
	}
	if s, ok = strings.CutSuffix(s, segSuffix); !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil && seq > 0
}

// Journal is an append-only log of usage records in segment files. Append,
// Lag, Stats and Appended are safe for concurrent use; ReadUsage and
// Ingested are meant for one reader (an ingester) but are safe to call
// concurrently too.
type Journal struct {
	dir  string
	o    options
	lock *os.File // holds the directory's flock

	notify chan struct{}

	mu            sync.Mutex // guards the fields below and serialises writes
	f             *os.File   // the active segment; nil after a failed write until the next Append
	segs          []*segment // on disk, by seq; the last one is active when f != nil
	nextSeq       uint64
	removedFrames int64 // frames of the segments removed since Open
	closed        bool

	appended atomic.Int64 // frames in all segments seen since Open, removed ones included
	ingested atomic.Int64 // frames before the last position reported ingested
	writes   atomic.Int64 // frames appended by this Journal
	skipped  atomic.Int64 // segment tails skipped as torn or corrupt
	bad      atomic.Int64 // intact frames whose payload did not decode

	rd reader // the read side, under its own lock
}

// segment is one segment file as the Journal knows it.
type segment struct {
	seq    uint64
	size   int64 // bytes written; the reader never reads past it
	frames int64 // intact frames in [0, size), up to the first damaged one
	sealed bool  // no more writes: its end is final
}

type options struct {
	sync    bool
	segSize int64
	log     *slog.Logger
}

// Option configures a Journal.
type Option func(*options)

// WithSync makes Append call fdatasync(2) after each write, and Open and
// segment rotation fsync the directory, so that an appended record also
// survives a power loss or a kernel crash. It costs a disk flush per
// Append; appends are not grouped.
func WithSync() Option { return func(o *options) { o.sync = true } }

// WithSegmentSize sets the size past which Append starts a new segment
// (default DefaultSegmentSize). A record larger than that still goes into a
// segment of its own.
func WithSegmentSize(n int64) Option { return func(o *options) { o.segSize = n } }

// WithLogger sets where the journal reports damaged frames and failures to
// remove segments (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Open opens the journal in dir, creating dir if needed, and takes an
// exclusive lock on it (a second Open of the same directory, in this
// process or another, fails until Close). It checks the segments already
// there, counting their intact frames, and starts a new active segment, so
// a torn tail left by a crash is never appended to.
func Open(dir string, opts ...Option) (*Journal, error) {
	o := options{segSize: DefaultSegmentSize, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.segSize <= 0 || o.log == nil {
		return nil, fmt.Errorf("journal: open %s: invalid options", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("journal: open: %w", err)
	}
	lock, err := lockDir(filepath.Join(dir, lockName))
	if err != nil {
		return nil, fmt.Errorf("journal: open %s: %w", dir, err)
	}
	j := &Journal{dir: dir, o: o, lock: lock, notify: make(chan struct{}, 1), nextSeq: 1}
	j.rd.j = j
	j.rd.sc.dir = dir
	if err := j.load(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("journal: open %s: %w", dir, err)
	}
	j.mu.Lock()
	err = j.rotateLocked()
	j.mu.Unlock()
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("journal: open %s: %w", dir, err)
	}
	return j, nil
}

// load registers the segments in dir, all sealed, with their frame counts.
func (j *Journal) load() error {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		seq, ok := parseSegmentName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		j.segs = append(j.segs, &segment{seq: seq, size: info.Size(), sealed: true})
	}
	slices.SortFunc(j.segs, func(a, b *segment) int { return cmpUint(a.seq, b.seq) })
	sc := scanner{dir: j.dir}
	defer sc.close()
	for _, s := range j.segs {
		n, _, err := sc.count(s.seq, s.size, s.size)
		if err != nil {
			return err
		}
		s.frames = n
		j.appended.Add(n)
		j.nextSeq = s.seq + 1
	}
	return nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (j *Journal) path(seq uint64) string { return filepath.Join(j.dir, segmentName(seq)) }

// rotateLocked seals the active segment, if any, and creates the next one.
func (j *Journal) rotateLocked() error {
	if j.f != nil {
		j.segs[len(j.segs)-1].sealed = true
		err := j.f.Close()
		j.f = nil
		if err != nil {
			j.o.log.Warn("journal: closing a full segment failed", "err", err)
		}
	}
	seq := j.nextSeq
	f, err := os.OpenFile(j.path(seq), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("new segment: %w", err)
	}
	if j.o.sync {
		if err := syncDir(j.dir); err != nil {
			f.Close()
			os.Remove(j.path(seq))
			return fmt.Errorf("new segment: %w", err)
		}
	}
	j.nextSeq++
	j.f = f
	j.segs = append(j.segs, &segment{seq: seq})
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Append writes r to the journal as one frame, with a single write(2) to the
// active segment, opened O_APPEND. When it returns nil the record has
// reached the kernel: it survives the death of this process, SIGKILL
// included, but not a power loss or a kernel crash unless the Journal was
// opened WithSync. The caller may reuse r as soon as Append returns.
//
// It refuses a record with no CallID or no ReceivedAt, or one whose
// encoding is over MaxPayload. After a failed or short write the segment is
// sealed and the next Append starts a new one, so a torn frame is always the
// last of its segment. A record whose Append failed may still be ingested
// (when the write went through but fdatasync failed): billing errs towards
// recording a call, never towards losing one.
//
// Append is safe for concurrent use and does not allocate in the common
// case. After Close it returns ErrClosed.
func (j *Journal) Append(r *datastore.UsageRecord) error {
	if r.CallID == "" {
		return errors.New("journal: append: record has no call id")
	}
	if r.ReceivedAt.IsZero() {
		return fmt.Errorf("journal: append %s: record has no received time", r.CallID)
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	b, err := appendFrame((*bp)[:0], r)
	*bp = b[:0]
	if err != nil {
		return fmt.Errorf("journal: append %s: %w", r.CallID, err)
	}

	j.mu.Lock()
	if err := j.writeLocked(b); err != nil {
		j.mu.Unlock()
		return fmt.Errorf("journal: append %s: %w", r.CallID, err)
	}
	j.mu.Unlock()

	select {
	case j.notify <- struct{}{}:
	default: // a signal is already pending
	}
	return nil
}

func (j *Journal) writeLocked(b []byte) error {
	if j.closed {
		return ErrClosed
	}
	if j.f == nil || (j.active().size > 0 && j.active().size+int64(len(b)) > j.o.segSize) {
		if err := j.rotateLocked(); err != nil {
			return err
		}
	}
	s := j.active()
	n, err := j.f.Write(b)
	s.size += int64(n)
	if n == len(b) {
		// Complete, even if a sync below fails: the reader will see it.
		s.frames++
		j.appended.Add(1)
		j.writes.Add(1)
	}
	if err == nil && j.o.sync {
		err = fdatasync(j.f)
	}
	if err != nil {
		// Never write after a possibly torn frame: seal this segment.
		s.sealed = true
		j.f.Close()
		j.f = nil
		return err
	}
	return nil
}

// active returns the active segment; j.f must be non-nil.
func (j *Journal) active() *segment { return j.segs[len(j.segs)-1] }

// Appended returns a channel that receives a value after each successful
// Append, coalesced: one pending value stands for any number of appends.
// It implements [datastore.UsageSource].
func (j *Journal) Appended() <-chan struct{} { return j.notify }

// Lag returns the number of records appended but not yet reported
// ingested, for a gauge. Until the first ReadUsage it counts every record in
// the segments found at Open, ingested or not.
func (j *Journal) Lag() int64 { return max(0, j.appended.Load()-j.ingested.Load()) }

// Stats are counters of a Journal since Open.
type Stats struct {
	Appended        int64 // records appended by this Journal
	Lag             int64 // as Lag returns
	Segments        int   // segment files on disk
	SkippedSegments int64 // segment tails skipped because a frame was torn or corrupt
	BadRecords      int64 // intact frames skipped because their payload did not decode
}

// Stats returns the Journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	n := len(j.segs)
	j.mu.Unlock()
	return Stats{
		Appended:        j.writes.Load(),
		Lag:             j.Lag(),
		Segments:        n,
		SkippedSegments: j.skipped.Load(),
		BadRecords:      j.bad.Load(),
	}
}

// Close closes the active segment and releases the directory. Appends after
// it fail with ErrClosed; records already appended stay on disk for the
// next Open.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	j.closed = true
	var errs []error
	if j.f != nil {
		j.active().sealed = true
		errs = append(errs, j.f.Close())
		j.f = nil
	}
	j.mu.Unlock()

	j.rd.mu.Lock()
	j.rd.sc.close()
	j.rd.mu.Unlock()
	errs = append(errs, j.lock.Close()) // releases the flock
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("journal: close: %w", err)
	}
	return nil
}
