package pool

import (
	"context"
	"errors"
	"fmt"
)

// Errors of Acquire besides those of a failed start.
var (
	// ErrQueueFull: the function's queue of waiting calls is full.
	ErrQueueFull = errors.New("queue full")
	// ErrQueueTimeout: the call's deadline passed while it waited for a
	// container.
	ErrQueueTimeout = errors.New("timed out waiting for a container")
	// ErrNoCapacity: the node's memory budget cannot hold another container
	// and the function has none to wait for.
	ErrNoCapacity = errors.New("node out of memory for containers")
)

// set is one function's containers and waiting calls. Pool.mu guards
// its fields.
type set struct {
	fn         *Function
	containers []*Container // adopted and not ending: Ready, Busy, Frozen or Thawing
	starting   int          // starts or specialisations for waiting calls
	prewarming int          // starts for min_warm
	waiters    []*waiter    // FIFO
}

// waiter is a call queued for a container of a set.
type waiter struct {
	ch chan grant
}

// grant is what a waiter gets: a container, or why it gets none.
type grant struct {
	c    *Container
	kind StartKind
	err  error
}

// Acquire returns a container of fn ready for a call, and how it was
// obtained. It thaws a frozen container, specialises a stem cell or starts a
// container as needed, and otherwise waits in fn's queue until ctx ends. The
// caller must Release the container (or Discard it). Errors: ErrQueueFull,
// ErrQueueTimeout, ErrNoCapacity, ErrClosed, or a failed start (wrapping
// ErrExecutorFailed, or ErrUnavailable when the driver cannot reach its
// runtime).
func (p *Pool) Acquire(ctx context.Context, fn *Function) (*Container, StartKind, error) {
	for attempt := 0; ; attempt++ {
		c, kind, err := p.acquire(ctx, fn)
		if err != nil {
			return nil, kind, err
		}
		if kind != StartThawed {
			return c, kind, nil
		}
		if err := p.thaw(ctx, c); err != nil {
			p.log.Warn("thaw failed; replacing container", "container", c.id, "err", err)
			p.Discard(c)
			if attempt < 3 {
				continue
			}
			return nil, kind, fmt.Errorf("%w: thaw %s: %v", ErrExecutorFailed, c.id, err)
		}
		return c, kind, nil
	}
}

// acquire is Acquire without the thaw: a frozen container comes back
// Thawing, for the caller to thaw.
func (p *Pool) acquire(ctx context.Context, fn *Function) (*Container, StartKind, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, 0, ErrClosed
	}
	s := p.setLocked(fn)
	if len(s.waiters) == 0 {
		if c := s.pickLocked(); c != nil {
			if p.rechargeLocked(c) {
				kind := p.assignLocked(c)
				p.mu.Unlock()
				return c, kind, nil
			}
			// Frozen, and the budget cannot hold its limit to thaw it.
			if !s.runningLocked() {
				err := p.noThawLocked(c)
				p.mu.Unlock()
				return nil, 0, err
			}
			// Wait for a running container of fn.
		}
	}
	if n := len(s.waiters); n >= p.queueDepth {
		p.mu.Unlock()
		return nil, 0, fmt.Errorf("%w: %d calls of %s wait already", ErrQueueFull, n, fn.Name)
	}
	if err := p.scaleLocked(s); err != nil {
		p.mu.Unlock()
		return nil, 0, err
	}
	w := &waiter{ch: make(chan grant, 1)}
	s.waiters = append(s.waiters, w)
	p.mu.Unlock()

	select {
	case g := <-w.ch:
		return g.c, g.kind, g.err
	case <-ctx.Done():
	}
	p.mu.Lock()
	if s.removeWaiterLocked(w) {
		p.mu.Unlock()
		return nil, 0, fmt.Errorf("%w: %v", ErrQueueTimeout, ctx.Err())
	}
	p.mu.Unlock()
	// A grant raced with the deadline: give the container back (a frozen
	// one unthawed).
	if g := <-w.ch; g.c != nil {
		p.Release(g.c)
	}
	return nil, 0, fmt.Errorf("%w: %v", ErrQueueTimeout, ctx.Err())
}

// scaleLocked starts or specialises a container for the waiting calls of s
// when they outnumber what is starting, below max_containers and within the
// memory budget. It fails with ErrNoCapacity only when s has nothing at all
// to wait for.
func (p *Pool) scaleLocked(s *set) error {
	fn := s.fn
	waiting := len(s.waiters) + 1
	if s.starting*fn.concurrency() >= waiting || len(s.containers)+s.starting >= fn.maxContainers() {
		return nil
	}
	if stem := p.takeStemLocked(fn); stem != nil {
		s.starting++
		p.goWorkLocked(func() { p.specialize(s, fn, stem) })
		return nil
	}
	if !p.reserveLocked(fn.MemoryBytes, true, nil) {
		if len(s.containers)+s.starting+s.prewarming == 0 {
			return fmt.Errorf("%w: %d of %d bytes in use", ErrNoCapacity, p.memoryUsed, p.budget)
		}
		return nil
	}
	s.starting++
	p.goWorkLocked(func() { p.startFor(s, fn, false) })
	return nil
}

