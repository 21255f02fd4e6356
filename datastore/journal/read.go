package journal

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/kilnfx/kiln/datastore"
)

var _ datastore.UsageSource = (*Journal)(nil)

// reader is the read side of a Journal. It remembers the frame count at the
// positions it handed out, so that Lag is exact without re-reading.
type reader struct {
	j    *Journal
	mu   sync.Mutex
	sc   scanner
	dec  payloadDecoder
	snap []segment // reused snapshot of j.segs

	last mark                      // where the last ReadUsage stopped
	ack  mark                      // the last position reported ingested
	hw   datastore.JournalPosition // damage before this was already counted and logged
}

// mark is a position and the number of frames before it since Open,
// removed segments included.
type mark struct {
	pos    datastore.JournalPosition
	frames int64
	ok     bool
}

func less(a, b datastore.JournalPosition) bool {
	return a.Segment < b.Segment || a.Segment == b.Segment && a.Offset < b.Offset
}

// ReadUsage appends to buf at most max of the records that follow from and
// returns the extended slice and the position after the last frame it
// consumed; see [datastore.UsageSource]. It never waits and never reads the
// bytes of an Append still in progress.
//
// It starts at from, or at the first segment after from's if that one is
// gone, and moves from a full segment to the next. A torn or corrupt frame
// makes it skip the rest of its segment, counted in Stats.SkippedSegments
// and logged once; an intact frame whose payload does not decode is skipped
// alone, counted in Stats.BadRecords. A from beyond every segment, or past
// the end of its segment, means the journal directory does not match the
// database that stored the position: reading starts again at the first
// segment, or at the start of from's segment (duplicates are harmless,
// losses are not), with a warning.
//
// Records with the same CallID are all returned; deduplication is the
// ingester's. The strings of the returned records are shared between them
// and with later reads; they are immutable, like all Go strings. After
// Close it returns ErrClosed.
func (j *Journal) ReadUsage(from datastore.JournalPosition, buf []datastore.UsageRecord, max int) ([]datastore.UsageRecord, datastore.JournalPosition, error) {
	rd := &j.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	segs, removed, ok := j.snapshot(rd.snap[:0])
	rd.snap = segs
	if !ok {
		return buf, from, ErrClosed
	}
	if len(segs) == 0 {
		return buf, from, nil
	}
	i, pos, frames, err := rd.locate(segs, removed, from)
	if err != nil {
		return buf, from, err
	}
	if !rd.ack.ok {
		// The first reader starts where everything before is ingested.
		rd.ack = mark{pos: from, frames: frames, ok: true}
		j.ingested.Store(frames)
	}

	start := len(buf)
	for len(buf)-start < max {
		s := &segs[i]
		if pos.Offset >= s.size {
			if !s.sealed || i+1 == len(segs) {
				break
			}
			i++
			pos = datastore.JournalPosition{Segment: segs[i].seq}
			frames = framesBefore(segs, removed, i)
			continue
		}
		p, end, err := rd.sc.frame(s.seq, s.size, pos.Offset)
		if errors.Is(err, errTorn) || errors.Is(err, errCorrupt) {
			if !less(pos, rd.hw) {
				j.skipped.Add(1)
				j.o.log.Warn("journal: skipping the rest of a damaged segment",
					"segment", segmentName(s.seq), "offset", pos.Offset, "size", s.size, "err", err)
			}
			pos.Offset = s.size
			continue
		}
		if err != nil {
			return buf[:start], from, err
		}
		buf = append(buf, datastore.UsageRecord{})
		if err := rd.dec.decode(p, &buf[len(buf)-1]); err != nil {
			buf = buf[:len(buf)-1]
			if !less(pos, rd.hw) {
				j.bad.Add(1)
				j.o.log.Error("journal: skipping a record that does not decode",
					"segment", segmentName(s.seq), "offset", pos.Offset, "err", err)
			}
		}
		frames++
		pos.Offset = end
	}
	rd.last = mark{pos: pos, frames: frames, ok: true}
	if less(rd.hw, pos) {
		rd.hw = pos
	}
	return buf, pos, nil
}

// locate finds where a read from from starts: the index of its segment,
// the position, and the frames before it.
func (rd *reader) locate(segs []segment, removed int64, from datastore.JournalPosition) (int, datastore.JournalPosition, int64, error) {
	i := 0
	for i < len(segs) && segs[i].seq < from.Segment {
		i++
	}
	if i == len(segs) {
		rd.j.o.log.Warn("journal: position is beyond every segment; reading the journal again from its start",
			"position", from.String(), "first_segment", segmentName(segs[0].seq))
		return 0, datastore.JournalPosition{Segment: segs[0].seq}, removed, nil
	}
	s := &segs[i]
	start := datastore.JournalPosition{Segment: s.seq}
	switch {
	case s.seq > from.Segment, from.Offset == 0:
		// from's segment is gone: it was read to its end.
		return i, start, framesBefore(segs, removed, i), nil
	case from.Offset > s.size:
		rd.j.o.log.Warn("journal: position is past the end of its segment; reading the segment again",
			"position", from.String(), "size", s.size)
		return i, start, framesBefore(segs, removed, i), nil
	case rd.last.ok && from == rd.last.pos:
		return i, from, rd.last.frames, nil
	case rd.ack.ok && from == rd.ack.pos:
		return i, from, rd.ack.frames, nil
	}
	n, _, err := rd.sc.count(s.seq, s.size, from.Offset)
	if err != nil {
		return 0, from, 0, err
	}
	return i, from, framesBefore(segs, removed, i) + n, nil
}

