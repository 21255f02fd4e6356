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
