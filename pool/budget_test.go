package pool_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kilnfx/kiln/pool"
)

const (
	mib    = int64(1 << 20)
	limit  = 128 * mib // newFn's memory limit
	use    = 4 * mib   // what the fake's containers hold
	margin = 1 * mib
	frozen = use + margin // a frozen container's charge
)

// newChargeEnv is a pool with the given budget that charges frozen
// containers their use plus margin, on a fake driver whose containers hold
// use bytes.
func newChargeEnv(t *testing.T, budget int64, opts ...pool.Option) *env {
	t.Helper()
	e := newEnv(t, append([]pool.Option{pool.WithMemoryBudget(budget), pool.WithFrozenCharge(margin)}, opts...)...)
	e.driver.SetMemoryUse(use)
	return e
}

// coldThenFrozen makes one container of fn and lets it freeze.
func (e *env) coldThenFrozen(fn *pool.Function) string {
	e.t.Helper()
	e.mustCall(fn, pool.StartCold)
	e.clock.Advance(time.Second)
	cs := e.pool.Containers(fn.Name)
	if len(cs) != 1 || cs[0].State != pool.StateFrozen {
		e.t.Fatalf("%s: containers %+v, want one frozen", fn.Name, cs)
	}
	return cs[0].ID
}

func (e *env) used() int64 { return e.pool.Stats().MemoryUsedBytes }

func TestFrozenChargedByUse(t *testing.T) {
	// Three limits' worth of budget holds ten frozen containers.
	e := newChargeEnv(t, 3*limit)
	for _, name := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		e.coldThenFrozen(newFn(name))
	}
	s := e.pool.Stats()
	if s.Evictions != 0 || s.MemoryUsedBytes != 10*frozen {
		t.Errorf("evictions=%d used=%d, want 0 and %d", s.Evictions, s.MemoryUsedBytes, 10*frozen)
	}
}

func TestFrozenChargeOffByDefault(t *testing.T) {
	e := newEnv(t, pool.WithMemoryBudget(3*limit))
	e.driver.SetMemoryUse(use)
	e.mustCall(newFn("a"), pool.StartCold)
	e.clock.Advance(time.Second)
	if got := e.used(); got != limit {
		t.Errorf("used = %d, want the limit %d", got, limit)
	}
}

func TestFrozenChargeUsesAtMostTheLimit(t *testing.T) {
	e := newChargeEnv(t, 3*limit)
	e.driver.SetMemoryUse(limit) // uses all of it: the margin must not add
	e.coldThenFrozen(newFn("a"))
	if got := e.used(); got != limit {
		t.Errorf("used = %d, want %d", got, limit)
	}
}

func TestThawRechargesTheLimit(t *testing.T) {
	e := newChargeEnv(t, 3*limit)
	a := newFn("a")
	e.coldThenFrozen(a)
	c, kind, err := e.pool.Acquire(context.Background(), a)
	if err != nil || kind != pool.StartThawed {
		t.Fatalf("kind=%v err=%v, want thawed", kind, err)
	}
	if got := e.used(); got != limit {
		t.Errorf("used while thawed = %d, want the limit %d", got, limit)
	}
	e.pool.Release(c)
	e.clock.Advance(time.Second)
	if got := e.used(); got != frozen {
		t.Errorf("used once frozen again = %d, want %d", got, frozen)
	}
}