// framesBefore returns the frames before segs[i] since Open.
func framesBefore(segs []segment, removed int64, i int) int64 {
	n := removed
	for _, s := range segs[:i] {
		n += s.frames
	}
	return n
}

// snapshot appends a copy of the segment list to dst.
func (j *Journal) snapshot(dst []segment) ([]segment, int64, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return dst, 0, false
	}
	for _, s := range j.segs {
		dst = append(dst, *s)
	}
	return dst, j.removedFrames, true
}

// Ingested records that every record before pos is in SQLite: Lag drops
// accordingly, and the sealed segments before pos's are deleted. pos must be
// a position ReadUsage returned. Failures to delete are logged; the files
// are tried again on the next call. It implements [datastore.UsageSource].
func (j *Journal) Ingested(pos datastore.JournalPosition) {
	rd := &j.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	switch {
	case rd.last.ok && pos == rd.last.pos:
		rd.ack = rd.last
	case rd.ack.ok && pos == rd.ack.pos:
	default:
		rd.ack = mark{} // unknown count: Lag is fixed by the next read
	}
	if rd.ack.ok {
		j.ingested.Store(rd.ack.frames)
	}

	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return
	}
	var victims []uint64
	keep := j.segs[:0]
	for _, s := range j.segs {
		if s.sealed && s.seq < pos.Segment {
			victims = append(victims, s.seq)
			j.removedFrames += s.frames
			continue
		}
		keep = append(keep, s)
	}
	clear(j.segs[len(keep):])
	j.segs = keep
	j.mu.Unlock()

	for _, seq := range victims {
		if rd.sc.seq == seq {
			rd.sc.close()
		}
		if err := os.Remove(j.path(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.o.log.Warn("journal: removing an ingested segment failed", "segment", segmentName(seq), "err", err)
		}
	}
}

// readChunk is how much a scanner reads at once.
const readChunk = 256 << 10

// scanner reads frames from the segment files of a directory, one file at
// a time, through a buffer.
type scanner struct {
	dir string
	f   *os.File // nil when no file is open
	seq uint64   // f's segment
	buf []byte
	off int64 // file offset of buf[0]
	n   int   // valid bytes in buf
}

func (sc *scanner) close() {
	if sc.f != nil {
		sc.f.Close()
	}
	*sc = scanner{dir: sc.dir, buf: sc.buf}
}

// frame returns the checked payload of the frame at off in segment seq, of
// which only the first size bytes are to be read, and the offset just past
// the frame. The payload is valid until the next call. Damage wraps errTorn
// or errCorrupt; other errors are I/O errors.
func (sc *scanner) frame(seq uint64, size, off int64) ([]byte, int64, error) {
	if sc.f == nil || sc.seq != seq {
		sc.close()
		f, err := os.Open(filepath.Join(sc.dir, segmentName(seq)))
		if err != nil {
			return nil, 0, err
		}
		sc.f, sc.seq = f, seq
	}
	h, err := sc.bytes(off, frameHeader, size)
	if err != nil {
		return nil, 0, err
	}
	n, sum, err := parseHeader(h)
	if err != nil {
		return nil, 0, err
	}
	p, err := sc.bytes(off+frameHeader, n, size)
	if err != nil {
		return nil, 0, err
	}
	if err := checkPayload(p, sum); err != nil {
		return nil, 0, err
	}
	return p, off + frameHeader + int64(n), nil
}

// bytes returns the n bytes at off, which must end by size.
func (sc *scanner) bytes(off int64, n int, size int64) ([]byte, error) {
	end := off + int64(n)
	if end > size {
		return nil, errTorn
	}
	if off >= sc.off && end <= sc.off+int64(sc.n) {
		return sc.buf[off-sc.off : end-sc.off], nil
	}
	if len(sc.buf) < n {
		sc.buf = make([]byte, max(n, readChunk))
	}
	want := min(int64(len(sc.buf)), size-off)
	got, err := sc.f.ReadAt(sc.buf[:want], off)
	sc.off, sc.n = off, got
	if got < n {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, errTorn // the file is shorter than we were told
		}
		return nil, err
	}
	return sc.buf[:n], nil
}

// count returns the number of intact frames from the start of segment seq
// up to offset upto (of its first size bytes), stopping at the first
// damaged frame, and the offset where it stopped.
func (sc *scanner) count(seq uint64, size, upto int64) (int64, int64, error) {
	var n, off int64
	for off < upto {
		_, end, err := sc.frame(seq, size, off)
		if errors.Is(err, errTorn) || errors.Is(err, errCorrupt) {
			break
		}
		if err != nil {
			return 0, 0, err
		}
		n, off = n+1, end
	}
	return n, off, nil
}
