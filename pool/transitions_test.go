package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

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

// tracer records every change of state of a pool's containers.
type tracer struct {
	mu    sync.Mutex
	paths map[string][]pool.State // by container id, from its first state
	order []string                // ids, in the order they first moved
	moves map[[2]pool.State]bool
}

func newTracer() *tracer {
	return &tracer{paths: make(map[string][]pool.State), moves: make(map[[2]pool.State]bool)}
}

func (tr *tracer) record(id string, from, to pool.State) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	path, ok := tr.paths[id]
	if !ok {
		path = []pool.State{from}
		tr.order = append(tr.order, id)
	}
	tr.paths[id] = append(path, to)
	tr.moves[[2]pool.State{from, to}] = true
}

// pathsOf returns the paths of the containers whose id begins with prefix,
// in the order they were made, each as its states joined by spaces.
func (tr *tracer) pathsOf(prefix string) []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []string
	for _, id := range tr.order {
		if strings.HasPrefix(id, prefix) {
			var names []string
			for _, s := range tr.paths[id] {
				names = append(names, s.String())
			}
			out = append(out, strings.Join(names, " "))
		}
	}
	return out
}

// want checks the paths of the containers whose id begins with prefix.
func (tr *tracer) want(t *testing.T, prefix string, paths ...string) {
	t.Helper()
	if got := tr.pathsOf(prefix); strings.Join(got, "\n") != strings.Join(paths, "\n") {
		t.Errorf("paths of %s containers:\n%s\nwant:\n%s", prefix, strings.Join(got, "\n"), strings.Join(paths, "\n"))
	}
}

// gate holds a fake driver operation until it is opened.
type gate struct {
	entered chan string // receives the container id when the operation waits
	open    chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan string, 1), open: make(chan struct{})} }

func (g *gate) wait(id string) {
	select {
	case g.entered <- id:
	default:
	}
	<-g.open
}

