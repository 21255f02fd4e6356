package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	pb "github.com/kilnfx/kiln/proto/executorpb"
	"github.com/kilnfx/kiln/proto/grpccodec"
)

// StartKind says how a call got its container.
type StartKind uint8

// Start kinds, as the X-Kiln-Start header and usage records name them.
const (
	// StartWarm: an idle, running container was reused.
	StartWarm StartKind = iota
	// StartThawed: a frozen container was thawed.
	StartThawed
	// StartStem: a stem cell was specialised.
	StartStem
	// StartCold: a new container was created.
	StartCold
)

func (k StartKind) String() string {
	switch k {
	case StartWarm:
		return "warm"
	case StartThawed:
		return "thawed"
	case StartStem:
		return "stem"
	case StartCold:
		return "cold"
	}
	return "unknown"
}

// Container is one container and its executor session. Invoke and the
// accessors are safe for concurrent use; the pool owns everything else.
//
// Its fields come in three kinds: those set as the container is made and
// never changed after, those read and written atomically, and those
// Pool.mu guards.
type Container struct {
	// Set as the container is made, each before anything that reads it can
	// see the container; never changed after.
	id      string
	runtime string
	dir     string // host directory mounted at ExecutorDir
	created time.Time
	logs    *TailBuffer
	readyC  chan *session   // receives the session once Ready arrived
	gone    chan struct{}   // closed once the driver removed the container
	srv     *grpc.Server    // set by listen
	lis     net.Listener    // set by listen
	exited  <-chan struct{} // from Driver.Exited, before the container is Starting
	diag    Diagnoser       // the driver, when it is a Diagnoser; else nil

	// diagnosed is closed once the pool has diagnosed the exit of the
	// container's process (watch); fault, written before, is what it
	// found, or nil when it found nothing.
	diagnosed chan struct{}
	fault     *Fault

	// The fault counters of the last Diagnosis read (atomic): a count
	// that grew since is a new fault.
	oomKillsSeen, pidsMaxSeen atomic.Int64
	// usageMark (guarded by usageMu) is the cgroup reading a failed
	// call's CPU is counted from, and billedCPU (atomic, nanoseconds) the
	// CPU the executor reported for the calls that succeeded since.
	usageMu   sync.Mutex
	usageMark Stats
	billedCPU atomic.Int64

	// Atomic.
	expectReady atomic.Bool             // a Session may begin now
	sess        atomic.Pointer[session] // the current session; nil before the first Ready
	function    atomic.Pointer[string]  // the function served; nil for a stem cell
	calls       atomic.Int64            // calls served
	logRing     atomic.Pointer[LogRing] // where the process's output lines go

	// freezeMu orders freezer writes: a thaw never overtakes the freeze it
	// undoes. It is held across Driver.Freeze and Driver.Thaw and nothing
	// longer, and taken before Pool.mu, never while holding it.
	freezeMu sync.Mutex

	// Guarded by Pool.mu.
	state       State // set by Pool.setStateLocked only; a new Container is Creating
	active      int   // calls holding the container
	memory      int64 // bytes charged to the node budget (budget.go)
	limit       int64 // the memory limit: the charge in every state but Frozen
	frozenUse   int64 // cgroup memory read at the last freeze; 0 before
	lastUsed    time.Time
	set         *set   // the function's set once adopted; nil for a stem cell
	revision    string // the function revision it runs, once adopted
	retired     bool   // stop when the last call releases it
	firstKind   StartKind
	fresh       bool // not handed to any call yet
	freezeTimer Timer
	idleTimer   Timer

	stopOnce sync.Once // runs shutdown's work once
	goneOnce sync.Once // closes gone once
}

// ID returns the container's id.
func (c *Container) ID() string { return c.id }

// Function returns the name of the function the container serves, or ""
// for a stem cell.
func (c *Container) Function() string {
	if f := c.function.Load(); f != nil {
		return *f
	}
	return ""
}

// Logs returns the recent output of the container's process.
func (c *Container) Logs() []byte { return c.logs.Bytes() }

