// Package pool keeps function containers ready for calls.
//
// A Pool owns every container of the node. For each function it keeps a set
// of containers started through a Driver: idle ones are reused last in,
// first out, freeze after freeze_after and stop after idle_timeout; min_warm
// of them are pre-forked (started, taken through the Ready handshake, and
// frozen) so that no call waits for a container to be built. Generic stem
// cells, frozen with the executor running and no function loaded, become any
// function's container when it has none. A call that finds no free container
// starts one while below max_containers and the node's memory budget, and
// waits in a bounded per-function queue otherwise.
//
// The agent's side of the executor protocol lives here too: the Pool listens
// on a socket in each container's own directory, and the executor's dial and
// Ready message are what make a container ready. No containerd call is made
// on the path of a warm or thawed call: thawing writes the cgroup freezer.
package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/kilnfx/kiln/proto/executorpb"
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

// Function describes what a function's containers run and how many of them
// to keep. A Function value is immutable once passed to the Pool; new
// settings come as a new value.
type Function struct {
	// Name is the function's name.
	Name string
	// Revision identifies everything that needs a new container when it
	// changes (code, memory, CPU, environment). Containers of another
	// revision are stopped, not reused.
	Revision string
	// Runtime names the language runtime; stem cells of the same runtime
	// can become this function's containers.
	Runtime string
	// RootFS, Args and Env are as in ContainerSpec.
	RootFS string
	Args   []string
	Env    []string
	// Code is the host path of the function's executable, which a stem cell
	// loads; empty means stem cells cannot serve the function.
	Code string
	// MemoryBytes and CPUMillis are the container's limits.
	MemoryBytes int64
	CPUMillis   int64
	// MinWarm containers are kept started (frozen when idle).
	MinWarm int
	// MaxContainers bounds the function's containers (default 10).
	MaxContainers int
	// Concurrency is the number of calls a container runs at once
	// (default 1).
	Concurrency int
	// FreezeAfter is the idle time before a container is frozen: 0 freezes
	// at once, negative never.
	FreezeAfter time.Duration
	// IdleTimeout is the idle time before a container is stopped (never
	// below MinWarm); 0 means never.
	IdleTimeout time.Duration
}

func (f *Function) maxContainers() int { return max(f.MaxContainers, 1) }
func (f *Function) concurrency() int   { return max(f.Concurrency, 1) }

// StemSpec describes the stem cells of one runtime.
type StemSpec struct {
	// Runtime is the runtime the stem cells serve ("go").
	Runtime string
	// RootFS and Args start the generic executor.
	RootFS string
	Args   []string
	// Count stem cells are kept frozen.
	Count int
	// MemoryBytes is a stem cell's memory limit until it is specialised.
	MemoryBytes int64
}

// MaxParallelOps bounds the container starts, and separately the removals,
// that the pool runs at once.
const MaxParallelOps = 8

// prewarmRetry is how long the pool waits before trying again to reach a
// function's min_warm, or the stem cell count, after a start failed.
const prewarmRetry = time.Second

// Pool owns the node's containers. It is safe for concurrent use.
type Pool struct {
	driver       Driver
	runDir       string
	log          *slog.Logger
	clock        Clock
	startTimeout time.Duration
	queueDepth   int
	budget       int64
	stemSpecs    map[string]StemSpec

	// starts and removals bound the container operations in flight at
	// once: containerd times out when asked for hundreds together.
	starts   chan struct{}
	removals chan struct{}

	bg     context.Context // background work; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the pool
	work   sync.WaitGroup // starts, specialisations and removals in progress

	mu           sync.Mutex
	closed       bool
	sets         map[string]*set
	stems        map[string][]*Container // frozen stem cells by runtime, LIFO
	stemStarting map[string]int
	memoryUsed   int64
	all          map[string]*Container // every container not yet removed
	logs         map[string]*LogRing   // output of each function's containers; "" for stem cells

	counters counters
}

// counters are the pool's event counts, read by Stats.
type counters struct {
	coldStarts, thaws, freezes, specializations, evictions, failures, idleStops atomic.Int64
}

// Option configures a Pool.
type Option func(*options)

type options struct {
	log          *slog.Logger
	startTimeout time.Duration
	clock        Clock
	queueDepth   int
	budget       int64
	stems        []StemSpec
}

