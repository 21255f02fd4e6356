package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// prewarmRetry is how long the pool waits before trying again to reach a
// function's min_warm, or the stem cell count, after a start failed.
const prewarmRetry = time.Second

// goWorkLocked runs f in the background as pool work that Settle waits for.
// p.mu must be held (so that Settle and Close see the Add).
func (p *Pool) goWorkLocked(f func()) {
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

// ensureWarmLocked starts containers in the background until s has
// min_warm, within the free memory budget (pre-forking never evicts).
func (p *Pool) ensureWarmLocked(s *set) {
	for len(s.containers)+s.starting+s.prewarming < s.fn.MinWarm {
		if !p.reserveLocked(s.fn.MemoryBytes, false, nil) {
			return
		}
		s.prewarming++
		fn := s.fn
		p.goWorkLocked(func() { p.startFor(s, fn, true) })
	}
}

// startFor creates a container of fn for s: for a waiting call, or to keep
// min_warm (prewarm), in which case it is frozen once ready.
func (p *Pool) startFor(s *set, fn *Function, prewarm bool) {
	c, err := p.start(p.bg, fn.Name, fn.Runtime, ContainerSpec{
		Function:    fn.Name,
		RootFS:      fn.RootFS,
		Mounts:      fn.Mounts,
		Args:        fn.Args,
		Env:         fn.Env,
		Cwd:         fn.Cwd,
		MemoryBytes: fn.MemoryBytes,
		CPUMillis:   fn.CPUMillis,
	})
	var used int64
	if err == nil && prewarm {
		used, err = p.freezeNew(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prewarm {
		s.prewarming--
	} else {
		s.starting--
	}
	if err == nil && c.hasExited() {
		err = fmt.Errorf("%w: container %s exited as it started", ErrExecutorFailed, c.id)
	}
	if err != nil {
		if c != nil {
			p.failLocked(c, err.Error())
		} else {
			p.counters.failures.Add(1)
		}
		p.memoryUsed -= fn.MemoryBytes
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
	c.memory, c.limit = fn.MemoryBytes, fn.MemoryBytes
	p.adoptLocked(s, fn, c, StartCold, prewarm)
	if prewarm {
		// Unless a waiting call took it at once.
		p.lowerChargeLocked(c, used)
	}
}

// adoptLocked makes a new container part of s and hands it to a waiting
// call, or leaves it idle.
func (p *Pool) adoptLocked(s *set, fn *Function, c *Container, kind StartKind, frozen bool) {
	if p.closed || p.sets[fn.Name] != s || s.fn.Revision != fn.Revision {
		p.stopLocked(c, "no longer wanted")
		if !p.closed && p.sets[fn.Name] == s {
			// It was counted as starting for s: start another at the
			// new revision if s still needs one.
			p.ensureWarmLocked(s)
			if len(s.waiters) > 0 {
				_ = p.scaleLocked(s)
			}
		}
		return
	}
	c.set = s
	c.revision = fn.Revision
	c.function.Store(&fn.Name)
	c.lastUsed = p.clock.Now()
	c.firstKind, c.fresh = kind, true
	if frozen {
		p.setStateLocked(c, StateFrozen)
		c.fresh = false
	} else {
		p.setStateLocked(c, StateReady)
	}
	s.containers = append(s.containers, c)
	p.dispatchLocked(s)
	if c.active == 0 && c.state == StateReady {
		c.fresh = false
		p.scheduleIdleLocked(c, s.fn)
	}
	p.ensureWarmLocked(s)
}

// freezeNew freezes a container that has just become ready and returns
// the memory it holds frozen (frozenUse). When the freeze fails, the caller
// fails the container.
func (p *Pool) freezeNew(c *Container) (int64, error) {
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	if err := p.driver.Freeze(p.bg, c.id); err != nil {
		return 0, fmt.Errorf("%w: freeze: %v", ErrExecutorFailed, err)
	}
	p.counters.freezes.Add(1)
	return p.frozenUse(c), nil
}

// frozenUse reads the memory a container holds, for its charge while
// frozen; the caller holds c.freezeMu and has just frozen it. It returns 0
// (keep the charge) when the pool charges frozen containers their limit or
// the reading fails.
func (p *Pool) frozenUse(c *Container) int64 {
	if !p.chargeFrozen {
		return 0
	}
	st, err := p.driver.Stats(p.bg, c.id)
	if err != nil {
		p.log.Debug("read frozen container's memory", "container", c.id, "err", err)
		return 0
	}
	return st.MemoryBytes
}

// start creates a container from spec and waits for its executor's Ready.
// It fills in the id, socket dir and outputs. The container is Creating
// until the driver has started its process, then Starting; start returns
// it Starting, or an error once it has failed and is gone.
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

		diagnosed: make(chan struct{}),
	}
	c.diag, _ = p.driver.(Diagnoser)
	if err := c.listen(p.maxResponse + pb.ResultSlack); err != nil {
		p.failStart(c, err, false)
		return nil, err
	}
	spec.ID = c.id
	spec.SocketDir = c.dir
	spec.Env = append(append([]string(nil), spec.Env...), "KILN_SOCKET="+ExecutorDir+"/"+SocketName,
		pb.EnvMaxResponse+"="+strconv.Itoa(p.maxResponse))
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
		p.failStart(c, ctx.Err(), false)
		return nil, ctx.Err()
	}
	defer func() { <-p.starts }()
	t0 := time.Now()
	c.expectReady.Store(true)
	if err := p.driver.Start(ctx, spec); err != nil {
		p.failStart(c, err, false)
		if errors.Is(err, ErrUnavailable) {
			return nil, fmt.Errorf("start container for %s: %w", idPrefix, err)
		}
		return nil, fmt.Errorf("%w: start container for %s: %v", ErrExecutorFailed, idPrefix, err)
	}
	exited, err := p.driver.Exited(c.id)
	if err != nil {
		p.failStart(c, err, true)
		return nil, err
	}
	c.exited = exited
	p.mu.Lock()
	p.all[c.id] = c
	p.setStateLocked(c, StateStarting)
	p.mu.Unlock()
	if err := c.waitReady(ctx, p.startTimeout); err != nil {
		p.failStart(c, err, true)
		return nil, err
	}
	p.markUsage(c)
	p.wg.Add(1)
	go p.watch(c)
	p.log.Debug("container ready", "container", c.id, "took", time.Since(t0))
	return c, nil
}

// failStart ends a container that failed before it was ready: Failed,
// then Gone once the driver removed it (started) or at once (not started).
func (p *Pool) failStart(c *Container, err error, started bool) {
	p.mu.Lock()
	p.setStateLocked(c, StateFailed)
	p.mu.Unlock()
	if started {
		p.stop(c, err)
		return
	}
	c.shutdown(err)
	p.mu.Lock()
	p.setStateLocked(c, StateGone)
	p.mu.Unlock()
	c.goneOnce.Do(func() { close(c.gone) })
}

// watch fails c when its process exits, once it has diagnosed why (the
// calls that failed with the session wait for that). The diagnosis comes
// first, while the container and its cgroup still exist: failing c
// removes them. A container that is not in use yet (Starting,
// Specializing) is left to the goroutine starting it, which sees the exit
// once it is done.
func (p *Pool) watch(c *Container) {
	defer p.wg.Done()
	select {
	case <-c.exited:
	case <-p.bg.Done():
		return
	}
	p.diagnoseExit(c)
	c.shutdown(fmt.Errorf("%w: container %s: process exited", ErrExecutorFailed, c.id))
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.state.placed() {
		p.failLocked(c, "process exited")
	}
}

// failLocked marks a live c Failed, takes it out of use and removes it in
// the background; its function gets a replacement while below min_warm.
func (p *Pool) failLocked(c *Container, why string) {
	if !c.state.live() {
		return
	}
	p.counters.failures.Add(1)
	p.log.Info("container failed", "container", c.id, "reason", why)
	p.endLocked(c, StateFailed, why)
}

// stopLocked marks a live c Stopping, takes it out of use and removes it in
// the background.
func (p *Pool) stopLocked(c *Container, why string) {
	if !c.state.live() {
		return
	}
	p.endLocked(c, StateStopping, why)
}

// endLocked moves c to Stopping or Failed, takes it out of its set (or the
// stem cells), releases its memory and removes it in the background; the
// removal takes it to Gone.
func (p *Pool) endLocked(c *Container, to State, why string) {
	placed := c.state.placed()
	if !p.setStateLocked(c, to) {
		return
	}
	p.memoryUsed -= c.memory
	c.memory = 0
	if c.freezeTimer != nil {
		c.freezeTimer.Stop()
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	switch s := c.set; {
	case !placed:
		// Starting or Specializing: in no set, not among the stem cells.
	case s != nil:
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
	default: // a stem cell, Frozen among the stem cells
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
	if !p.closed && why != reasonEvicted {
		// The memory freed may be what stem cells were refused for: a
		// refill the budget could not hold is retried whenever a
		// container ends, except by an eviction, whose memory is its
		// caller's.
		for runtime := range p.stemSpecs {
			p.refillStemsLocked(runtime)
		}
	}
	p.log.Debug("stopping container", "container", c.id, "reason", why)
	p.goWorkLocked(func() { p.stop(c, fmt.Errorf("%w: container %s stopped: %s", ErrClosed, c.id, why)) })
}

// stop ends a container's session, removes it through the driver and
// takes it, Stopping or Failed, to Gone.
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
	p.setStateLocked(c, StateGone)
	p.mu.Unlock()
	c.goneOnce.Do(func() { close(c.gone) })
}

// randomHex returns n random bytes in hex.
func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b), nil
}
