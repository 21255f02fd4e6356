package pool_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
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

// TestIllegalTransitionPanicsInTests: in a test binary a move the table
// does not allow panics, naming the container and both states.
func TestIllegalTransitionPanicsInTests(t *testing.T) {
	e := newEnv(t, pool.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	c := e.pool.Container(e.pool.Containers("echo")[0].ID)
	defer func() {
		msg := fmt.Sprint(recover())
		if !strings.Contains(msg, c.ID()) || !strings.Contains(msg, "ready → gone") {
			t.Errorf("panic = %q, want one naming %s and ready → gone", msg, c.ID())
		}
	}()
	e.pool.SetState(c, pool.StateGone)
	t.Error("no panic")
}

// TestIllegalTransitionRefusedAndLogged: outside tests a move the table
// does not allow is logged as an error, with the container and both
// states, and refused: the container keeps its state and goes on serving.
func TestIllegalTransitionRefusedAndLogged(t *testing.T) {
	var logs syncBuffer
	e := newEnv(t, pool.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	t.Cleanup(func() { pool.SetPanicOnIllegal(true) })
	pool.SetPanicOnIllegal(false)
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	c := e.pool.Container(e.pool.Containers("echo")[0].ID)
	if e.pool.SetState(c, pool.StateGone) {
		t.Error("ready → gone was applied")
	}
	if got := e.pool.StateOf(c); got != pool.StateReady {
		t.Errorf("state after a refused move = %v, want ready", got)
	}
	out := logs.String()
	for _, want := range []string{"level=ERROR", "container=" + c.ID(), "from=ready", "to=gone"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
	e.mustCall(fn, pool.StartWarm)
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