// TestTransitions takes containers through every state and every move the
// table allows, against the fake driver and clock, and checks the path of
// each container: the states it went through, in order.
func TestTransitions(t *testing.T) {
	fail := errors.New("refused on purpose")
	stems := pool.WithStemCells(pool.StemSpec{Runtime: "go", RootFS: "/nonexistent", Args: []string{"/kiln-executor"}, Count: 1})
	scenarios := []struct {
		name string
		opts []pool.Option
		run  func(t *testing.T, e *env, tr *tracer)
	}{
		{"call, freeze, thaw, idle stop", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			e.mustCall(fn, pool.StartCold)
			e.clock.Advance(fn.FreezeAfter)
			e.mustCall(fn, pool.StartThawed)
			e.clock.Advance(fn.FreezeAfter)
			e.clock.Advance(fn.IdleTimeout)
			e.pool.Settle()
			tr.want(t, "a.", "creating starting ready busy ready frozen thawing busy ready frozen stopping gone")
		}},
		{"pre-forked, crashed, replaced", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			fn.MinWarm = 1
			e.pool.Configure(fn)
			e.pool.Settle()
			e.driver.Crash(e.pool.Containers("a")[0].ID)
			eventually(t, func() bool { return e.pool.Stats().Failures == 1 })
			e.pool.Settle()
			tr.want(t, "a.", "creating starting frozen failed gone", "creating starting frozen")
		}},
		{"start refused", nil, func(t *testing.T, e *env, tr *tracer) {
			e.driver.FailStart = fail
			if _, _, err := e.call(newFn("a"), "x"); !errors.Is(err, pool.ErrExecutorFailed) {
				t.Errorf("err = %v", err)
			}
			e.driver.FailStart = nil
			e.pool.Settle()
			tr.want(t, "a.", "creating failed gone")
		}},
		{"no ready in time", []pool.Option{pool.WithStartTimeout(50 * time.Millisecond)}, func(t *testing.T, e *env, tr *tracer) {
			e.driver.NoDial = true
			if _, _, err := e.call(newFn("a"), "x"); !errors.Is(err, pool.ErrExecutorFailed) {
				t.Errorf("err = %v", err)
			}
			e.driver.NoDial = false
			e.pool.Settle()
			tr.want(t, "a.", "creating starting failed gone")
		}},
		{"pre-fork freeze fails", nil, func(t *testing.T, e *env, tr *tracer) {
			e.driver.SetHook(func(op, id string) error {
				if op == "freeze" {
					return fail
				}
				return nil
			})
			fn := newFn("a")
			fn.MinWarm = 1
			e.pool.Configure(fn)
			e.pool.Settle()
			e.driver.SetHook(nil)
			tr.want(t, "a.", "creating starting failed gone")
		}},
		{"exits before it is adopted", nil, func(t *testing.T, e *env, tr *tracer) {
			// The process exits after its Ready, while it is frozen for
			// min_warm: its starter fails it, once, and it is never
			// made part of the set.
			e.driver.SetHook(func(op, id string) error {
				if op == "freeze" {
					e.driver.Crash(id)
				}
				return nil
			})
			fn := newFn("a")
			fn.MinWarm = 1
			e.pool.Configure(fn)
			e.pool.Settle()
			e.driver.SetHook(nil)
			tr.want(t, "a.", "creating starting failed gone")
			if n := e.pool.Stats().Failures; n != 1 {
				t.Errorf("failures = %d, want 1", n)
			}
			if cs := e.pool.Containers("a"); len(cs) != 0 {
				t.Errorf("containers = %v, want none before the retry", cs)
			}
		}},
		{"idle freeze fails", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			e.mustCall(fn, pool.StartCold)
			e.driver.SetHook(func(op, id string) error {
				if op == "freeze" {
					return fail
				}
				return nil
			})
			e.clock.Advance(fn.FreezeAfter)
			e.driver.SetHook(nil)
			e.mustCall(fn, pool.StartWarm)
			tr.want(t, "a.", "creating starting ready busy ready frozen ready busy ready")
		}},
		{"given back unthawed", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			e.mustCall(fn, pool.StartCold)
			e.clock.Advance(fn.FreezeAfter)
			c, _, err := e.pool.AcquireUnthawed(context.Background(), fn)
			if err != nil {
				t.Fatal(err)
			}
			e.pool.Release(c)
			tr.want(t, "a.", "creating starting ready busy ready frozen thawing frozen")
		}},
		{"thaw fails", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			e.mustCall(fn, pool.StartCold)
			e.clock.Advance(fn.FreezeAfter)
			e.driver.SetHook(func(op, id string) error {
				if op == "thaw" {
					return fail
				}
				return nil
			})
			// The thaw fails, the container is discarded, and the call
			// gets a new one.
			e.mustCall(fn, pool.StartCold)
			e.driver.SetHook(nil)
			e.pool.Settle()
			tr.want(t, "a.",
				"creating starting ready busy ready frozen thawing failed gone",
				"creating starting ready busy ready")
		}},
		{"removed while thawing", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			e.mustCall(fn, pool.StartCold)
			e.clock.Advance(fn.FreezeAfter)
			c, _, err := e.pool.AcquireUnthawed(context.Background(), fn)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.pool.RemoveFunction(context.Background(), "a"); err != nil {
				t.Fatal(err)
			}
			e.pool.Release(c)
			tr.want(t, "a.", "creating starting ready busy ready frozen thawing stopping gone")
		}},
		{"discarded while busy", nil, func(t *testing.T, e *env, tr *tracer) {
			c, _, err := e.pool.Acquire(context.Background(), newFn("a"))
			if err != nil {
				t.Fatal(err)
			}
			e.pool.Discard(c)
			e.pool.Settle()
			tr.want(t, "a.", "creating starting ready busy failed gone")
		}},
		{"crashed while ready", nil, func(t *testing.T, e *env, tr *tracer) {
			e.mustCall(newFn("a"), pool.StartCold)
			e.driver.Crash(e.pool.Containers("a")[0].ID)
			eventually(t, func() bool { return e.pool.Stats().Failures == 1 })
			e.pool.Settle()
			tr.want(t, "a.", "creating starting ready busy ready failed gone")
		}},
		{"new revision: idle stopped, busy retired", nil, func(t *testing.T, e *env, tr *tracer) {
			fn := newFn("a")
			busy, _, err := e.pool.Acquire(context.Background(), fn)
			if err != nil {
				t.Fatal(err)
			}
			e.mustCall(fn, pool.StartCold)
			r2 := *fn
			r2.Revision = "r2"
			e.pool.Configure(&r2)
			e.pool.Release(busy)
			e.pool.Settle()
			tr.want(t, "a.",
				"creating starting ready busy stopping gone",
				"creating starting ready busy ready stopping gone")
		}},
		{"evicted under memory pressure", []pool.Option{pool.WithMemoryBudget(128 << 20)}, func(t *testing.T, e *env, tr *tracer) {
			a, b := newFn("a"), newFn("b")
			e.mustCall(a, pool.StartCold)
			e.clock.Advance(a.FreezeAfter)
			e.mustCall(b, pool.StartCold)
			e.pool.Settle()
			tr.want(t, "a.", "creating starting ready busy ready frozen stopping gone")
			tr.want(t, "b.", "creating starting ready busy ready")
		}},
		{"stem cell specialised", []pool.Option{stems}, func(t *testing.T, e *env, tr *tracer) {
			e.pool.Settle()
			e.mustCall(newFn("a"), pool.StartStem)
			e.pool.Settle()
			tr.want(t, "stem.", "creating starting frozen specializing ready busy ready", "creating starting frozen")
		}},
		{"stem cell specialisation fails", []pool.Option{stems}, func(t *testing.T, e *env, tr *tracer) {
			e.pool.Settle()
			e.driver.SetHook(func(op, id string) error {
				if op == "update" {
					return fail
				}
				return nil
			})
			if _, _, err := e.call(newFn("a"), "x"); !errors.Is(err, pool.ErrExecutorFailed) {
				t.Errorf("err = %v", err)
			}
			e.driver.SetHook(nil)
			e.pool.Settle()
			tr.want(t, "stem.", "creating starting frozen specializing failed gone", "creating starting frozen")
		}},
		{"stem cell no longer wanted", []pool.Option{stems}, func(t *testing.T, e *env, tr *tracer) {
			e.pool.Settle()
			g := newGate()
			e.driver.SetHook(func(op, id string) error {
				if op == "update" {
					g.wait(id)
				}
				return nil
			})
			errc := make(chan error, 1)
			go func() { _, _, err := e.call(newFn("a"), "x"); errc <- err }()
			<-g.entered
			if err := e.pool.RemoveFunction(context.Background(), "a"); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; !errors.Is(err, pool.ErrClosed) {
				t.Errorf("err = %v, want ErrClosed", err)
			}
			close(g.open)
			e.pool.Settle()
			e.driver.SetHook(nil)
			tr.want(t, "stem.", "creating starting frozen specializing stopping gone", "creating starting frozen")
		}},
		{"started, no longer wanted", nil, func(t *testing.T, e *env, tr *tracer) {
			g := newGate()
			e.driver.SetHook(func(op, id string) error {
				if op == "dial" {
					g.wait(id)
				}
				return nil
			})
			errc := make(chan error, 1)
			go func() { _, _, err := e.call(newFn("a"), "x"); errc <- err }()
			<-g.entered
			if err := e.pool.RemoveFunction(context.Background(), "a"); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; !errors.Is(err, pool.ErrClosed) {
				t.Errorf("err = %v, want ErrClosed", err)
			}
			close(g.open)
			e.pool.Settle()
			e.driver.SetHook(nil)
			tr.want(t, "a.", "creating starting stopping gone")
		}},
	}

	seen := make(map[[2]pool.State]bool)
	ran := 0
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			ran++
			tr := newTracer()
			t.Cleanup(func() { // after the pool's Close
				tr.mu.Lock()
				defer tr.mu.Unlock()
				for m := range tr.moves {
					seen[m] = true
				}
			})
			e := newEnv(t, append([]pool.Option{pool.WithTransitionHook(tr.record)}, sc.opts...)...)
			sc.run(t, e, tr)
		})
	}
	if ran < len(scenarios) {
		return // some were not asked for (-run)
	}
	for _, m := range pool.Transitions() {
		if !seen[m] {
			t.Errorf("no scenario moves a container from %v to %v", m[0], m[1])
		}
	}
}
