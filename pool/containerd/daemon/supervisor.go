package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"
)

// ErrGaveUp is returned (wrapped) by Supervisor.Run when the daemon needed
// more restarts within the restart window than the limit allows.
var ErrGaveUp = errors.New("gave up restarting containerd")

// SupervisorState is where a Supervisor's daemon is in its life.
//
//	Supervise ──► Up ──(daemon exits)──► Restarting ──(a restart answers)──► Up
//	              │                       │  ▲ a restart fails: try again after
//	              │                       │  └ the backoff
//	              │                       └──(over the restart limit)──► GaveUp
//	              └──(Run's ctx done; also from Restarting)──► Stopped
type SupervisorState uint8

// The states of a Supervisor.
const (
	// StateUp: a daemon answers on the socket.
	StateUp SupervisorState = iota
	// StateRestarting: the daemon exited; the Supervisor is waiting out the
	// backoff or starting a new one.
	StateRestarting
	// StateStopped: Run's ctx ended and the daemon was stopped.
	StateStopped
	// StateGaveUp: the restart limit was reached; no daemon runs.
	StateGaveUp
)

func (s SupervisorState) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateRestarting:
		return "restarting"
	case StateStopped:
		return "stopped"
	case StateGaveUp:
		return "gave up"
	}
	return "unknown"
}

// Defaults of a Supervisor.
const (
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
	DefaultStablePeriod   = time.Minute
	DefaultMaxRestarts    = 10
	DefaultRestartWindow  = 10 * time.Minute
	DefaultStopTimeout    = 15 * time.Second
)

// SupervisorOption configures Supervise.
type SupervisorOption func(*supervisorOptions)

type supervisorOptions struct {
	daemon         []Option
	initialBackoff time.Duration
	maxBackoff     time.Duration
	stable         time.Duration
	maxRestarts    int
	window         time.Duration
	stopTimeout    time.Duration
	log            *slog.Logger
}

// WithDaemonOptions sets the options of every Start the Supervisor makes.
func WithDaemonOptions(opts ...Option) SupervisorOption {
	return func(o *supervisorOptions) { o.daemon = append(o.daemon, opts...) }
}

// WithBackoff sets the wait before a restart: initial after the first exit,
// doubling with each restart that fails or exits again before the stable
// period, up to max (defaults DefaultInitialBackoff, DefaultMaxBackoff).
func WithBackoff(initial, max time.Duration) SupervisorOption {
	return func(o *supervisorOptions) { o.initialBackoff, o.maxBackoff = initial, max }
}

// WithStablePeriod sets how long a daemon must stay up for the next restart
// to wait only the initial backoff again (default DefaultStablePeriod).
func WithStablePeriod(d time.Duration) SupervisorOption {
	return func(o *supervisorOptions) { o.stable = d }
}

// WithRestartLimit makes Run give up instead of making restart n+1 within
// window: every attempt counts, failed or not (defaults DefaultMaxRestarts,
// DefaultRestartWindow). n = 0 gives up when the first daemon exits.
func WithRestartLimit(n int, window time.Duration) SupervisorOption {
	return func(o *supervisorOptions) { o.maxRestarts, o.window = n, window }
}

// WithStopTimeout bounds how long Run waits for the daemon to exit after
// SIGTERM when its ctx ends, before SIGKILL (default DefaultStopTimeout).
func WithStopTimeout(d time.Duration) SupervisorOption {
	return func(o *supervisorOptions) { o.stopTimeout = d }
}

// WithLogger sets where the Supervisor reports exits, restarts and giving
// up (default: nowhere).
func WithLogger(l *slog.Logger) SupervisorOption {
	return func(o *supervisorOptions) { o.log = l }
}

// process is a running daemon as the Supervisor sees it; *Containerd is the
// real one, tests use fakes.
type process interface {
	Pid() int
	Exited() <-chan struct{}
	Err() error
	Stop(ctx context.Context) error
}

// Supervisor keeps one containerd daemon running in a directory: when the
// daemon exits, for any reason but Run's ctx ending, it starts a new one with
// the same configuration, after a backoff. containerd keeps its state under
// the directory, so the new daemon finds the shims of the old one, and the
// containers they run keep running throughout. The socket path (Address)
// stays the same; clients reconnect to it.
//
// Its methods are safe for concurrent use.
type Supervisor struct {
	address string
	opts    supervisorOptions
	log     *slog.Logger

	// Seams for tests: how a daemon is started, the time, and a timer.
	start func(ctx context.Context) (process, error)
	now   func() time.Time
	after func(time.Duration) <-chan time.Time

	mu       sync.Mutex
	proc     process         // guarded by mu: the running daemon; nil unless Up
	upSince  time.Time       // guarded by mu: when proc answered
	state    SupervisorState // guarded by mu
	changed  chan struct{}   // guarded by mu: closed at the next state change
	restarts int             // guarded by mu: daemons started after the first
}

// Supervise starts containerd in dir as Start does, with the daemon options
// given by WithDaemonOptions, and returns once it answers, in StateUp. Its
// errors are Start's. The caller must then call Run, which keeps the daemon
// running and stops it at the end.
func Supervise(ctx context.Context, dir string, opts ...SupervisorOption) (*Supervisor, error) {
	s, err := newSupervisor(dir, opts...)
	if err != nil {
		return nil, err
	}
	p, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.proc, s.upSince = p, s.now()
	s.mu.Unlock()
	return s, nil
}

