// Package pool keeps function containers ready for calls.
//
// A Pool owns every container of the node. For each function it keeps a set
// of containers started through a Driver; a call acquires one, invokes the
// function over the container's executor session, and releases it. The
// agent's side of the executor protocol lives here too: the Pool listens on
// a socket in each container's own directory, and the executor's dial and
// Ready message are what make a container ready.
package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"
)

// Function describes what a function's containers run. A Function value is
// immutable once passed to the Pool; a new revision or new limits come as a
// new value.
type Function struct {
	// Name is the function's name.
	Name string
	// Revision identifies the code; containers of another revision are not
	// reused for this one.
	Revision string
	// RootFS, Args and Env are as in ContainerSpec.
	RootFS string
	Args   []string
	Env    []string
	// MemoryBytes and CPUMillis are the container's limits.
	MemoryBytes int64
	CPUMillis   int64
}

// Pool owns the node's function containers. It is safe for concurrent use.
type Pool struct {
	driver       Driver
	runDir       string
	log          *slog.Logger
	startTimeout time.Duration

	mu     sync.Mutex
	sets   map[string]*set
	closed bool
}

// Option configures a Pool.
type Option func(*options)

type options struct {
	log          *slog.Logger
	startTimeout time.Duration
}

// WithLogger sets the pool's logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithStartTimeout bounds the time from container start to the executor's
// Ready (default 10s).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// New returns a Pool creating containers through driver, with their host
// directories under runDir.
func New(driver Driver, runDir string, opts ...Option) (*Pool, error) {
	if driver == nil {
		return nil, errors.New("pool: nil driver")
	}
	o := options{log: slog.Default(), startTimeout: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	abs, err := filepath.Abs(runDir)
	if err != nil {
		return nil, fmt.Errorf("pool: run dir: %w", err)
	}
	return &Pool{
		driver:       driver,
		runDir:       abs,
		log:          o.log,
		startTimeout: o.startTimeout,
		sets:         make(map[string]*set),
	}, nil
}

// set is one function's containers.
type set struct {
	fn       *Function
	hot      *Container    // the running container, if any
	starting chan struct{} // closed when the start in progress ends
}

// Acquire returns a container of fn ready for calls, and how it was obtained.
// It starts a container when fn has none, and waits (bounded by ctx) for a
// start already in progress. The caller must Release the container.
func (p *Pool) Acquire(ctx context.Context, fn *Function) (*Container, StartKind, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, 0, ErrClosed
		}
		s := p.sets[fn.Name]
		if s == nil || s.fn.Revision != fn.Revision {
			if s != nil {
				p.retireLocked(s)
			}
			s = &set{fn: fn}
			p.sets[fn.Name] = s
		}
		if c := s.hot; c != nil {
			if c.alive() {
				p.mu.Unlock()
				return c, StartWarm, nil
			}
			s.hot = nil
			go p.stop(c)
		}
		if wait := s.starting; wait != nil {
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
		done := make(chan struct{})
		s.starting = done
		p.mu.Unlock()

		c, err := p.start(ctx, fn)

		p.mu.Lock()
		s.starting = nil
		close(done)
		if err == nil {
			if p.closed || p.sets[fn.Name] != s {
				p.mu.Unlock()
				go p.stop(c)
				return nil, 0, ErrClosed
			}
			s.hot = c
		}
		p.mu.Unlock()
		if err != nil {
			return nil, 0, err
		}
		return c, StartCold, nil
	}
}

// Release returns a container acquired by Acquire. A container whose session
// ended is stopped.
func (p *Pool) Release(c *Container) {
	if c.alive() {
		return
	}
	p.mu.Lock()
	if s := p.sets[c.function]; s != nil && s.hot == c {
		s.hot = nil
	}
	p.mu.Unlock()
	go p.stop(c)
}

