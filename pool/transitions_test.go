package pool_test

import (
	"context"
	"testing"

	"github.com/kilnfx/kiln/pool"
)

// TestThawingGivenBackStaysFrozen: a frozen container granted to a call
// that gave up before thawing it goes back Frozen, and the next call thaws
// it instead of calling into a frozen process.
func TestThawingGivenBackStaysFrozen(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	e.clock.Advance(fn.FreezeAfter)
	c, kind, err := e.pool.AcquireUnthawed(context.Background(), fn)
	if err != nil || kind != pool.StartThawed {
		t.Fatalf("acquire = %v, %v; want a thawed start", kind, err)
	}
	if got := e.pool.StateOf(c); got != pool.StateThawing {
		t.Fatalf("state = %v, want thawing", got)
	}
	e.pool.Release(c)
	if got := e.pool.StateOf(c); got != pool.StateFrozen {
		t.Fatalf("given back unthawed: state = %v, want frozen", got)
	}
	e.mustCall(fn, pool.StartThawed)
}
