package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

func echo(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	switch string(req.Body) {
	case "panic":
		panic("boom")
	case "fail":
		return nil, errors.New("failed on purpose")
	case "block":
		<-ctx.Done()
		return &sdk.Response{Body: []byte("cancelled")}, nil
	}
	return &sdk.Response{Status: 201, Header: http.Header{"X-Echo": {"1"}}, Body: append([]byte("echo:"), req.Body...)}, nil
}

type env struct {
	t      *testing.T
	pool   *pool.Pool
	driver *fake.Driver
	clock  *fake.Clock
	seq    int
	mu     sync.Mutex
}

func newEnv(t *testing.T, opts ...pool.Option) *env {
	t.Helper()
	return newEnvWith(t, fake.New(echo), opts...)
}

// newEnvWith is newEnv on the driver d.
func newEnvWith(t *testing.T, d *fake.Driver, opts ...pool.Option) *env {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, driver: d, clock: fake.NewClock()}
	p, err := pool.New(e.driver, dir, append([]pool.Option{pool.WithClock(e.clock)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.pool = p
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Error(err)
		}
		if ids, _ := e.driver.List(context.Background()); len(ids) != 0 {
			t.Errorf("containers left after Close: %v", ids)
		}
	})
	return e
}

func newFn(name string) *pool.Function {
	return &pool.Function{Name: name, Revision: "r1", Runtime: "go", Code: "/proc/self/exe",
		MemoryBytes: 128 << 20, MaxContainers: 10, Concurrency: 1, FreezeAfter: 50 * time.Millisecond, IdleTimeout: 10 * time.Minute}
}

func (e *env) id() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	return fmt.Sprint("call-", e.seq)
}

// call acquires a container, invokes body and releases it.
func (e *env) call(fn *pool.Function, body string) (pool.StartKind, *pb.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, kind, err := e.pool.Acquire(ctx, fn)
	if err != nil {
		return kind, nil, err
	}
	defer e.pool.Release(c)
	res, err := c.Invoke(ctx, &pb.Invoke{CallId: e.id(), Body: []byte(body)})
	if err == nil && res.Error != "" && body != "panic" && body != "fail" {
		err = errors.New(res.Error)
	}
	return kind, res, err
}

func (e *env) mustCall(fn *pool.Function, want pool.StartKind) {
	e.t.Helper()
	kind, _, err := e.call(fn, "x")
	if err != nil {
		e.t.Fatal(err)
	}
	if kind != want {
		e.t.Fatalf("start = %v, want %v", kind, want)
	}
}

func (e *env) states(fn string) map[pool.State]int {
	return e.pool.Stats().Containers[fn]
}

func TestColdThenWarm(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	kind, res, err := e.call(fn, "a")
	if err != nil {
		t.Fatal(err)
	}
	if kind != pool.StartCold {
		t.Errorf("first call start = %v, want cold", kind)
	}
	if string(res.Body) != "echo:a" || res.Status != 201 || len(res.Headers) != 1 {
		t.Errorf("result = %v", res)
	}
	e.mustCall(fn, pool.StartWarm)
	if e.driver.Starts() != 1 {
		t.Errorf("starts = %d, want 1", e.driver.Starts())
	}
	if got := e.states("echo"); got[pool.StateReady] != 1 {
		t.Errorf("states = %v, want one ready", got)
	}
}

func TestHandlerErrorsKeepContainer(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	_, res, err := e.call(fn, "panic")
	if err != nil || res.Status != 500 || !strings.Contains(res.Error, "boom") {
		t.Fatalf("panic: %v %v", res, err)
	}
	_, res, err = e.call(fn, "fail")
	if err != nil || res.Status != 500 || res.Error != "failed on purpose" {
		t.Fatalf("fail: %v %v", res, err)
	}
	e.mustCall(fn, pool.StartWarm)
}

func TestFreezeAfterIdleAndThaw(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	e.clock.Advance(49 * time.Millisecond)
	if got := e.states("echo"); got[pool.StateReady] != 1 {
		t.Fatalf("before freeze_after: %v", got)
	}
	e.clock.Advance(time.Millisecond)
	if got := e.states("echo"); got[pool.StateFrozen] != 1 {
		t.Fatalf("after freeze_after: %v, want frozen", got)
	}
	id := e.pool.Containers("echo")[0].ID
	if frozen, _ := e.driver.Frozen(id); !frozen {
		t.Fatal("driver was not asked to freeze")
	}
	// The fake handler fails when it runs frozen: a thaw must come first.
	e.mustCall(fn, pool.StartThawed)
	if frozen, _ := e.driver.Frozen(id); frozen {
		t.Fatal("container still frozen after the call")
	}
	e.mustCall(fn, pool.StartWarm)
	if s := e.pool.Stats(); s.Thaws != 1 || s.Freezes != 1 {
		t.Errorf("thaws=%d freezes=%d, want 1 and 1", s.Thaws, s.Freezes)
	}
}