// WithLogger sets the pool's logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithStartTimeout bounds the time from container start to the executor's
// Ready (default 10s).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// WithClock sets the clock driving the freeze and idle timers (tests).
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithQueueDepth bounds each function's queue of waiting calls (default
// 1000).
func WithQueueDepth(n int) Option { return func(o *options) { o.queueDepth = n } }

// WithMemoryBudget bounds the sum of the memory limits of all containers
// (default: unlimited).
func WithMemoryBudget(bytes int64) Option { return func(o *options) { o.budget = bytes } }

// WithStemCells keeps stem cells of the given runtimes.
func WithStemCells(specs ...StemSpec) Option {
	return func(o *options) { o.stems = append(o.stems, specs...) }
}

// New returns a Pool creating containers through driver, with their host
// directories under runDir. Stem cells, if any, are started in the
// background.
func New(driver Driver, runDir string, opts ...Option) (*Pool, error) {
	if driver == nil {
		return nil, errors.New("pool: nil driver")
	}
	o := options{log: slog.Default(), startTimeout: 10 * time.Second, clock: realClock{}, queueDepth: 1000}
	for _, opt := range opts {
		opt(&o)
	}
	if o.queueDepth < 0 || o.budget < 0 || o.startTimeout <= 0 {
		return nil, errors.New("pool: queue depth and memory budget must not be negative, start timeout must be positive")
	}
	abs, err := filepath.Abs(runDir)
	if err != nil {
		return nil, fmt.Errorf("pool: run dir: %w", err)
	}
	p := &Pool{
		driver:       driver,
		runDir:       abs,
		log:          o.log,
		clock:        o.clock,
		startTimeout: o.startTimeout,
		queueDepth:   o.queueDepth,
		budget:       o.budget,
		stemSpecs:    make(map[string]StemSpec),
		sets:         make(map[string]*set),
		stems:        make(map[string][]*Container),
		stemStarting: make(map[string]int),
		all:          make(map[string]*Container),
		logs:         make(map[string]*LogRing),
		starts:       make(chan struct{}, MaxParallelOps),
		removals:     make(chan struct{}, MaxParallelOps),
	}
	for _, s := range o.stems {
		if s.Runtime == "" || s.RootFS == "" || len(s.Args) == 0 || s.Count < 0 {
			return nil, fmt.Errorf("pool: stem cells of %q: runtime, rootfs and args are required", s.Runtime)
		}
		if s.MemoryBytes <= 0 {
			s.MemoryBytes = DefaultMemoryBytes
		}
		p.stemSpecs[s.Runtime] = s
	}
	p.bg, p.cancel = context.WithCancel(context.Background())
	p.mu.Lock()
	for rt := range p.stemSpecs {
		p.refillStemsLocked(rt)
	}
	p.mu.Unlock()
	return p, nil
}

// set is one function's containers and waiting calls.
type set struct {
	fn         *Function
	containers []*Container // live containers, any state but Stopping/Gone/Failed
	starting   int          // starts or specialisations for waiting calls
	prewarming int          // starts for min_warm
	waiters    []*waiter    // FIFO
}

type waiter struct {
	ch chan grant
}

type grant struct {
	c    *Container
	kind StartKind
	err  error
}

// CheckFunction reports whether the driver could ever start a container of
// fn, before any is created: an error wrapping a *SpecError names what it
// would refuse. Drivers that are no SpecChecker accept everything here.
func (p *Pool) CheckFunction(fn *Function) error {
	sc, ok := p.driver.(SpecChecker)
	if !ok {
		return nil
	}
	return sc.CheckSpec(ContainerSpec{
		Function:    fn.Name,
		RootFS:      fn.RootFS,
		Args:        fn.Args,
		Env:         fn.Env,
		MemoryBytes: fn.MemoryBytes,
		CPUMillis:   fn.CPUMillis,
	})
}

// Configure registers fn, or its new settings, and starts containers in the
// background until it has MinWarm. A new Revision stops the containers of
// the old one (those running calls when the calls end).
func (p *Pool) Configure(fn *Function) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	s := p.setLocked(fn)
	p.ensureWarmLocked(s)
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

