package pool

import "context"

// AcquireUnthawed is Acquire without the thaw: a frozen container comes
// back Thawing and still frozen, as a grant does to a call that gave up in
// the queue at that moment.
func (p *Pool) AcquireUnthawed(ctx context.Context, fn *Function) (*Container, StartKind, error) {
	return p.acquire(ctx, fn)
}

// StateOf returns c's state.
func (p *Pool) StateOf(c *Container) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return c.state
}

// SetPanicOnIllegal sets whether an illegal state transition panics, as in
// tests, or is logged and refused, as in production, and returns the old
// setting. A test that changes it must not run in parallel.
func SetPanicOnIllegal(on bool) bool {
	old := panicOnIllegal
	panicOnIllegal = on
	return old
}

// SetState moves c to the state to through the pool's one door.
func (p *Pool) SetState(c *Container, to State) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setStateLocked(c, to)
}

// WithTransitionHook makes the pool call f, with Pool.mu held, on every
// change of a container's state.
func WithTransitionHook(f func(id string, from, to State)) Option {
	return func(o *options) { o.onTransition = f }
}

// Transitions returns every move the table allows.
func Transitions() (moves [][2]State) {
	for from := range numStates {
		for to := range numStates {
			if transitions[from].has(to) {
				moves = append(moves, [2]State{from, to})
			}
		}
	}
	return moves
}
