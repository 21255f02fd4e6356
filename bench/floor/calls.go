package floor

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Hop carries a call's body to the function's process and brings its
// answer back.
type Hop interface {
	// Call sends body and appends the answer to dst. It may be called
	// from many goroutines at once; the calls share one connection. body
	// may be reused once Call returns. When ctx ends first it returns
	// ctx's error and the answer, if it comes, is dropped; when the hop
	// fails or is closed, an error wrapping ErrClosed.
	Call(ctx context.Context, body, dst []byte) ([]byte, error)
}

// ErrClosed means the hop's connection ended or was closed: calls in
// flight and later calls fail with it.
var ErrClosed = errors.New("hop closed")

// call is one call in flight: the answer is appended to dst, then done
// receives.
type call struct {
	dst  []byte
	err  error
	done chan struct{} // buffered: the answer's sender never waits
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// calls matches answers to the calls in flight by id. It is safe for
// concurrent use.
type calls struct {
	mu      sync.Mutex // guards next, pending and err
	next    uint64
	pending map[uint64]*call
	err     error // set once the hop failed: every later call gets it
}

func newCalls() *calls { return &calls{pending: make(map[uint64]*call)} }

// add registers a new call answering into dst and returns its id.
func (cs *calls) add(dst []byte) (uint64, *call, error) {
	c := callPool.Get().(*call)
	c.dst, c.err = dst, nil
	cs.mu.Lock()
	if cs.err != nil {
		err := cs.err
		cs.mu.Unlock()
		callPool.Put(c)
		return 0, nil, err
	}
	cs.next++
	id := cs.next
	cs.pending[id] = c
	cs.mu.Unlock()
	return id, c, nil
}

// answer delivers body, which it copies, to call id. It reports whether the
// call was still waiting (it was not when its caller gave up).
func (cs *calls) answer(id uint64, body []byte) bool {
	cs.mu.Lock()
	c, ok := cs.pending[id]
	delete(cs.pending, id)
	cs.mu.Unlock()
	if ok {
		c.dst = append(c.dst, body...)
		c.done <- struct{}{}
	}
	return ok
}

// wait waits for call id's answer, for ctx, whichever comes first.
func (cs *calls) wait(ctx context.Context, id uint64, c *call) ([]byte, error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		cs.mu.Lock()
		_, waiting := cs.pending[id]
		delete(cs.pending, id)
		cs.mu.Unlock()
		if waiting {
			// Nothing will touch c any more.
			callPool.Put(c)
			return nil, ctx.Err()
		}
		// The answer (or the failure) is being delivered: take it.
		<-c.done
	}
	ans, err := c.dst, c.err
	c.dst = nil
	callPool.Put(c)
	if err != nil {
		return nil, err
	}
	return ans, nil
}

// abandon ends call id, which could not be sent, and fails the hop with
// err: a half-written frame leaves the connection unusable.
func (cs *calls) abandon(c *call, err error) error {
	err = cs.fail(err)
	// c was answered, or failed by fail: either sent on done once.
	<-c.done
	c.dst = nil
	callPool.Put(c)
	return err
}

// fail ends every call in flight and every later call with err (wrapped in
// ErrClosed unless it already is one) and returns the error calls get: the
// first failure's.
func (cs *calls) fail(err error) error {
	if !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: %v", ErrClosed, err)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.err != nil {
		return cs.err
	}
	cs.err = err
	for id, c := range cs.pending {
		delete(cs.pending, id)
		c.err = err
		c.done <- struct{}{}
	}
	return err
}
