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
//
// A container moves through the states drawn above State, and only by the
// moves of its table.
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/kilnfx/kiln/proto/executorpb"
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
	// RootFS, Mounts, Args, Env and Cwd are as in ContainerSpec.
	RootFS string
	Mounts []Mount
	Args   []string
	Env    []string
	Cwd    string
	// Code is what a stem cell loads to become the function, on the host:
	// for the go runtime the function's executable, for the others the
	// directory of its code. Empty means stem cells cannot serve the
	// function.
	Code string
	// Handler is the handler file in the Code directory a stem cell of a
	// runtime other than go loads.
	Handler string
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
	// RootFS, Mounts, Args and Env start the generic executor.
	RootFS string
	Mounts []Mount
	Args   []string
	Env    []string
	// Count stem cells are kept frozen.
	Count int
	// MemoryBytes is a stem cell's memory limit until it is specialised.
	MemoryBytes int64
}

// MaxParallelOps bounds the container starts, and separately the removals,
// that the pool runs at once.
const MaxParallelOps = 8

// Pool owns the node's containers. It is safe for concurrent use.
//
// Lock order: a Container's freezeMu before Pool.mu; never freezeMu while
// holding Pool.mu. Pool.mu is held for bookkeeping only, never across a
// driver call, a session send or a wait; freezeMu only across
// Driver.Freeze and Driver.Thaw, and the Driver.Stats that reads a
// container's memory right after it froze. The locks of the Clock's timers, of the
// sessions and of the log rings are leaves: taken under Pool.mu at most,
// they take no lock of the pool.
type Pool struct {
	// Immutable after New.
	driver       Driver
	runDir       string
	log          *slog.Logger
	clock        Clock
	startTimeout time.Duration
	queueDepth   int
	budget       int64
	chargeFrozen bool  // frozen containers are charged their use (budget.go)
	frozenMargin int64 // added to a frozen container's use
	maxResponse  int   // the largest answer an executor may send, in bytes
	stemSpecs    map[string]StemSpec
	onTransition func(id string, from, to State) // tests only; called with mu held

	// starts and removals bound the container operations in flight at
	// once: containerd times out when asked for hundreds together.
	starts   chan struct{}
	removals chan struct{}

	bg     context.Context // background work; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the pool
	work   sync.WaitGroup // starts, specialisations and removals in progress

	// mu guards the fields below, the fields of every set, and the
	// Pool.mu fields of every Container.
	mu           sync.Mutex
	closed       bool
	sets         map[string]*set
	stems        map[string][]*Container // frozen stem cells by runtime, LIFO
	stemStarting map[string]int
	memoryUsed   int64
	all          map[string]*Container // every container not yet removed
	logs         map[string]*LogRing   // output of each function's containers; "" for stem cells

	counters counters // atomic
}

// counters are the pool's event counts, read by Stats.
type counters struct {
	coldStarts, thaws, freezes, specializations, evictions, failures, idleStops, refusedThaws atomic.Int64
}

// Option configures a Pool.
type Option func(*options)

type options struct {
	log          *slog.Logger
	startTimeout time.Duration
	clock        Clock
	queueDepth   int
	budget       int64
	chargeFrozen bool
	frozenMargin int64
	stems        []StemSpec
	maxResponse  int
	onTransition func(id string, from, to State) // tests only
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

// WithMemoryBudget bounds the memory charged for all containers (default:
// unlimited). A container is charged its memory limit, or less while frozen
// with WithFrozenCharge.
func WithMemoryBudget(bytes int64) Option { return func(o *options) { o.budget = bytes } }

// WithFrozenCharge charges a frozen container, in the memory budget, the
// memory its cgroup held when it froze plus margin bytes (at most its
// limit), instead of its limit. Its whole limit is reserved again before it
// thaws, evicting least recently used frozen containers if need be; a call
// the budget cannot make room for is refused with ErrNoCapacity rather than
// thawing a container the budget does not hold. margin must not be
// negative. Without this option every container is charged its limit.
func WithFrozenCharge(margin int64) Option {
	return func(o *options) { o.chargeFrozen, o.frozenMargin = true, margin }
}

// WithMaxResponseBytes sets the largest answer (body, headers and error
// message together) a function's executor may send, in bytes: 1 to
// executorpb.MaxResultBodyBytes, which is the default. Every container is
// told it in executorpb.EnvMaxResponse, and its Session refuses a larger
// message before reading it, so that one answer never holds more than
// this (plus executorpb.ResultSlack) of the agent's memory.
func WithMaxResponseBytes(n int) Option { return func(o *options) { o.maxResponse = n } }

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
	o := options{log: slog.Default(), startTimeout: 10 * time.Second, clock: realClock{}, queueDepth: 1000, maxResponse: pb.MaxResultBodyBytes}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxResponse < 1 || o.maxResponse > pb.MaxResultBodyBytes {
		return nil, fmt.Errorf("pool: the response limit must be 1 to %d bytes", pb.MaxResultBodyBytes)
	}
	if o.queueDepth < 0 || o.budget < 0 || o.startTimeout <= 0 || o.frozenMargin < 0 {
		return nil, errors.New("pool: queue depth, memory budget and frozen margin must not be negative, start timeout must be positive")
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
		chargeFrozen: o.chargeFrozen,
		frozenMargin: o.frozenMargin,
		maxResponse:  o.maxResponse,
		onTransition: o.onTransition,
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
		Cwd:         fn.Cwd,
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