func TestFreezeAfterZeroAndNegative(t *testing.T) {
	e := newEnv(t)
	now := newFn("now")
	now.FreezeAfter = 0
	never := newFn("never")
	never.FreezeAfter = -1
	e.mustCall(now, pool.StartCold)
	e.mustCall(never, pool.StartCold)
	e.clock.Advance(0)
	if got := e.states("now"); got[pool.StateFrozen] != 1 {
		t.Errorf("freeze_after 0: %v", got)
	}
	e.clock.Advance(9 * time.Minute)
	if got := e.states("never"); got[pool.StateReady] != 1 {
		t.Errorf("freeze_after negative: %v", got)
	}
}

func TestIdleTimeoutStopsButKeepsMinWarm(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	e.clock.Advance(time.Second)
	e.clock.Advance(10 * time.Minute)
	e.pool.Settle()
	if got := e.states("echo"); len(got) != 0 {
		t.Fatalf("after idle_timeout: %v, want none", got)
	}
	if ids, _ := e.driver.List(context.Background()); len(ids) != 0 {
		t.Fatalf("driver still has %v", ids)
	}

	warm := newFn("warm")
	warm.MinWarm = 1
	e.pool.Configure(warm)
	e.pool.Settle()
	e.mustCall(warm, pool.StartThawed)
	e.clock.Advance(time.Second)
	e.clock.Advance(time.Hour)
	e.pool.Settle()
	if got := e.states("warm"); got[pool.StateFrozen] != 1 {
		t.Fatalf("min_warm container stopped by idle timeout: %v", got)
	}
}

func TestPreforkMinWarm(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	fn.MinWarm = 2
	e.pool.Configure(fn)
	e.pool.Settle()
	if got := e.states("echo"); got[pool.StateFrozen] != 2 {
		t.Fatalf("after Configure: %v, want 2 frozen", got)
	}
	for _, c := range e.pool.Containers("echo") {
		if frozen, _ := e.driver.Frozen(c.ID); !frozen {
			t.Errorf("%s is not frozen in the driver", c.ID)
		}
	}
	e.mustCall(fn, pool.StartThawed)
	// Raising min_warm keeps the containers and starts one more.
	more := *fn
	more.MinWarm = 3
	e.pool.Configure(&more)
	e.pool.Settle()
	if got := e.states("echo"); got[pool.StateFrozen]+got[pool.StateReady] != 3 {
		t.Fatalf("after min_warm 3: %v", got)
	}
	if e.driver.Starts() != 3 {
		t.Errorf("starts = %d, want 3", e.driver.Starts())
	}
}

func TestFailedContainerIsReplacedToMinWarm(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	fn.MinWarm = 1
	e.pool.Configure(fn)
	e.pool.Settle()
	id := e.pool.Containers("echo")[0].ID
	e.driver.Crash(id)
	eventually(t, func() bool { return e.pool.Stats().Failures == 1 })
	e.pool.Settle()
	cs := e.pool.Containers("echo")
	if len(cs) != 1 || cs[0].ID == id {
		t.Fatalf("after crash: %v, want one new container", cs)
	}
	if e.pool.Stats().Failures != 1 {
		t.Errorf("failures = %d", e.pool.Stats().Failures)
	}
}

func TestCrashDuringCallGivesExecutorFailed(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	ctx := context.Background()
	c, _, err := e.pool.Acquire(ctx, fn)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Invoke(ctx, &pb.Invoke{CallId: "blocked", Body: []byte("block")})
		errc <- err
	}()
	// Crash once the call is in flight: the handler blocks until then.
	for c.Done() == nil {
		t.Fatal("no session")
	}
	e.driver.Crash(c.ID())
	if err := <-errc; !errors.Is(err, pool.ErrExecutorFailed) {
		t.Fatalf("err = %v, want ErrExecutorFailed", err)
	}
	e.pool.Release(c)
	e.mustCall(fn, pool.StartCold)
}

