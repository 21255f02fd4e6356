package floor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// FrameHop is the edge's side of a frame connection: calls from many
// goroutines go out as frames on the one connection, and one reader
// goroutine hands each answer to its call by id.
//
// Writes are batched: a call appends its frame to pending and wakes the
// writer goroutine, which first yields, so that the calls already runnable
// (with one P, those the netpoller woke together) append theirs, and then
// writes them all in one write(2). A lone call pays one goroutine switch.
type FrameHop struct {
	conn io.ReadWriteCloser
	*calls

	mu      sync.Mutex // guards pending
	pending []byte     // frames the writer has yet to take
	wake    chan struct{}

	done chan struct{} // closed when the reader stopped
}

var _ Hop = (*FrameHop)(nil)

// NewFrameHop starts the hop over conn, which it owns from now on.
func NewFrameHop(conn io.ReadWriteCloser) *FrameHop {
	h := &FrameHop{conn: conn, calls: newCalls(), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go h.read()
	go h.write()
	return h
}

// Call implements Hop.
func (h *FrameHop) Call(ctx context.Context, body, dst []byte) ([]byte, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(body))
	}
	id, c, err := h.add(dst)
	if err != nil {
		return nil, err
	}
	// Should the writer fail from now on, fail hands c its error.
	h.mu.Lock()
	h.pending = AppendFrame(h.pending, id, body)
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default: // the writer is awake already
	}
	return h.wait(ctx, id, c)
}

// write writes the pending frames, in batches, until the hop fails.
func (h *FrameHop) write() {
	var out []byte
	for {
		select {
		case <-h.wake:
		case <-h.done:
			return
		}
		runtime.Gosched()
		h.mu.Lock()
		out, h.pending = h.pending, out[:0]
		h.mu.Unlock()
		if len(out) == 0 {
			continue
		}
		if _, err := h.conn.Write(out); err != nil {
			h.fail(fmt.Errorf("send: %w", err))
			h.conn.Close()
			return
		}
	}
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
