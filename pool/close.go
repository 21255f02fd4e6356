package pool

import (
	"context"
	"errors"
	"fmt"
)

// RemoveFunction stops every container of the named function; calls waiting
// for one fail with ErrClosed. It returns once the containers are gone or
// ctx ends.
func (p *Pool) RemoveFunction(ctx context.Context, name string) error {
	p.mu.Lock()
	s := p.sets[name]
	delete(p.sets, name)
	delete(p.logs, name)
	var victims []*Container
	if s != nil {
		for _, w := range s.waiters {
			w.ch <- grant{err: ErrClosed}
		}
		s.waiters = nil
		victims = append(victims, s.containers...)
		for _, c := range victims {
			p.stopLocked(c, "function removed")
		}
	}
	p.mu.Unlock()
	return p.waitGone(ctx, victims)
}

// waitGone waits until every container of cs has been removed.
func (p *Pool) waitGone(ctx context.Context, cs []*Container) error {
	for _, c := range cs {
		select {
		case <-c.gone:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close stops every container, fails waiting calls with ErrClosed, and
// refuses further Acquires. It returns once the containers are gone or ctx
// ends.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var victims []*Container
	for name, s := range p.sets {
		for _, w := range s.waiters {
			w.ch <- grant{err: ErrClosed}
		}
		s.waiters = nil
		victims = append(victims, s.containers...)
		delete(p.sets, name)
	}
	for _, stems := range p.stems {
		victims = append(victims, stems...)
	}
	for _, c := range victims {
		p.stopLocked(c, "pool closed")
	}
	p.mu.Unlock()
	err := p.waitGone(ctx, victims)
	p.cancel()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Containers that were starting when Close began.
	p.mu.Lock()
	var late []*Container
	for _, c := range p.all {
		if c.state.live() {
			p.setStateLocked(c, StateStopping)
		}
		late = append(late, c)
	}
	p.mu.Unlock()
	for _, c := range late {
		p.stop(c, ErrClosed)
	}
	return err
}

// RemoveAll removes every container driver manages: what an earlier run of
// the agent left behind. Call it before New.
func RemoveAll(ctx context.Context, driver Driver) (int, error) {
	ids, err := driver.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list containers: %w", err)
	}
	n := 0
	var errs []error
	for _, id := range ids {
		if err := driver.Remove(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", id, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
