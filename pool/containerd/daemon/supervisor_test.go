package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeProc is a daemon that exits when told to.
type fakeProc struct {
	pid     int
	exited  chan struct{}
	once    sync.Once
	stopped chan struct{}
}

func newFakeProc(pid int) *fakeProc {
	return &fakeProc{pid: pid, exited: make(chan struct{}), stopped: make(chan struct{})}
}

func (p *fakeProc) Pid() int                { return p.pid }
func (p *fakeProc) Exited() <-chan struct{} { return p.exited }
func (p *fakeProc) exit()                   { p.once.Do(func() { close(p.exited) }) }

func (p *fakeProc) Err() error {
	select {
	case <-p.exited:
		return errors.New("signal: killed")
	default:
		return nil
	}
}

func (p *fakeProc) Stop(ctx context.Context) error {
	close(p.stopped)
	p.exit()
	return nil
}

// harness drives a Supervisor whose daemons are fakeProcs: starts are
// scripted, the clock moves only when told and every backoff wait is
// recorded and returns at once.
type harness struct {
	t *testing.T
	s *Supervisor

	mu     sync.Mutex
	now    time.Time
	delays []time.Duration
	script []func(ctx context.Context) (process, error) // next starts
	procs  []*fakeProc                                  // every process started
}

func newHarness(t *testing.T, opts ...SupervisorOption) *harness {
	t.Helper()
	s, err := newSupervisor(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, s: s, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s.now = func() time.Time {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.now
	}
	s.after = func(d time.Duration) <-chan time.Time {
		h.mu.Lock()
		h.delays = append(h.delays, d)
		h.mu.Unlock()
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c
	}
	s.start = func(ctx context.Context) (process, error) {
		h.mu.Lock()
		if len(h.script) == 0 {
			h.mu.Unlock()
			h.t.Error("unexpected start")
			return nil, errors.New("unexpected start")
		}
		next := h.script[0]
		h.script = h.script[1:]
		h.mu.Unlock()
		return next(ctx)
	}
	return h
}

// ok scripts n starts that succeed.
func (h *harness) ok(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for range n {
		h.script = append(h.script, func(context.Context) (process, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			p := newFakeProc(100 + len(h.procs))
			h.procs = append(h.procs, p)
			return p, nil
		})
	}
}

// fail scripts n starts that fail.
func (h *harness) fail(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for range n {
		h.script = append(h.script, func(context.Context) (process, error) {
			return nil, errors.New("containerd would not start")
		})
	}
}

// first starts the first daemon, as Supervise does, and runs the
// Supervisor; the returned channel yields Run's result.
func (h *harness) run(ctx context.Context) <-chan error {
	h.ok(1)
	p, err := h.s.start(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	h.s.proc, h.s.upSince = p, h.s.now()
	done := make(chan error, 1)
	go func() { done <- h.s.Run(ctx) }()
	return done
}

func (h *harness) proc(i int) *fakeProc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.procs[i]
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = h.now.Add(d)
}

// takeDelays returns and clears the backoff waits so far.
func (h *harness) takeDelays() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.delays
	h.delays = nil
	return d
}

// waitUp waits until the Supervisor is up with daemon pid.
func (h *harness) waitUp(pid int) {
	h.t.Helper()
	waitState(h.t, h.s, func(st SupervisorState) bool { return st == StateUp && h.s.Pid() == pid })
}

// waitState waits, boundedly, until the Supervisor's state satisfies ok.
func waitState(t *testing.T, s *Supervisor, ok func(SupervisorState) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		st, changed := s.State()
		if ok(st) {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("supervisor state %v: the wanted state did not come", st)
		}
	}
}

func ms(n ...int) []time.Duration {
	d := make([]time.Duration, len(n))
	for i, v := range n {
		d[i] = time.Duration(v) * time.Millisecond
	}
	return d
}

func TestSupervisorBackoff(t *testing.T) {
	h := newHarness(t, WithBackoff(100*time.Millisecond, time.Second), WithStablePeriod(time.Minute))
	ctx, cancel := context.WithCancel(t.Context())
	done := h.run(ctx)

	// Two failed restarts, then one that works: the waits double.
	h.fail(2)
	h.ok(1)
	h.proc(0).exit()
	h.waitUp(101)
	if got := h.takeDelays(); !slices.Equal(got, ms(100, 200, 400)) {
		t.Errorf("backoff = %v, want 100ms 200ms 400ms", got)
	}
	// An exit before the stable period goes on doubling, up to the cap.
	h.fail(1)
	h.ok(1)
	h.proc(1).exit()
	h.waitUp(102)
	if got := h.takeDelays(); !slices.Equal(got, ms(800, 1000)) {
		t.Errorf("backoff = %v, want 800ms 1s", got)
	}
	// A daemon that stayed up the stable period resets it.
	h.ok(1)
	h.advance(time.Minute)
	h.proc(2).exit()
	h.waitUp(103)
	if got := h.takeDelays(); !slices.Equal(got, ms(100)) {
		t.Errorf("backoff after a stable daemon = %v, want 100ms", got)
	}
	if n := h.s.Restarts(); n != 3 {
		t.Errorf("Restarts() = %d, want 3", n)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v after cancel, want nil", err)
	}
	select {
	case <-h.proc(3).stopped:
	default:
		t.Error("the running daemon was not stopped")
	}
	if st, _ := h.s.State(); st != StateStopped || h.s.Pid() != 0 {
		t.Errorf("after Run: state %v, pid %d", st, h.s.Pid())
	}
}