// A call that finds its container's executor gone, even before its Invoke
// is sent, must not leave that container to be handed out again.
func TestCrashBeforeSendIsNotReused(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	ctx := context.Background()
	for i := range 10 {
		c, _, err := e.pool.Acquire(ctx, fn)
		if err != nil {
			t.Fatal(err)
		}
		e.driver.Crash(c.ID())
		if _, err := c.Invoke(ctx, &pb.Invoke{CallId: fmt.Sprint("after-crash-", i), Body: []byte("x")}); !errors.Is(err, pool.ErrExecutorFailed) {
			t.Fatalf("round %d: err = %v, want ErrExecutorFailed", i, err)
		}
		e.pool.Release(c)
		e.mustCall(fn, pool.StartCold)
		e.pool.Settle()
	}
}

func TestDiscardReplaces(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	c, _, err := e.pool.Acquire(context.Background(), fn)
	if err != nil {
		t.Fatal(err)
	}
	e.pool.Discard(c)
	e.pool.Settle()
	if ids, _ := e.driver.List(context.Background()); len(ids) != 0 {
		t.Fatalf("discarded container still exists: %v", ids)
	}
	e.mustCall(fn, pool.StartCold)
}

func TestCancelReachesHandler(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	c, _, err := e.pool.Acquire(context.Background(), fn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Invoke(ctx, &pb.Invoke{CallId: "slow", Body: []byte("block")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	e.pool.Release(c)
	e.mustCall(fn, pool.StartWarm)
}

// holdAll acquires n containers of fn concurrently and returns them once
// all are held, with their start kinds and errors.
func (e *env) acquireN(ctx context.Context, fn *pool.Function, n int) ([]*pool.Container, []error) {
	cs := make([]*pool.Container, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs[i], _, errs[i] = e.pool.Acquire(ctx, fn)
		}()
	}
	wg.Wait()
	return cs, errs
}

func TestScaleUpToMaxThenQueue(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	fn.MaxContainers = 2
	ctx := context.Background()
	held, errs := e.acquireN(ctx, fn, 2)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if held[0] == held[1] {
		t.Fatal("two calls with concurrency 1 share a container")
	}
	// A third call waits for a release: it gets a warm container.
	got := make(chan pool.StartKind, 1)
	go func() {
		c, kind, err := e.pool.Acquire(ctx, fn)
		if err != nil {
			t.Error(err)
		}
		got <- kind
		e.pool.Release(c)
	}()
	eventually(t, func() bool { return e.pool.Stats().Waiting["echo"] == 1 })
	e.pool.Release(held[0])
	if kind := <-got; kind != pool.StartWarm {
		t.Errorf("queued call start = %v, want warm", kind)
	}
	e.pool.Release(held[1])
	if e.driver.Starts() != 2 {
		t.Errorf("starts = %d, want 2", e.driver.Starts())
	}
}

func TestQueueFullAndQueueTimeout(t *testing.T) {
	e := newEnv(t, pool.WithQueueDepth(2))
	fn := newFn("echo")
	fn.MaxContainers = 1
	ctx := context.Background()
	c, _, err := e.pool.Acquire(ctx, fn)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	_, errs := e.acquireN(short, fn, 3)
	var full, timedOut int
	for _, err := range errs {
		switch {
		case errors.Is(err, pool.ErrQueueFull):
			full++
		case errors.Is(err, pool.ErrQueueTimeout):
			timedOut++
		default:
			t.Errorf("unexpected: %v", err)
		}
	}
	if full != 1 || timedOut != 2 {
		t.Errorf("full=%d timed out=%d, want 1 and 2", full, timedOut)
	}
	if w := e.pool.Stats().Waiting["echo"]; w != 0 {
		t.Errorf("waiters left: %d", w)
	}
	e.pool.Release(c)
	e.mustCall(fn, pool.StartWarm)
}

func TestConcurrencyShareContainer(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	fn.Concurrency = 4
	held, errs := e.acquireN(context.Background(), fn, 4)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range held {
		e.pool.Release(c)
	}
	if e.driver.Starts() != 1 {
		t.Errorf("starts = %d, want 1 for 4 calls with concurrency 4", e.driver.Starts())
	}
}

func TestMemoryBudgetEvictsLRUFrozen(t *testing.T) {
	e := newEnv(t, pool.WithMemoryBudget(2*128<<20))
	a, b, c := newFn("a"), newFn("b"), newFn("c")
	e.mustCall(a, pool.StartCold)
	e.clock.Advance(time.Second) // a frozen, least recently used
	e.mustCall(b, pool.StartCold)
	e.clock.Advance(time.Second) // b frozen
	e.mustCall(c, pool.StartCold)
	e.pool.Settle()
	if got := e.states("a"); len(got) != 0 {
		t.Errorf("a not evicted: %v", got)
	}
	if got := e.states("b"); got[pool.StateFrozen] != 1 {
		t.Errorf("b: %v, want still frozen", got)
	}
	if s := e.pool.Stats(); s.Evictions != 1 || s.MemoryUsedBytes != 2*128<<20 {
		t.Errorf("evictions=%d used=%d", s.Evictions, s.MemoryUsedBytes)
	}
}

func TestNoCapacity(t *testing.T) {
	e := newEnv(t, pool.WithMemoryBudget(128<<20))
	a, b := newFn("a"), newFn("b")
	held, _, err := e.pool.Acquire(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing frozen to evict and b has nothing to wait for.
	if _, _, err := e.pool.Acquire(context.Background(), b); !errors.Is(err, pool.ErrNoCapacity) {
		t.Fatalf("err = %v, want ErrNoCapacity", err)
	}
	e.pool.Release(held)
}

func TestStemCell(t *testing.T) {
	e := newEnv(t, pool.WithStemCells(pool.StemSpec{Runtime: "go", RootFS: "/nonexistent", Args: []string{"/kiln-executor"}, Count: 1, MemoryBytes: 64 << 20}))
	e.pool.Settle()
	if got := e.pool.Stats().Containers[""]; got[pool.StateFrozen] != 1 {
		t.Fatalf("stem cells: %v, want 1 frozen", got)
	}
	fn := newFn("echo")
	fn.MemoryBytes = 256 << 20
	kind, res, err := e.call(fn, "hi")
	if err != nil {
		t.Fatal(err)
	}
	if kind != pool.StartStem || string(res.Body) != "echo:hi" {
		t.Fatalf("kind=%v res=%v", kind, res)
	}
	id := e.pool.Containers("echo")[0].ID
	if !strings.HasPrefix(id, "stem.go.") {
		t.Errorf("container %s is not the stem cell", id)
	}
	if got := e.driver.Memory(id); got != 256<<20 {
		t.Errorf("memory limit after specialisation = %d", got)
	}
	e.mustCall(fn, pool.StartWarm)
	e.pool.Settle()
	if got := e.pool.Stats().Containers[""]; got[pool.StateFrozen] != 1 {
		t.Errorf("stem cells not refilled: %v", got)
	}
	if s := e.pool.Stats(); s.Specializations != 1 {
		t.Errorf("specializations = %d", s.Specializations)
	}
	// A function without code for stem cells gets a cold start.
	other := newFn("other")
	other.Code = ""
	e.mustCall(other, pool.StartCold)
}

func TestNewRevisionReplacesContainers(t *testing.T) {
	e := newEnv(t)
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	busy, _, err := e.pool.Acquire(context.Background(), fn)
	if err != nil {
		t.Fatal(err)
	}
	r2 := *fn
	r2.Revision = "r2"
	e.pool.Configure(&r2)
	e.pool.Settle()
	if n := len(e.pool.Containers("echo")); n != 1 {
		t.Fatalf("containers after new revision = %d, want only the busy one", n)
	}
	e.mustCall(&r2, pool.StartCold)
	e.pool.Release(busy)
	e.pool.Settle()
	for _, c := range e.pool.Containers("echo") {
		if c.ID == busy.ID() {
			t.Error("old revision container kept after release")
		}
	}
	// New settings without a new revision keep the containers.
	r2b := r2
	r2b.Concurrency = 2
	e.pool.Configure(&r2b)
	e.mustCall(&r2b, pool.StartWarm)
}

func TestStartFailureFailsWaiters(t *testing.T) {
	e := newEnv(t, pool.WithStartTimeout(100*time.Millisecond))
	e.driver.NoDial = true
	_, _, err := e.call(newFn("echo"), "x")
	if !errors.Is(err, pool.ErrExecutorFailed) || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("err = %v", err)
	}
	e.pool.Settle()
	if ids, _ := e.driver.List(context.Background()); len(ids) != 0 {
		t.Errorf("containers left after failed start: %v", ids)
	}
	e.driver.NoDial = false
	e.driver.FailStart = errors.New("no runtime")
	if _, _, err := e.call(newFn("echo"), "x"); err == nil || !strings.Contains(err.Error(), "no runtime") {
		t.Fatalf("err = %v", err)
	}
}

func TestRemoveAllAndRemoveFunction(t *testing.T) {
	e := newEnv(t)
	e.driver.Adopt("old.000000000000")
	n, err := pool.RemoveAll(context.Background(), e.driver)
	if err != nil || n != 1 {
		t.Fatalf("RemoveAll = %d, %v; want 1", n, err)
	}
	fn := newFn("echo")
	e.mustCall(fn, pool.StartCold)
	if ids, _ := e.driver.List(context.Background()); len(ids) != 1 {
		t.Fatalf("containers = %v, want only the live one", ids)
	}
	if err := e.pool.RemoveFunction(context.Background(), "echo"); err != nil {
		t.Fatal(err)
	}
	if ids, _ := e.driver.List(context.Background()); len(ids) != 0 {
		t.Fatalf("containers after RemoveFunction = %v", ids)
	}
}

func TestClosedPoolRefuses(t *testing.T) {
	e := newEnv(t)
	if err := e.pool.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.pool.Acquire(context.Background(), newFn("echo")); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestTailBuffer(t *testing.T) {
	b := pool.NewTailBuffer(10)
	b.Write([]byte("0123456789abc"))
	if got := string(b.Bytes()); got != "3456789abc" {
		t.Errorf("Bytes = %q", got)
	}
	b = pool.NewTailBuffer(100)
	b.Write([]byte("one\ntwo\nthree\n"))
	if got := b.Tail(2); got != "two\nthree" {
		t.Errorf("Tail(2) = %q", got)
	}
}

// eventually waits for cond, which another goroutine makes true, for up to
// five seconds.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestManyPreforksAndRetryAfterFailure(t *testing.T) {
	e := newEnv(t)
	fn := newFn("many")
	fn.MinWarm = 3 * pool.MaxParallelOps
	fn.MaxContainers = fn.MinWarm
	e.pool.Configure(fn)
	e.pool.Settle()
	if got := e.states("many"); got[pool.StateFrozen] != fn.MinWarm {
		t.Fatalf("after min_warm %d: %v", fn.MinWarm, got)
	}

	e.driver.FailStart = errors.New("runtime busy")
	other := newFn("other")
	other.MinWarm = 1
	e.pool.Configure(other)
	e.pool.Settle()
	if got := e.states("other"); len(got) != 0 {
		t.Fatalf("containers despite failing starts: %v", got)
	}
	e.driver.FailStart = nil
	e.clock.Advance(time.Second)
	e.pool.Settle()
	if got := e.states("other"); got[pool.StateFrozen] != 1 {
		t.Fatalf("min_warm not retried after a failed start: %v", got)
	}
}

// TestRuntimeUnavailable: while the driver cannot reach its runtime, a call
// that needs a new container fails at once with ErrUnavailable (not as an
// executor failure), warm and frozen containers keep serving, stem cells
// still specialise, and once the runtime is back the stem cells are
// refilled and new containers start.
func TestRuntimeUnavailable(t *testing.T) {
	e := newEnv(t, pool.WithStemCells(pool.StemSpec{Runtime: "go", RootFS: "/nonexistent", Args: []string{"/kiln-executor"}, Count: 1}))
	warm := newFn("warm")
	warm.Code = ""
	e.mustCall(warm, pool.StartCold)
	e.pool.Settle()

	e.driver.FailStart = fmt.Errorf("containerd does not answer: %w", pool.ErrUnavailable)
	cold := newFn("cold")
	cold.Code = ""
	_, _, err := e.call(cold, "x")
	if !errors.Is(err, pool.ErrUnavailable) || errors.Is(err, pool.ErrExecutorFailed) {
		t.Fatalf("new container while unavailable: err = %v, want ErrUnavailable only", err)
	}
	e.mustCall(warm, pool.StartWarm)
	e.clock.Advance(warm.FreezeAfter)
	e.mustCall(warm, pool.StartThawed)
	e.mustCall(newFn("stem"), pool.StartStem)
	e.pool.Settle()
	if got := e.pool.Stats().Containers[""]; got[pool.StateFrozen] != 0 {
		t.Fatalf("stem cells while unavailable: %v, want none", got)
	}

	e.driver.FailStart = nil
	e.clock.Advance(time.Second)
	e.pool.Settle()
	if got := e.pool.Stats().Containers[""]; got[pool.StateFrozen] != 1 {
		t.Errorf("stem cells not refilled after the runtime came back: %v", got)
	}
	e.mustCall(cold, pool.StartCold)
}