func TestThawUnderPressureEvictsLRUFrozen(t *testing.T) {
	e := newChargeEnv(t, 2*limit)
	a, b, c := newFn("a"), newFn("b"), newFn("c")
	e.coldThenFrozen(b) // least recently used
	e.coldThenFrozen(a)
	held, _, err := e.pool.Acquire(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer e.pool.Release(held)
	// a needs its limit back: the budget holds c and a only once b goes.
	e.mustCall(a, pool.StartThawed)
	e.pool.Settle()
	if got := e.states("b"); len(got) != 0 {
		t.Errorf("b not evicted: %v", got)
	}
	if s := e.pool.Stats(); s.Evictions != 1 || s.RefusedThaws != 0 || s.MemoryUsedBytes != 2*limit {
		t.Errorf("evictions=%d refused=%d used=%d, want 1, 0, %d", s.Evictions, s.RefusedThaws, s.MemoryUsedBytes, 2*limit)
	}
}

func TestThawRefusedWhenBudgetFull(t *testing.T) {
	e := newChargeEnv(t, 2*limit+frozen)
	a, c, d := newFn("a"), newFn("c"), newFn("d")
	id := e.coldThenFrozen(a)
	hc, _, err := e.pool.Acquire(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	hd, _, err := e.pool.Acquire(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing else frozen to evict: a stays frozen and the call fails at
	// once, not overcommitting.
	if _, _, err := e.pool.Acquire(context.Background(), a); !errors.Is(err, pool.ErrNoCapacity) {
		t.Fatalf("err = %v, want ErrNoCapacity", err)
	}
	if f, ok := e.driver.Frozen(id); !f || !ok {
		t.Errorf("a's container: frozen=%v exists=%v, want still frozen", f, ok)
	}
	if got := e.states("a"); got[pool.StateFrozen] != 1 {
		t.Errorf("a: %v, want one frozen", got)
	}
	if s := e.pool.Stats(); s.RefusedThaws != 1 || s.Evictions != 0 || s.MemoryUsedBytes != 2*limit+frozen {
		t.Errorf("refused=%d evictions=%d used=%d", s.RefusedThaws, s.Evictions, s.MemoryUsedBytes)
	}
	// c goes idle and freezes: its limit is free again, and a thaws.
	e.pool.Release(hc)
	e.clock.Advance(time.Second)
	e.mustCall(a, pool.StartThawed)
	if got := e.used(); got > 2*limit+frozen {
		t.Errorf("used = %d over the budget %d", got, 2*limit+frozen)
	}
	e.pool.Release(hd)
}

func TestThawUnderPressureWaitsForRunning(t *testing.T) {
	// a has a busy container and a frozen one the budget cannot thaw: the
	// call waits for the busy one instead of failing.
	e := newChargeEnv(t, 2*limit+frozen)
	a, c := newFn("a"), newFn("c")
	e.coldThenFrozen(a)
	busy, kind, err := e.pool.Acquire(context.Background(), a)
	if err != nil || kind != pool.StartThawed {
		t.Fatalf("kind=%v err=%v", kind, err)
	}
	second, kind, err := e.pool.Acquire(context.Background(), a)
	if err != nil || kind != pool.StartCold {
		t.Fatalf("kind=%v err=%v, want a second, cold container", kind, err)
	}
	e.pool.Release(second)
	e.clock.Advance(time.Second) // second freezes; busy stays busy
	held, _, err := e.pool.Acquire(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer e.pool.Release(held)
	if got := e.used(); got != 2*limit+frozen {
		t.Fatalf("used = %d, want %d", got, 2*limit+frozen)
	}
	got := make(chan error, 1)
	go func() {
		kind, _, err := e.call(a, "x")
		if err == nil && kind != pool.StartWarm {
			err = errors.New("start " + kind.String() + ", want warm")
		}
		got <- err
	}()
	waitFor(t, func() bool { return e.pool.Stats().Waiting["a"] == 1 })
	e.pool.Release(busy)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if s := e.pool.Stats(); s.MemoryUsedBytes > 2*limit+frozen || s.RefusedThaws == 0 || s.Evictions != 0 {
		t.Errorf("used=%d refused=%d evictions=%d", s.MemoryUsedBytes, s.RefusedThaws, s.Evictions)
	}
}

func TestGivenBackUnthawedIsChargedItsUseAgain(t *testing.T) {
	e := newChargeEnv(t, 3*limit)
	a := newFn("a")
	e.coldThenFrozen(a)
	c, kind, err := e.pool.AcquireUnthawed(context.Background(), a)
	if err != nil || kind != pool.StartThawed {
		t.Fatalf("kind=%v err=%v", kind, err)
	}
	if got := e.used(); got != limit {
		t.Errorf("used once granted = %d, want %d", got, limit)
	}
	e.pool.Release(c)
	if got := e.used(); got != frozen {
		t.Errorf("used once given back = %d, want %d", got, frozen)
	}
}

func TestStemCellChargedByUse(t *testing.T) {
	e := newChargeEnv(t, 3*limit, pool.WithStemCells(pool.StemSpec{Runtime: "go", RootFS: "/nonexistent", Args: []string{"/kiln-executor"}, Count: 1, MemoryBytes: 64 * mib}))
	e.pool.Settle()
	if got := e.used(); got != frozen {
		t.Fatalf("used with one frozen stem cell = %d, want %d", got, frozen)
	}
	fn := newFn("echo")
	c, kind, err := e.pool.Acquire(context.Background(), fn)
	if err != nil || kind != pool.StartStem {
		t.Fatalf("kind=%v err=%v", kind, err)
	}
	e.pool.Settle() // the refill starts a new stem cell
	if got := e.used(); got != limit+frozen {
		t.Errorf("used = %d, want the function's limit plus a frozen stem cell, %d", got, limit+frozen)
	}
	e.pool.Release(c)
}

func TestLeavingFrozenUnpaidIsRefused(t *testing.T) {
	e := newChargeEnv(t, 3*limit)
	id := e.coldThenFrozen(newFn("a"))
	c := e.pool.Container(id)
	defer pool.SetPanicOnIllegal(pool.SetPanicOnIllegal(false))
	if e.pool.SetState(c, pool.StateReady) {
		t.Fatal("frozen → ready allowed while charged less than the limit")
	}
	if got := e.pool.StateOf(c); got != pool.StateFrozen {
		t.Errorf("state = %v, want frozen", got)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 5s")
}

// A stem cell the budget could not hold is started once memory frees: here
// when the function that took the last stem cell is removed.
func TestStemCellRefilledWhenMemoryFrees(t *testing.T) {
	e := newEnv(t, pool.WithMemoryBudget(128<<20),
		pool.WithStemCells(pool.StemSpec{Runtime: "go", RootFS: "/nonexistent", Args: []string{"/kiln-executor"}, Count: 1, MemoryBytes: 64 << 20}))
	e.pool.Settle()
	e.mustCall(newFn("a"), pool.StartStem)
	e.pool.Settle()
	if got := e.pool.Stats().Containers[""]; got[pool.StateFrozen] != 0 {
		t.Fatalf("stem cells with a's 128 MiB in a 128 MiB budget: %v, want none", got)
	}
	if err := e.pool.RemoveFunction(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	e.pool.Settle()
	if got := e.pool.Stats().Containers[""]; got[pool.StateFrozen] != 1 {
		t.Fatalf("stem cells once a is gone: %v, want 1 frozen", got)
	}
}
