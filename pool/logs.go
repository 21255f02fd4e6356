package pool

import (
	"bytes"
	"sync"
	"time"
)

// LogLine is one line a function's process wrote.
type LogLine struct {
	Seq       uint64 // position in the function's log, from 1
	Time      time.Time
	Container string
	Stream    string // stdout or stderr
	Text      string
}

// LogRing keeps the recent output lines of one function's containers, up to
// a byte budget, and wakes followers when lines arrive. It is safe for
// concurrent use.
type LogRing struct {
	mu     sync.Mutex
	lines  []LogLine // oldest first
	bytes  int
	limit  int
	seq    uint64
	notify chan struct{} // closed and replaced on every append
}

// NewLogRing returns a ring keeping about limit bytes of text.
func NewLogRing(limit int) *LogRing {
	return &LogRing{limit: limit, notify: make(chan struct{})}
}

func (r *LogRing) add(container, stream string, text []byte, now time.Time) {
	r.mu.Lock()
	r.seq++
	r.lines = append(r.lines, LogLine{Seq: r.seq, Time: now, Container: container, Stream: stream, Text: string(text)})
	r.bytes += len(text)
	drop := 0
	for r.bytes > r.limit && drop < len(r.lines)-1 {
		r.bytes -= len(r.lines[drop].Text)
		drop++
	}
	if drop > 0 {
		r.lines = append(r.lines[:0], r.lines[drop:]...)
	}
	close(r.notify)
	r.notify = make(chan struct{})
	r.mu.Unlock()
}

// Tail returns the last n lines (all when n <= 0) and a channel closed when
// a line arrives after them.
func (r *LogRing) Tail(n int) ([]LogLine, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lines := r.lines
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return append([]LogLine(nil), lines...), r.notify
}

// After returns the lines after sequence number seq that the ring still
// holds, and a channel closed when a line arrives after them.
func (r *LogRing) After(seq uint64) ([]LogLine, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := len(r.lines)
	for i > 0 && r.lines[i-1].Seq > seq {
		i--
	}
	return append([]LogLine(nil), r.lines[i:]...), r.notify
}

// lineWriter splits a process's output stream into lines for a LogRing.
type lineWriter struct {
	c       *Container
	stream  string
	partial []byte
}

// maxLine bounds a line; longer output is cut into several lines.
const maxLine = 16 << 10

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	ring := w.c.logRing.Load()
	now := time.Now()
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			if len(w.partial) >= maxLine {
				ring.add(w.c.id, w.stream, w.partial, now)
				w.partial = w.partial[:0]
			}
			break
		}
		line := p[:i]
		if len(w.partial) > 0 {
			line = append(w.partial, line...)
			w.partial = w.partial[:0]
		}
		ring.add(w.c.id, w.stream, line, now)
		p = p[i+1:]
	}
	return n, nil
}

// FunctionLogRingBytes is how much recent output the pool keeps per
// function.
const FunctionLogRingBytes = 1 << 20

// Logs returns the log ring of the named function, creating it if the
// function has not written anything yet.
func (p *Pool) Logs(function string) *LogRing {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logRingLocked(function)
}

// logRingLocked returns the function's ring, creating it.
func (p *Pool) logRingLocked(function string) *LogRing {
	r := p.logs[function]
	if r == nil {
		r = NewLogRing(FunctionLogRingBytes)
		p.logs[function] = r
	}
	return r
}