func TestSupervisorGivesUp(t *testing.T) {
	tests := []struct {
		name     string
		limit    int
		failing  int // restarts that fail before the limit
		attempts int // starts after the first
	}{
		{"no restarts allowed", 0, 0, 0},
		{"daemon never starts again", 3, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, WithRestartLimit(tt.limit, time.Minute))
			done := h.run(t.Context())
			h.fail(tt.failing)
			h.proc(0).exit()
			err := <-done
			if !errors.Is(err, ErrGaveUp) {
				t.Fatalf("Run = %v, want ErrGaveUp", err)
			}
			if got := len(h.takeDelays()); got != tt.attempts {
				t.Errorf("%d restart attempts, want %d", got, tt.attempts)
			}
			if st, _ := h.s.State(); st != StateGaveUp || h.s.Pid() != 0 {
				t.Errorf("state %v, pid %d after giving up", st, h.s.Pid())
			}
		})
	}
}

// TestSupervisorRestartWindow: restarts spread wider than the window never
// reach the limit; crowded ones do.
func TestSupervisorRestartWindow(t *testing.T) {
	h := newHarness(t, WithRestartLimit(2, time.Minute), WithStablePeriod(time.Hour))
	ctx, cancel := context.WithCancel(t.Context())
	done := h.run(ctx)
	for i := range 4 {
		h.ok(1)
		h.advance(time.Minute + time.Second)
		h.proc(i).exit()
		h.waitUp(101 + i)
	}
	// Two crashes in quick succession: the second restart is the limit's
	// last, the third crash is too many.
	h.ok(1)
	h.proc(4).exit()
	h.waitUp(105)
	h.proc(5).exit()
	if err := <-done; !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Run = %v, want ErrGaveUp", err)
	}
	if n := h.s.Restarts(); n != 5 {
		t.Errorf("Restarts() = %d, want 5", n)
	}
	cancel()
}

// TestSupervisorCancelWhileRestarting: Run returns nil when ctx ends while
// a restart is under way.
func TestSupervisorCancelWhileRestarting(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := h.run(ctx)
	h.mu.Lock()
	h.script = append(h.script, func(ctx context.Context) (process, error) {
		cancel()
		<-ctx.Done()
		return nil, ctx.Err()
	})
	h.mu.Unlock()
	h.proc(0).exit()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if st, _ := h.s.State(); st != StateStopped {
		t.Errorf("state %v, want stopped", st)
	}
}

func TestSuperviseFirstStartFails(t *testing.T) {
	dir := shortDir(t)
	fake := filepath.Join(dir, "fake-containerd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'fake daemon: no' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Supervise(t.Context(), dir, WithDaemonOptions(WithBinary(fake))); err == nil {
		t.Fatal("Supervise of a daemon that cannot start succeeded")
	}
	if _, err := Supervise(t.Context(), dir, WithBackoff(0, time.Second)); err == nil {
		t.Fatal("Supervise accepted a zero backoff")
	}
}

// TestSuperviseRestartsContainerd: a real containerd killed with SIGKILL is
// replaced by a new one on the same socket; ending Run's ctx stops it.
func TestSuperviseRestartsContainerd(t *testing.T) {
	requireContainerd(t)
	dir := shortDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := Supervise(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	old := s.Pid()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, s, func(st SupervisorState) bool { return st == StateUp && s.Pid() != old })
	if n := s.Restarts(); n != 1 {
		t.Errorf("Restarts() = %d, want 1", n)
	}
	conn, err := net.Dial("unix", s.Address())
	if err != nil {
		t.Fatalf("dial the restarted daemon: %v", err)
	}
	conn.Close()
	pid := s.Pid()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if syscall.Kill(pid, 0) == nil && !isZombie(pid) {
		t.Errorf("containerd %d still runs after Run returned", pid)
	}
}

// TestKillShims: only shims naming the directory's socket are signalled.
func TestKillShims(t *testing.T) {
	dir := shortDir(t)
	shim := filepath.Join(dir, "containerd-shim-fake")
	if err := os.Symlink("/bin/sh", shim); err != nil {
		t.Fatal(err)
	}
	// A shell named like a shim whose command line has -address ADDRESS
	// (its $0 and $1). It waits on a builtin read from a pipe kept open, so
	// it forks no child that would carry the same command line.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close(); pw.Close() })
	start := func(address string) *os.Process {
		p, err := os.StartProcess(shim, []string{shim, "-c", "read x", "-address", address}, &os.ProcAttr{Files: []*os.File{pr}})
		if err != nil {
			t.Fatalf("run a fake shim: %v", err)
		}
		t.Cleanup(func() { p.Kill(); p.Wait() })
		return p
	}
	mine := start(filepath.Join(dir, grpcName))
	other := start(filepath.Join(dir, "other.sock"))
	n, err := KillShims(dir)
	if err != nil || n != 1 {
		t.Fatalf("KillShims = %d, %v; want 1", n, err)
	}
	if st, _ := mine.Wait(); st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("shim of the directory: %v, want killed", st)
	}
	if err := other.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the other shim was signalled: %v", err)
	}
}