// pickLocked returns the container a call should get: the most recently
// used running container with a free slot, else the most recently used
// frozen one; nil when there is none.
func (s *set) pickLocked() *Container {
	var best, frozen *Container
	conc := s.fn.concurrency()
	for _, c := range s.containers {
		if c.retired || c.active >= conc {
			continue
		}
		switch c.state {
		case StateReady, StateBusy:
			if best == nil || c.lastUsed.After(best.lastUsed) {
				best = c
			}
		case StateFrozen:
			if frozen == nil || c.lastUsed.After(frozen.lastUsed) {
				frozen = c
			}
		}
	}
	if best != nil {
		return best
	}
	return frozen
}

// runningLocked reports whether s has a container that is not frozen, or
// one on its way: something a call may wait for without a thaw.
func (s *set) runningLocked() bool {
	if s.starting+s.prewarming > 0 {
		return true
	}
	for _, c := range s.containers {
		if c.state != StateFrozen && !c.retired {
			return true
		}
	}
	return false
}

// noThawLocked is the error for a call whose function has only frozen
// containers, c among them, and the budget cannot hold c's limit to thaw it.
func (p *Pool) noThawLocked(c *Container) error {
	return fmt.Errorf("%w: thawing %s needs %d more bytes; %d of %d bytes in use", ErrNoCapacity, c.id, c.limit-c.memory, p.memoryUsed, p.budget)
}

// assignLocked hands c to a call and returns how the call got it. A frozen
// container moves to Thawing: the caller must thaw it. A frozen c must be
// charged its limit first (rechargeLocked).
func (p *Pool) assignLocked(c *Container) StartKind {
	c.active++
	kind := StartWarm
	if c.fresh {
		c.fresh = false
		kind = c.firstKind
	}
	if c.state == StateFrozen {
		p.setStateLocked(c, StateThawing)
		return StartThawed
	}
	if c.state != StateBusy { // another call in a Busy one changes nothing
		p.setStateLocked(c, StateBusy)
	}
	return kind
}

// dispatchLocked hands free containers to waiting calls, oldest first.
func (p *Pool) dispatchLocked(s *set) {
	for len(s.waiters) > 0 {
		c := s.pickLocked()
		if c == nil {
			return
		}
		if !p.rechargeLocked(c) {
			// Frozen, and the budget cannot hold its limit: the calls
			// wait for a running container, or fail if there is none.
			if !s.runningLocked() {
				err := p.noThawLocked(c)
				for _, w := range s.waiters {
					w.ch <- grant{err: err}
				}
				s.waiters = nil
			}
			return
		}
		w := s.waiters[0]
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
		w.ch <- grant{c: c, kind: p.assignLocked(c)}
	}
}

// removeWaiterLocked takes w out of the queue of s and reports whether it
// was still there (no grant was sent to it).
func (s *set) removeWaiterLocked(w *waiter) bool {
	for i, x := range s.waiters {
		if x == w {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// failWaitersLocked fails the waiting calls of s with err: all of them when
// nothing else could serve them, else only the oldest.
func (p *Pool) failWaitersLocked(s *set, err error) {
	n := 1
	if len(s.containers)+s.starting+s.prewarming == 0 {
		n = len(s.waiters)
	}
	for i := 0; i < n && len(s.waiters) > 0; i++ {
		w := s.waiters[0]
		s.waiters = s.waiters[1:]
		w.ch <- grant{err: err}
	}
}

// Release returns a container a call acquired. A container whose session
// ended, or of a retired revision, is stopped; otherwise it goes to a
// waiting call or back to the idle set, to freeze after freeze_after.
func (p *Pool) Release(c *Container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.active--
	c.lastUsed = p.clock.Now()
	s := c.set
	if !c.state.live() || s == nil {
		return
	}
	if !c.alive() {
		p.failLocked(c, "executor session ended")
		return
	}
	if c.retired || p.closed {
		if c.active == 0 {
			p.stopLocked(c, "retired")
		}
		return
	}
	unthawed := c.state == StateThawing
	switch {
	case unthawed:
		// Given back unthawed, by a call that gave up in the queue as
		// the container was granted to it: it is still frozen.
		p.setStateLocked(c, StateFrozen)
	case c.active == 0:
		p.setStateLocked(c, StateReady)
	}
	p.dispatchLocked(s)
	if unthawed {
		// Never thawed since its freeze: what it held then still holds.
		p.lowerChargeLocked(c, c.frozenUse)
	}
	if c.active == 0 {
		p.scheduleIdleLocked(c, s.fn)
	}
}

// Discard stops a container a call acquired instead of releasing it, as
// after a call timed out in it; calls still in it fail. The function gets a
// replacement while below min_warm.
func (p *Pool) Discard(c *Container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.active--
	if c.state.live() {
		p.failLocked(c, "discarded")
	}
}

// thaw resumes a container handed out frozen.
func (p *Pool) thaw(ctx context.Context, c *Container) error {
	c.freezeMu.Lock()
	err := p.driver.Thaw(ctx, c.id)
	c.freezeMu.Unlock()
	p.mu.Lock()
	if err == nil && c.state == StateThawing {
		p.setStateLocked(c, StateBusy)
	}
	p.mu.Unlock()
	if err == nil {
		p.counters.thaws.Add(1)
	}
	return err
}