func (p *Pool) acquire(ctx context.Context, fn *Function) (*Container, StartKind, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, 0, ErrClosed
	}
	s := p.setLocked(fn)
	if len(s.waiters) == 0 {
		if c := s.pickLocked(); c != nil {
			kind := p.assignLocked(c)
			p.mu.Unlock()
			return c, kind, nil
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
	if s.removeWaiter(w) {
		p.mu.Unlock()
		return nil, 0, fmt.Errorf("%w: %v", ErrQueueTimeout, ctx.Err())
	}
	p.mu.Unlock()
	// A grant raced with the deadline: give the container back.
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
		p.goWork(func() { p.specialize(s, fn, stem) })
		return nil
	}
	if !p.reserveLocked(fn.MemoryBytes, true) {
		if len(s.containers)+s.starting+s.prewarming == 0 {
			return fmt.Errorf("%w: %d of %d bytes in use", ErrNoCapacity, p.memoryUsed, p.budget)
		}
		return nil
	}
	s.starting++
	p.goWork(func() { p.startFor(s, fn, false) })
	return nil
}

// setLocked returns fn's set, creating it or applying fn's new settings.
func (p *Pool) setLocked(fn *Function) *set {
	s := p.sets[fn.Name]
	if s == nil {
		s = &set{fn: fn}
		p.sets[fn.Name] = s
		return s
	}
	if s.fn == fn {
		return s
	}
	old := s.fn
	s.fn = fn
	if old.Revision != fn.Revision {
		// Retire the old revision's containers: idle ones now, busy ones
		// when their calls end.
		for _, c := range append([]*Container(nil), s.containers...) {
			if c.revision == fn.Revision {
				continue
			}
			if c.active == 0 && (c.state == StateReady || c.state == StateFrozen) {
				p.stopLocked(c, "new revision")
			} else {
				c.retired = true
			}
		}
		for range s.waiters {
			if err := p.scaleLocked(s); err != nil {
				break
			}
		}
	}
	return s
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

// assignLocked hands c to a call and returns how the call got it. A frozen
// container moves to Thawing: the caller must thaw it.
func (p *Pool) assignLocked(c *Container) StartKind {
	c.active++
	kind := StartWarm
	if c.fresh {
		c.fresh = false
		kind = c.firstKind
	}
	if c.state == StateFrozen {
		c.state = StateThawing
		return StartThawed
	}
	c.state = StateBusy
	return kind
}

// dispatchLocked hands free containers to waiting calls, oldest first.
func (p *Pool) dispatchLocked(s *set) {
	for len(s.waiters) > 0 {
		c := s.pickLocked()
		if c == nil {
			return
		}
		w := s.waiters[0]
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
		w.ch <- grant{c: c, kind: p.assignLocked(c)}
	}
}

func (s *set) removeWaiter(w *waiter) bool {
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
	if c.active == 0 {
		c.state = StateReady
	}
	p.dispatchLocked(s)
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

// scheduleIdleLocked arms c's freeze and idle timers from now.
func (p *Pool) scheduleIdleLocked(c *Container, fn *Function) {
	if fn.FreezeAfter >= 0 {
		if c.freezeTimer == nil {
			c.freezeTimer = p.clock.AfterFunc(fn.FreezeAfter, func() { p.freezeIdle(c) })
		} else {
			c.freezeTimer.Reset(fn.FreezeAfter)
		}
	}
	if fn.IdleTimeout > 0 {
		if c.idleTimer == nil {
			c.idleTimer = p.clock.AfterFunc(fn.IdleTimeout, func() { p.stopIdle(c) })
		} else {
			c.idleTimer.Reset(fn.IdleTimeout)
		}
	}
}

// freezeIdle freezes c if it is still idle freeze_after after its last
// call.
func (p *Pool) freezeIdle(c *Container) {
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	p.mu.Lock()
	if c.state != StateReady || c.active != 0 || c.set == nil || p.clock.Now().Sub(c.lastUsed) < c.set.fn.FreezeAfter {
		p.mu.Unlock()
		return
	}
	c.state = StateFrozen
	p.mu.Unlock()
	if err := p.driver.Freeze(p.bg, c.id); err != nil {
		p.log.Warn("freeze", "container", c.id, "err", err)
		p.mu.Lock()
		if c.state == StateFrozen {
			c.state = StateReady
		}
		p.mu.Unlock()
		return
	}
	p.counters.freezes.Add(1)
}

// stopIdle stops c if it is still idle idle_timeout after its last call and
// its function keeps min_warm without it.
func (p *Pool) stopIdle(c *Container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := c.set
	if s == nil || c.active != 0 || (c.state != StateFrozen && c.state != StateReady) ||
		p.clock.Now().Sub(c.lastUsed) < s.fn.IdleTimeout || len(s.containers)-1 < s.fn.MinWarm {
		return
	}
	p.counters.idleStops.Add(1)
	p.stopLocked(c, "idle timeout")
}

// goWork runs f in the background as pool work that Settle waits for.
// p.mu must be held (so that Settle and Close see the Add).
func (p *Pool) goWork(f func()) {
	p.wg.Add(1)
	p.work.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.work.Done()
		f()
	}()
}

// Settle waits until no container start, specialisation or removal is in
// progress. Work that these start in turn (a refill, a replacement) is
// waited for too. It is meant for tests and orderly shutdown.
func (p *Pool) Settle() {
	p.work.Wait()
}

// thaw resumes a container handed out frozen.
func (p *Pool) thaw(ctx context.Context, c *Container) error {
	c.freezeMu.Lock()
	err := p.driver.Thaw(ctx, c.id)
	c.freezeMu.Unlock()
	p.mu.Lock()
	if err == nil && c.state == StateThawing {
		c.state = StateBusy
	}
	p.mu.Unlock()
	if err == nil {
		p.counters.thaws.Add(1)
	}
	return err
}

// reserveLocked takes bytes from the node's memory budget. With evict set
// it stops least recently used frozen containers of any function (and stem
// cells) to make room. It reports whether the bytes were reserved.
func (p *Pool) reserveLocked(bytes int64, evict bool) bool {
	if p.budget == 0 || p.memoryUsed+bytes <= p.budget {
		p.memoryUsed += bytes
		return true
	}
	if !evict {
		return false
	}
	var victims []*Container
	for _, c := range p.all {
		if c.state == StateFrozen && c.active == 0 {
			victims = append(victims, c)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].lastUsed.Before(victims[j].lastUsed) })
	for _, c := range victims {
		if p.memoryUsed+bytes <= p.budget {
			break
		}
		p.counters.evictions.Add(1)
		p.stopLocked(c, "memory pressure")
	}
	if p.memoryUsed+bytes <= p.budget {
		p.memoryUsed += bytes
		return true
	}
	return false
}