// start creates a container for fn and waits for its executor's Ready.
func (p *Pool) start(ctx context.Context, fn *Function) (*Container, error) {
	suffix, err := randomHex(6)
	if err != nil {
		return nil, err
	}
	c := &Container{
		id:       fn.Name + "." + suffix,
		function: fn.Name,
		dir:      filepath.Join(p.runDir, suffix),
		created:  time.Now(),
		logs:     NewTailBuffer(64 << 10),
		readyC:   make(chan *session, 1),
	}
	if err := c.listen(); err != nil {
		c.shutdown(err)
		return nil, err
	}
	spec := ContainerSpec{
		ID:          c.id,
		Function:    fn.Name,
		RootFS:      fn.RootFS,
		Args:        fn.Args,
		Env:         append(append([]string(nil), fn.Env...), "KILN_FUNCTION="+fn.Name, "KILN_SOCKET="+ExecutorDir+"/"+SocketName),
		SocketDir:   c.dir,
		MemoryBytes: fn.MemoryBytes,
		CPUMillis:   fn.CPUMillis,
		Stdout:      c.logs,
		Stderr:      c.logs,
	}
	t0 := time.Now()
	if err := p.driver.Start(ctx, spec); err != nil {
		c.shutdown(err)
		return nil, fmt.Errorf("start container for %s: %w", fn.Name, err)
	}
	exited, err := p.driver.Exited(c.id)
	if err != nil {
		p.stop(c)
		return nil, err
	}
	if err := c.waitReady(ctx, exited, p.startTimeout); err != nil {
		p.stop(c)
		return nil, err
	}
	// A process that exits ends its session even if the socket lingers.
	go func() {
		select {
		case <-exited:
			c.shutdown(fmt.Errorf("%w: container %s: process exited", ErrExecutorFailed, c.id))
		case <-c.Done():
		}
	}()
	p.log.Debug("container ready", "function", fn.Name, "container", c.id, "took", time.Since(t0))
	return c, nil
}

// stop ends a container's session and removes it.
func (p *Pool) stop(c *Container) {
	c.shutdown(fmt.Errorf("%w: container %s stopped", ErrClosed, c.id))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.driver.Remove(ctx, c.id); err != nil {
		p.log.Warn("remove container", "container", c.id, "err", err)
	}
}

// retireLocked stops a set's containers. p.mu must be held.
func (p *Pool) retireLocked(s *set) {
	if s.hot != nil {
		go p.stop(s.hot)
		s.hot = nil
	}
}

// RemoveFunction stops every container of the named function. It returns
// once they are gone or ctx ends.
func (p *Pool) RemoveFunction(ctx context.Context, name string) error {
	p.mu.Lock()
	s := p.sets[name]
	delete(p.sets, name)
	var victims []*Container
	if s != nil && s.hot != nil {
		victims = append(victims, s.hot)
		s.hot = nil
	}
	p.mu.Unlock()
	return p.stopAll(ctx, victims)
}

// Close stops every container and refuses further Acquires.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	var victims []*Container
	for name, s := range p.sets {
		if s.hot != nil {
			victims = append(victims, s.hot)
		}
		delete(p.sets, name)
	}
	p.mu.Unlock()
	return p.stopAll(ctx, victims)
}

func (p *Pool) stopAll(ctx context.Context, cs []*Container) error {
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.shutdown(fmt.Errorf("%w: container %s stopped", ErrClosed, c.id))
			errs[i] = p.driver.Remove(ctx, c.id)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// RemoveOrphans removes every container the driver knows that this pool did
// not start: what an earlier run of the agent left behind.
func (p *Pool) RemoveOrphans(ctx context.Context) (int, error) {
	ids, err := p.driver.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list containers: %w", err)
	}
	p.mu.Lock()
	mine := make(map[string]bool)
	for _, s := range p.sets {
		if s.hot != nil {
			mine[s.hot.id] = true
		}
	}
	p.mu.Unlock()
	n := 0
	var errs []error
	for _, id := range ids {
		if mine[id] {
			continue
		}
		if err := p.driver.Remove(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", id, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b), nil
}
