package floor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// FrameHop is the edge's side of a frame connection: calls from many
// goroutines go out as frames on the one connection, and one reader
// goroutine hands each answer to its call by id.
//
// Writes are coalesced: a call writes its frame under wmu and flushes only
// when no other call is waiting to write, so that calls arriving together
// leave in one write(2), and a lone call in its own at once.
type FrameHop struct {
	conn io.ReadWriteCloser
	*calls

	writers atomic.Int32 // calls waiting for wmu or holding it
	wmu     sync.Mutex   // guards w
	w       *bufio.Writer

	done chan struct{} // closed when the reader stopped
}

var _ Hop = (*FrameHop)(nil)

// NewFrameHop starts the hop over conn, which it owns from now on.
func NewFrameHop(conn io.ReadWriteCloser) *FrameHop {
	h := &FrameHop{conn: conn, calls: newCalls(), w: newWriter(conn), done: make(chan struct{})}
	go h.read()
	return h
}

// Call implements Hop.
func (h *FrameHop) Call(ctx context.Context, body, dst []byte) ([]byte, error) {
	id, c, err := h.add(dst)
	if err != nil {
		return nil, err
	}
	if err := h.write(id, body); err != nil {
		return nil, h.abandon(c, fmt.Errorf("send: %w", err))
	}
	return h.wait(ctx, id, c)
}

// write writes call id's frame, and flushes unless another call will.
func (h *FrameHop) write(id uint64, body []byte) error {
	h.writers.Add(1)
	h.wmu.Lock()
	defer h.wmu.Unlock()
	err := writeFrame(h.w, id, body)
	// The last writer in flushes for those before it.
	if h.writers.Add(-1) == 0 && err == nil {
		err = h.w.Flush()
	}
	return err
}

// read hands answers to their calls until the connection ends.
func (h *FrameHop) read() {
	defer close(h.done)
	fr := NewFrameReader(h.conn)
	for {
		id, body, err := fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the function's process closed the connection")
			}
			h.fail(err)
			h.conn.Close()
			return
		}
		h.answer(id, body)
	}
}

// Close closes the connection: calls in flight and later calls fail with
// ErrClosed. It waits for the reader to stop.
func (h *FrameHop) Close() error {
	h.fail(errors.New("closed"))
	err := h.conn.Close()
	<-h.done
	return err
}

// Done is closed when the hop's connection ended.
func (h *FrameHop) Done() <-chan struct{} { return h.done }

// Answer computes a call's answer from its body: it appends the answer to
// dst and returns it. body is valid only until it returns.
type Answer func(dst, body []byte) []byte

// Echo answers every call with its body.
func Echo(dst, body []byte) []byte { return append(dst, body...) }

// ServeFrames is the function's side of a frame connection: it answers each
// frame read from rw with answer, in order, in the reading goroutine, and
// flushes its answers whenever no whole frame is left to read. It returns
// nil when rw ends between two frames, or the read or write error.
func ServeFrames(rw io.ReadWriter, answer Answer) error {
	fr := NewFrameReader(rw)
	w := newWriter(rw)
	var out []byte
	for {
		id, body, err := fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return w.Flush()
			}
			return err
		}
		out = answer(out[:0], body)
		if err := writeFrame(w, id, out); err != nil {
			return err
		}
		if !fr.Ready() {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}