// Invoke runs one call in the container and returns its Result. It fails with
// an error wrapping ErrExecutorFailed when the executor dies or the session
// breaks, and with ctx's error when ctx ends first (the executor is told to
// cancel the call).
//
// When the session ended because the container's process exited, Invoke
// waits (at most DiagnoseWait, not past ctx) for the pool's diagnosis of
// the exit and fails with a *Fault saying why. When the handler failed the
// call (Result.error set) and the driver is a Diagnoser whose reading shows
// a process killed at the memory limit or a fork refused at the pids limit
// since the last reading, Invoke returns the Result and a *Fault. A call
// that succeeds pays for none of this.
func (c *Container) Invoke(ctx context.Context, inv *pb.Invoke) (*pb.Result, error) {
	s := c.sess.Load()
	if s == nil {
		return nil, fmt.Errorf("%w: container %s is not ready", ErrExecutorFailed, c.id)
	}
	res, err := s.invoke(ctx, inv)
	c.calls.Add(1)
	if err != nil {
		if errors.Is(err, ErrExecutorFailed) {
			err = c.explain(ctx, err)
		}
		return nil, err
	}
	c.billedCPU.Add(res.CpuUserNs + res.CpuSysNs)
	if res.Error != "" && res.ErrorClass == "" {
		if f := c.faultOfFailedCall(ctx); f != nil {
			return res, f
		}
	}
	return res, nil
}

// Done returns a channel closed when the container's current session has
// ended.
func (c *Container) Done() <-chan struct{} {
	if s := c.sess.Load(); s != nil {
		return s.done
	}
	return nil
}

// hasExited reports whether the container's process has exited.
func (c *Container) hasExited() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// alive reports whether the container has a live session.
func (c *Container) alive() bool {
	s := c.sess.Load()
	if s == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// listen creates the container's host directory and the agent's socket in it,
// and starts serving the executor's Session on it. A message from the
// executor over maxRecv bytes ends the Session before it is read.
func (c *Container) listen(maxRecv int) error {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("create container dir: %w", err)
	}
	sock := filepath.Join(c.dir, SocketName)
	if len(sock) >= 108 {
		return fmt.Errorf("socket path %q is too long for a unix socket: use a shorter data dir", sock)
	}
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	// Only the container's user may connect. Without root (unit tests)
	// the socket stays the agent's own.
	if os.Geteuid() == 0 {
		if err := os.Chown(sock, ContainerUID, ContainerUID); err != nil {
			lis.Close()
			return fmt.Errorf("chown socket: %w", err)
		}
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		lis.Close()
		return fmt.Errorf("chmod socket: %w", err)
	}
	c.lis = lis
	c.srv = grpc.NewServer(
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
		grpc.ReadBufferSize(64<<10),
		grpc.WriteBufferSize(64<<10),
		grpc.MaxRecvMsgSize(maxRecv),
		grpc.MaxSendMsgSize(pb.MaxMessageBytes),
		grpc.MaxConcurrentStreams(1),
		// A large Result is gathered into a slice of its own and decoded
		// into another (its body), both garbage once the call is answered;
		// none is kept in gRPC's buffer pool.
		grpccodec.ServerOption(),
	)
	pb.RegisterAgentServer(c.srv, &sessionServer{c: c})
	go func() { _ = c.srv.Serve(lis) }()
	return nil
}

// waitReady waits until an executor's Ready arrived on a new session, the
// process exited, the timeout passed or ctx ended. expectReady must have been
// set before the executor could dial.
func (c *Container) waitReady(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case s := <-c.readyC:
		c.sess.Store(s)
		return nil
	case <-c.exited:
		return fmt.Errorf("%w: container %s exited before it was ready; last output:\n%s", ErrExecutorFailed, c.id, c.logs.Tail(20))
	case <-t.C:
		c.expectReady.Store(false)
		return fmt.Errorf("%w: container %s not ready after %v; last output:\n%s", ErrExecutorFailed, c.id, timeout, c.logs.Tail(20))
	case <-ctx.Done():
		c.expectReady.Store(false)
		return ctx.Err()
	}
}

// shutdown ends the session, failing the calls in flight with reason, and
// stops serving the socket. It does not touch the container itself.
func (c *Container) shutdown(reason error) {
	c.stopOnce.Do(func() {
		if s := c.sess.Load(); s != nil {
			s.close(reason)
		}
		if c.srv != nil {
			c.srv.Stop()
		}
		_ = os.RemoveAll(c.dir)
	})
}

// sessionServer accepts the executor sessions of one container: one at
// start, and one more after a stem cell's Init.
type sessionServer struct {
	pb.UnimplementedAgentServer
	c *Container
}

func (ss *sessionServer) Session(stream pb.Agent_SessionServer) error {
	if !ss.c.expectReady.CompareAndSwap(true, false) {
		return errors.New("no session expected for this container now")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	ready := first.GetReady()
	if ready == nil {
		return errors.New("first message is not Ready")
	}
	s := newSession(stream, ready)
	select {
	case ss.c.readyC <- s:
	default:
		return errors.New("nobody waits for this container")
	}
	return s.serve()
}