// newSupervisor returns a Supervisor in StateUp without a daemon: Supervise
// or a test starts the first one.
func newSupervisor(dir string, opts ...SupervisorOption) (*Supervisor, error) {
	o := supervisorOptions{
		initialBackoff: DefaultInitialBackoff,
		maxBackoff:     DefaultMaxBackoff,
		stable:         DefaultStablePeriod,
		maxRestarts:    DefaultMaxRestarts,
		window:         DefaultRestartWindow,
		stopTimeout:    DefaultStopTimeout,
		log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.initialBackoff <= 0 || o.maxBackoff < o.initialBackoff || o.maxRestarts < 0 || o.window <= 0 || o.stopTimeout <= 0 {
		return nil, errors.New("daemon: backoff, restart window and stop timeout must be positive, the restart limit not negative")
	}
	if dir == "" {
		return nil, errors.New("daemon: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	s := &Supervisor{
		address: filepath.Join(abs, grpcName),
		opts:    o,
		log:     o.log,
		now:     time.Now,
		after:   time.After,
		changed: make(chan struct{}),
	}
	s.start = func(ctx context.Context) (process, error) {
		c, err := Start(ctx, abs, o.daemon...)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	return s, nil
}

// Address returns the path of the daemon's gRPC socket. It is the same for
// every daemon the Supervisor starts.
func (s *Supervisor) Address() string { return s.address }

// Pid returns the running daemon's process id, or 0 while none is up.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid()
}

// Restarts returns how many daemons the Supervisor started after the first.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// State returns the Supervisor's state and a channel that is closed when the
// state next changes.
func (s *Supervisor) State() (SupervisorState, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.changed
}

// Run watches the daemon and restarts it whenever it exits, waiting the
// backoff before each attempt (see WithBackoff and WithStablePeriod), until
// ctx ends or the restart limit is reached (WithRestartLimit). A restart
// that fails counts as an attempt and is followed by another after a longer
// backoff. When ctx ends, Run stops the daemon (SIGTERM, then SIGKILL after
// the stop timeout) and returns nil, or Stop's error. When it gives up, it
// returns an error wrapping ErrGaveUp; no daemon runs then. Run must be
// called once, after Supervise.
func (s *Supervisor) Run(ctx context.Context) error {
	var attempts []time.Time // restart attempts within the window
	delay := s.opts.initialBackoff
	for {
		s.mu.Lock()
		proc, upSince := s.proc, s.upSince
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			err := s.stop(ctx, proc)
			s.setState(StateStopped, nil)
			return err
		case <-proc.Exited():
		}
		if s.now().Sub(upSince) >= s.opts.stable {
			delay = s.opts.initialBackoff
		}
		s.setState(StateRestarting, nil)
		s.log.Error("containerd exited; restarting it", "pid", proc.Pid(), "err", proc.Err(), "up_for", s.now().Sub(upSince), "restart_in", delay)
		for {
			attempts = within(attempts, s.now().Add(-s.opts.window))
			if len(attempts) >= s.opts.maxRestarts {
				s.setState(StateGaveUp, nil)
				err := fmt.Errorf("%w: %d restarts within %v", ErrGaveUp, len(attempts), s.opts.window)
				s.log.Error("giving up on containerd", "err", err)
				return err
			}
			select {
			case <-ctx.Done():
				s.setState(StateStopped, nil)
				return nil
			case <-s.after(delay):
			}
			attempts = append(attempts, s.now())
			p, err := s.start(ctx)
			if ctx.Err() != nil {
				var stopErr error
				if err == nil {
					stopErr = s.stop(ctx, p)
				}
				s.setState(StateStopped, nil)
				return stopErr
			}
			delay = min(2*delay, s.opts.maxBackoff)
			if err == nil {
				s.setState(StateUp, p)
				s.log.Info("containerd restarted", "pid", p.Pid(), "restarts", s.Restarts())
				break
			}
			s.log.Warn("containerd restart failed", "err", err, "attempt", len(attempts), "retry_in", delay)
		}
	}
}

// stop stops p within the stop timeout, after ctx (Run's) ended.
func (s *Supervisor) stop(ctx context.Context, p process) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.stopTimeout)
	defer cancel()
	return p.Stop(ctx)
}

// setState is the one door of every state change: p is the new daemon for
// StateUp and ignored otherwise.
func (s *Supervisor) setState(st SupervisorState, p process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state == StateStopped || s.state == StateGaveUp:
		panic("daemon: supervisor state change after " + s.state.String())
	case st == StateUp && s.state != StateRestarting:
		panic("daemon: supervisor up from " + s.state.String())
	}
	s.proc = nil
	if st == StateUp {
		s.proc, s.upSince = p, s.now()
		s.restarts++
	}
	s.state = st
	close(s.changed)
	s.changed = make(chan struct{})
}

// within returns the times of ts after since; ts is in order.
func within(ts []time.Time, since time.Time) []time.Time {
	for len(ts) > 0 && !ts[0].After(since) {
		ts = ts[1:]
	}
	return ts
}