// ensureWarmLocked starts containers in the background until s has
// min_warm, within the free memory budget (pre-forking never evicts).
func (p *Pool) ensureWarmLocked(s *set) {
	for len(s.containers)+s.starting+s.prewarming < s.fn.MinWarm {
		if !p.reserveLocked(s.fn.MemoryBytes, false) {
			return
		}
		s.prewarming++
		fn := s.fn
		p.goWork(func() { p.startFor(s, fn, true) })
	}
}

// startFor creates a container of fn for s: for a waiting call, or to keep
// min_warm (prewarm), in which case it is frozen once ready.
func (p *Pool) startFor(s *set, fn *Function, prewarm bool) {
	c, err := p.start(p.bg, fn.Name, fn.Runtime, ContainerSpec{
		Function:    fn.Name,
		RootFS:      fn.RootFS,
		Args:        fn.Args,
		Env:         fn.Env,
		MemoryBytes: fn.MemoryBytes,
		CPUMillis:   fn.CPUMillis,
	})
	if err == nil && prewarm {
		err = p.freezeNew(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prewarm {
		s.prewarming--
	} else {
		s.starting--
	}
	if err != nil {
		p.memoryUsed -= fn.MemoryBytes
		p.counters.failures.Add(1)
		p.log.Warn("container start failed", "function", fn.Name, "err", err)
		p.failWaitersLocked(s, err)
		if prewarm && !p.closed {
			// Try again for min_warm later, not in a tight loop.
			p.clock.AfterFunc(prewarmRetry, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				if !p.closed && p.sets[fn.Name] == s {
					p.ensureWarmLocked(s)
				}
			})
		}
		return
	}
	p.counters.coldStarts.Add(1)
	c.memory = fn.MemoryBytes
	p.adoptLocked(s, fn, c, StartCold, prewarm)
}

// adoptLocked makes a new container part of s and hands it to a waiting
// call, or leaves it idle.
func (p *Pool) adoptLocked(s *set, fn *Function, c *Container, kind StartKind, frozen bool) {
	if p.closed || p.sets[fn.Name] != s || s.fn.Revision != fn.Revision {
		c.set = s
		p.stopLocked(c, "no longer wanted")
		return
	}
	c.set = s
	c.revision = fn.Revision
	c.function.Store(&fn.Name)
	c.lastUsed = p.clock.Now()
	c.firstKind, c.fresh = kind, true
	c.state = StateReady
	if frozen {
		c.state = StateFrozen
		c.fresh = false
	}
	s.containers = append(s.containers, c)
	p.dispatchLocked(s)
	if c.active == 0 && c.state == StateReady {
		c.fresh = false
		p.scheduleIdleLocked(c, s.fn)
	}
	p.ensureWarmLocked(s)
}

// freezeNew freezes a container that has just become ready.
func (p *Pool) freezeNew(c *Container) error {
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	if err := p.driver.Freeze(p.bg, c.id); err != nil {
		p.stop(c, fmt.Errorf("%w: freeze: %v", ErrExecutorFailed, err))
		return err
	}
	p.counters.freezes.Add(1)
	return nil
}

// start creates a container from spec and waits for its executor's Ready.
// It fills in the id, socket dir and outputs.
func (p *Pool) start(ctx context.Context, idPrefix, runtime string, spec ContainerSpec) (*Container, error) {
	suffix, err := randomHex(6)
	if err != nil {
		return nil, err
	}
	c := &Container{
		id:      idPrefix + "." + suffix,
		runtime: runtime,
		dir:     filepath.Join(p.runDir, suffix),
		created: p.clock.Now(),
		logs:    NewTailBuffer(64 << 10),
		readyC:  make(chan *session, 1),
		gone:    make(chan struct{}),
		state:   StateCreating,
	}
	if err := c.listen(); err != nil {
		c.shutdown(err)
		return nil, err
	}
	spec.ID = c.id
	spec.SocketDir = c.dir
	spec.Env = append(append([]string(nil), spec.Env...), "KILN_SOCKET="+ExecutorDir+"/"+SocketName)
	if spec.Function != "" {
		spec.Env = append(spec.Env, "KILN_FUNCTION="+spec.Function)
	}
	p.mu.Lock()
	c.logRing.Store(p.logRingLocked(spec.Function))
	p.mu.Unlock()
	spec.Stdout = io.MultiWriter(c.logs, &lineWriter{c: c, stream: "stdout"})
	spec.Stderr = io.MultiWriter(c.logs, &lineWriter{c: c, stream: "stderr"})
	select {
	case p.starts <- struct{}{}:
	case <-ctx.Done():
		c.shutdown(ctx.Err())
		return nil, ctx.Err()
	}
	defer func() { <-p.starts }()
	t0 := time.Now()
	c.expectReady.Store(true)
	if err := p.driver.Start(ctx, spec); err != nil {
		c.shutdown(err)
		if errors.Is(err, ErrUnavailable) {
			return nil, fmt.Errorf("start container for %s: %w", idPrefix, err)
		}
		return nil, fmt.Errorf("%w: start container for %s: %v", ErrExecutorFailed, idPrefix, err)
	}
	p.mu.Lock()
	p.all[c.id] = c
	p.mu.Unlock()
	exited, err := p.driver.Exited(c.id)
	if err != nil {
		p.stop(c, err)
		return nil, err
	}
	c.exited = exited
	if err := c.waitReady(ctx, p.startTimeout); err != nil {
		p.stop(c, err)
		return nil, err
	}
	p.wg.Add(1)
	go p.watch(c)
	p.log.Debug("container ready", "container", c.id, "took", time.Since(t0))
	return c, nil
}

// watch fails c when its process exits.
func (p *Pool) watch(c *Container) {
	defer p.wg.Done()
	select {
	case <-c.exited:
	case <-p.bg.Done():
		return
	}
	c.shutdown(fmt.Errorf("%w: container %s: process exited", ErrExecutorFailed, c.id))
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.state.live() {
		p.failLocked(c, "process exited")
	}
}

// failLocked marks c Failed, stops it, and keeps its function at min_warm.
func (p *Pool) failLocked(c *Container, why string) {
	p.counters.failures.Add(1)
	p.log.Info("container failed", "container", c.id, "reason", why)
	p.stopLocked(c, why)
	c.state = StateFailed
}

// stopLocked takes c out of its set (or the stem cells), releases its
// memory and removes it in the background.
func (p *Pool) stopLocked(c *Container, why string) {
	if !c.state.live() {
		return
	}
	c.state = StateStopping
	p.memoryUsed -= c.memory
	c.memory = 0
	if c.freezeTimer != nil {
		c.freezeTimer.Stop()
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if s := c.set; s != nil {
		for i, x := range s.containers {
			if x == c {
				s.containers = append(s.containers[:i], s.containers[i+1:]...)
				break
			}
		}
		if !p.closed && p.sets[s.fn.Name] == s {
			p.ensureWarmLocked(s)
			if len(s.waiters) > 0 {
				_ = p.scaleLocked(s)
			}
		}
	} else {
		stems := p.stems[c.runtime]
		for i, x := range stems {
			if x == c {
				p.stems[c.runtime] = append(stems[:i], stems[i+1:]...)
				break
			}
		}
		if !p.closed {
			p.refillStemsLocked(c.runtime)
		}
	}
	p.log.Debug("stopping container", "container", c.id, "reason", why)
	p.goWork(func() { p.stop(c, fmt.Errorf("%w: container %s stopped: %s", ErrClosed, c.id, why)) })
}

// stop ends a container's session and removes it through the driver.
func (p *Pool) stop(c *Container, reason error) {
	c.shutdown(reason)
	p.removals <- struct{}{}
	defer func() { <-p.removals }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.driver.Remove(ctx, c.id); err != nil {
		p.log.Warn("remove container", "container", c.id, "err", err)
	}
	p.mu.Lock()
	delete(p.all, c.id)
	if c.state == StateStopping {
		c.state = StateGone
	}
	p.mu.Unlock()
	c.goneOnce.Do(func() { close(c.gone) })
}

// refillStemsLocked starts stem cells of runtime in the background until
// there are Count of them, within the free memory budget.
func (p *Pool) refillStemsLocked(runtime string) {
	spec, ok := p.stemSpecs[runtime]
	if !ok {
		return
	}
	for len(p.stems[runtime])+p.stemStarting[runtime] < spec.Count {
		if !p.reserveLocked(spec.MemoryBytes, false) {
			return
		}
		p.stemStarting[runtime]++
		p.goWork(func() { p.startStem(spec) })
	}
}

// startStem starts one stem cell and parks it frozen.
func (p *Pool) startStem(spec StemSpec) {
	c, err := p.start(p.bg, "stem."+spec.Runtime, spec.Runtime, ContainerSpec{
		RootFS:      spec.RootFS,
		Args:        spec.Args,
		MemoryBytes: spec.MemoryBytes,
	})
	if err == nil {
		err = p.freezeNew(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stemStarting[spec.Runtime]--
	if err != nil {
		p.memoryUsed -= spec.MemoryBytes
		p.counters.failures.Add(1)
		p.log.Warn("stem cell start failed", "runtime", spec.Runtime, "err", err)
		if !p.closed {
			// Try again later, as for min_warm.
			p.clock.AfterFunc(prewarmRetry, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				if !p.closed {
					p.refillStemsLocked(spec.Runtime)
				}
			})
		}
		return
	}
	c.memory = spec.MemoryBytes
	c.lastUsed = p.clock.Now()
	c.state = StateFrozen
	if p.closed {
		p.stopLocked(c, "pool closed")
		return
	}
	p.stems[spec.Runtime] = append(p.stems[spec.Runtime], c)
	p.log.Debug("stem cell ready", "runtime", spec.Runtime, "container", c.id)
}

// takeStemLocked takes a frozen stem cell able to become fn's container,
// or returns nil. It moves the memory reservation to fn's limit.
func (p *Pool) takeStemLocked(fn *Function) *Container {
	stems := p.stems[fn.Runtime]
	if fn.Code == "" || len(stems) == 0 {
		return nil
	}
	c := stems[len(stems)-1]
	if delta := fn.MemoryBytes - c.memory; delta > 0 && !p.reserveLocked(delta, true) {
		return nil
	} else if delta > 0 {
		c.memory += delta
	}
	// reserveLocked may have evicted stem cells: take the newest left.
	stems = p.stems[fn.Runtime]
	if len(stems) == 0 || stems[len(stems)-1] != c {
		return nil
	}
	p.stems[fn.Runtime] = stems[:len(stems)-1]
	c.state = StateSpecializing
	c.active = 0
	p.refillStemsLocked(fn.Runtime)
	return c
}

// specialize turns a stem cell into fn's container for the waiting calls
// of s: thaw, code in, the function's limits, Init, and the function's own
// Ready.
func (p *Pool) specialize(s *set, fn *Function, c *Container) {
	err := p.load(p.bg, fn, c)
	p.mu.Lock()
	defer p.mu.Unlock()
	s.starting--
	if err != nil {
		p.counters.failures.Add(1)
		p.log.Warn("stem cell specialisation failed", "function", fn.Name, "container", c.id, "err", err)
		p.stopLocked(c, "specialisation failed")
		c.state = StateFailed
		p.failWaitersLocked(s, err)
		return
	}
	p.counters.specializations.Add(1)
	p.adoptLocked(s, fn, c, StartStem, false)
}

func (p *Pool) load(ctx context.Context, fn *Function, c *Container) error {
	t0 := time.Now()
	c.freezeMu.Lock()
	err := p.driver.Thaw(ctx, c.id)
	c.freezeMu.Unlock()
	if err != nil {
		return fmt.Errorf("%w: thaw stem cell: %v", ErrExecutorFailed, err)
	}
	codeDir := filepath.Join(c.dir, "code")
	if err := os.MkdirAll(codeDir, 0o755); err != nil {
		return err
	}
	dst := filepath.Join(codeDir, "handler")
	if err := os.Link(fn.Code, dst); err != nil {
		if err := copyExecutable(fn.Code, dst); err != nil {
			return fmt.Errorf("load code: %w", err)
		}
	}
	tCode := time.Now()
	if err := p.driver.Update(ctx, c.id, fn.MemoryBytes, fn.CPUMillis); err != nil {
		return fmt.Errorf("%w: set limits: %v", ErrExecutorFailed, err)
	}
	env := make(map[string]string, len(fn.Env)+1)
	for _, kv := range fn.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	env["KILN_FUNCTION"] = fn.Name
	p.mu.Lock()
	c.logRing.Store(p.logRingLocked(fn.Name))
	p.mu.Unlock()
	old := c.sess.Load()
	if old == nil {
		return fmt.Errorf("%w: stem cell has no session", ErrExecutorFailed)
	}
	select { // a stale session from a timed-out wait
	case <-c.readyC:
	default:
	}
	c.expectReady.Store(true)
	err = old.send(&pb.AgentMsg{Msg: &pb.AgentMsg_Init{Init: &pb.Init{
		Function: fn.Name,
		Revision: fn.Revision,
		CodePath: ExecutorDir + "/code/handler",
		Handler:  "handler",
		Env:      env,
	}}})
	if err != nil {
		c.expectReady.Store(false)
		return fmt.Errorf("%w: send Init: %v", ErrExecutorFailed, err)
	}
	tInit := time.Now()
	if err := c.waitReady(ctx, p.startTimeout); err != nil {
		return err
	}
	if got := c.sess.Load().ready.Function; got != fn.Name {
		return fmt.Errorf("%w: specialised executor says it serves %q, want %q", ErrExecutorFailed, got, fn.Name)
	}
	p.log.Debug("stem cell specialised", "function", fn.Name, "container", c.id,
		"thaw_and_code", tCode.Sub(t0), "limits", tInit.Sub(tCode), "init_to_ready", time.Since(tInit))
	return nil
}

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
		late = append(late, c)
	}
	p.mu.Unlock()
	for _, c := range late {
		p.stop(c, ErrClosed)
	}
	return err
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
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
