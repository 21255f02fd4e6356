// Package daemon supervises a private containerd daemon for kilnd.
//
// Start writes a containerd configuration under a directory the caller owns,
// runs `containerd --config <dir>/config.toml` as a child process and returns
// once the daemon answers gRPC health checks on its socket. Everything the
// daemon writes (metadata root, state, sockets, log) stays under that
// directory, so one host can run several kilnd instances side by side.
//
// Supervise and Supervisor.Run keep such a daemon running: when it exits,
// another is started in the same directory after a backoff. Because the
// state directory persists, the new daemon reconnects to the shims of the
// old one and their containers keep running (checked with containerd 1.6,
// the runc v2 shim and crun). Past a restart limit the Supervisor gives up,
// and KillShims removes the shims a daemon that is gone for good left.
//
// The package deliberately does not import the containerd client: only
// pool/containerd talks to containerd's API. Readiness is a plain gRPC
// health check, which containerd serves from its healthcheck plugin.
//
// Layout of dir:
//
//	config.toml      generated configuration (rewritten by every Start)
//	containerd.log   daemon stdout and stderr (appended)
//	containerd.pid   pid of the daemon this package started
//	ctd.sock         gRPC socket (Address)
//	ctd.sock.ttrpc   ttrpc socket used by shims
//	debug.sock       debug socket
//	root/, state/, opt/   containerd's root, state and opt directories
package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// File names inside the daemon directory.
const (
	configName = "config.toml"
	logName    = "containerd.log"
	pidName    = "containerd.pid"
	grpcName   = "ctd.sock"
	ttrpcName  = "ctd.sock.ttrpc"
	debugName  = "debug.sock"
)

// maxSocketPath is the longest path a unix socket address can hold on Linux:
// sun_path is 108 bytes including the terminating NUL.
const maxSocketPath = 107

// logTailBytes is how much of containerd.log a startup error quotes.
const logTailBytes = 2048

// ErrSocketPathTooLong is returned (wrapped) by Start when dir is so long that
// a socket path under it would not fit in a unix socket address.
var ErrSocketPathTooLong = errors.New("socket path too long")

// ErrInUse is returned (wrapped) by Start when a daemon that this package did
// not start already answers on the socket in dir.
var ErrInUse = errors.New("containerd socket already in use")

// Option configures Start.
type Option func(*options)

type options struct {
	binary       string
	startTimeout time.Duration
	killWait     time.Duration
	logLevel     string
	env          []string
	hideCgroup2  bool
	cpus         *unix.CPUSet // nil: the caller's thread's
}

// WithCPUAffinity starts the daemon on the CPUs of cpus whatever the
// affinity of the calling process: a kilnd pinned to some CPUs passes the
// set it started with, so that containerd, its shims and the containers
// they start (which a CPU mask set with sched_setaffinity follows across
// fork and exec) are not confined to kilnd's CPUs.
func WithCPUAffinity(cpus unix.CPUSet) Option { return func(o *options) { o.cpus = &cpus } }

// WithBinary sets the containerd executable: a path, or a name looked up on
// PATH. The default is "containerd".
func WithBinary(path string) Option { return func(o *options) { o.binary = path } }

// WithStartTimeout bounds how long Start waits for the daemon to answer
// (default 30s). Start also stops waiting when its ctx is done.
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// WithKillWait bounds how long Stop waits for the process to go away after
// SIGKILL, and how long Start waits for a stale daemon of an earlier run to
// exit (default 10s).
func WithKillWait(d time.Duration) Option { return func(o *options) { o.killWait = d } }

// WithLogLevel sets containerd's log level ("debug", "info", "warn", ...).
// The default is "info".
func WithLogLevel(level string) Option { return func(o *options) { o.logLevel = level } }

// WithEnv sets the daemon's environment (KEY=VALUE). The default is the
// caller's environment. The shims containerd starts inherit it, so PATH must
// find containerd-shim-runc-v2 and the OCI runtime.
func WithEnv(env []string) Option { return func(o *options) { o.env = env } }

// WithHideCgroup2 says whether, on a hybrid cgroup host (cgroup v1
// controllers, plus cgroup2 mounted at /sys/fs/cgroup/unified), containerd
// runs in a private mount namespace without that cgroup2 mount, so that it,
// its shims and the OCI runtime see a plain cgroup v1 host. The default is
// true: crun refuses hybrid hosts whose cgroup2 hierarchy holds any
// controller ("cgroups in hybrid mode not supported"), and crun starts
// containers about 30% faster than runc. runc works either way; hidden, it
// just does not also place containers in the unified hierarchy. Cgroup v1
// hierarchies are shared by all mount namespaces, so kilnd still finds every
// container's cgroups (freezer, memory, cpuacct) at the usual paths. On
// other hosts the option has no effect.
func WithHideCgroup2(hide bool) Option { return func(o *options) { o.hideCgroup2 = hide } }

// Containerd is a running containerd daemon started by Start. Its methods are
// safe for concurrent use.
type Containerd struct {
	dir     string
	address string
	cmd     *exec.Cmd
	logFile *os.File
	opts    options

	exited  chan struct{}
	waitErr error // set before exited is closed

	stopOnce sync.Once
	stopErr  error
}

// Start writes a configuration under dir (created if missing), starts
// containerd with it and returns once the daemon answers a gRPC health check
// on Address. It waits at most the start timeout and no longer than ctx
// allows; on failure it kills the daemon it started and returns an error that
// quotes the tail of containerd.log.
//
// Stale sockets and a daemon left running by an earlier process that used the
// same dir (found through containerd.pid) do not prevent a start: the stale
// daemon is stopped first. A live daemon on the socket that this package did
// not start yields ErrInUse. A dir whose socket paths would exceed the unix
// socket limit yields ErrSocketPathTooLong.
func Start(ctx context.Context, dir string, opts ...Option) (*Containerd, error) {
	o := options{
		binary:       "containerd",
		startTimeout: 30 * time.Second,
		killWait:     10 * time.Second,
		logLevel:     "info",
		hideCgroup2:  true,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if dir == "" {
		return nil, errors.New("daemon: empty directory")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	for _, name := range []string{grpcName, ttrpcName, debugName} {
		if p := filepath.Join(dir, name); len(p) > maxSocketPath {
			return nil, fmt.Errorf("daemon: %s is %d bytes, limit %d: %w", p, len(p), maxSocketPath, ErrSocketPathTooLong)
		}
	}
	if strings.ContainsAny(dir, "\"\\\n") {
		return nil, fmt.Errorf("daemon: directory %q contains characters not allowed in the config", dir)
	}
	bin, err := exec.LookPath(o.binary)
	if err != nil {
		return nil, fmt.Errorf("daemon: find containerd: %w", err)
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	configPath := filepath.Join(dir, configName)
	if err := stopStale(ctx, dir, configPath, o.killWait); err != nil {
		return nil, err
	}
	address := filepath.Join(dir, grpcName)
	if err := clearSockets(dir); err != nil {
		return nil, err
	}
	if err := os.WriteFile(configPath, []byte(config(dir, o.logLevel)), 0o600); err != nil {
		return nil, fmt.Errorf("daemon: write config: %w", err)
	}
	logPath := filepath.Join(dir, logName)
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon: open log: %w", err)
	}
	logStart, _ := logFile.Seek(0, io.SeekEnd)

	cmd := exec.Command(bin, "--config", configPath)
	// Own process group: a ^C aimed at kilnd's terminal does not reach the
	// daemon directly; kilnd decides when it stops.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if o.hideCgroup2 && isHybrid(cgroupRoot) {
		cmd = hideCgroup2Command(bin, configPath, filepath.Join(cgroupRoot, "unified"))
	}
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = o.env
	if err := startWithAffinity(cmd, o.cpus); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("daemon: start %s: %w", bin, err)
	}
	c := &Containerd{
		dir:     dir,
		address: address,
		cmd:     cmd,
		logFile: logFile,
		opts:    o,
		exited:  make(chan struct{}),
	}
	go func() {
		c.waitErr = cmd.Wait()
		logFile.Close()
		close(c.exited)
	}()
	// Best effort: the pid file only helps a later Start clean up after a
	// kilnd that died without stopping its daemon.
	_ = os.WriteFile(filepath.Join(dir, pidName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)

	if err := c.waitReady(ctx); err != nil {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.killWait)
		defer cancel()
		_ = c.kill(stopCtx)
		return nil, fmt.Errorf("daemon: containerd did not become ready: %w\n--- tail of %s ---\n%s",
			err, logPath, tail(logPath, logStart, logTailBytes))
	}
	return c, nil
}

// Address returns the path of the daemon's gRPC socket.
func (c *Containerd) Address() string { return c.address }

// Dir returns the directory the daemon keeps its files in.
func (c *Containerd) Dir() string { return c.dir }

// Pid returns the daemon's process id.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }

// Exited returns a channel that is closed when the daemon process exits, for
// whatever reason (Stop, a crash, a signal from elsewhere).
func (c *Containerd) Exited() <-chan struct{} { return c.exited }

// Err returns the daemon's exit error (as from exec.Cmd.Wait) once Exited is
// closed, and nil before.
func (c *Containerd) Err() error {
	select {
	case <-c.exited:
		return c.waitErr
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits for the daemon to exit until ctx is done, then
// sends SIGKILL and waits a bounded time more. Containers keep running: their
// shims are separate processes. Stop is idempotent and safe to call
// concurrently; later calls return the first call's result. It returns nil
// when the daemon has exited, including when it had already died.
func (c *Containerd) Stop(ctx context.Context) error {
	c.stopOnce.Do(func() {
		c.stopErr = c.kill(ctx)
		if c.stopErr == nil {
			_ = os.Remove(filepath.Join(c.dir, pidName))
		}
	})
	return c.stopErr
}

// kill is SIGTERM, wait for ctx, SIGKILL, wait killWait.
func (c *Containerd) kill(ctx context.Context) error {
	select {
	case <-c.exited:
		return nil
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("daemon: SIGTERM: %w", err)
	}
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("daemon: SIGKILL: %w", err)
	}
	t := time.NewTimer(c.opts.killWait)
	defer t.Stop()
	select {
	case <-c.exited:
		return nil
	case <-t.C:
		return fmt.Errorf("daemon: pid %d still running %v after SIGKILL", c.cmd.Process.Pid, c.opts.killWait)
	}
}

// waitReady dials the socket with a short backoff until a gRPC health check
// reports SERVING, the daemon exits, ctx is done or the start timeout passes.
func (c *Containerd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.startTimeout)
	defer cancel()
	go func() {
		// Stop waiting at once if the daemon dies.
		select {
		case <-c.exited:
			cancel()
		case <-ctx.Done():
		}
	}()

	conn, err := grpc.NewClient("unix://"+c.address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  5 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.1,
				MaxDelay:   200 * time.Millisecond,
			},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	var last error
	delay := 5 * time.Millisecond
	for {
		// WaitForReady lets grpc's own reconnect backoff (short, above) wait
		// for the socket to appear.
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		resp, err := health.Check(attempt, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancelAttempt()
		switch {
		case err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING:
			return nil
		case err == nil:
			last = fmt.Errorf("health status %v", resp.GetStatus())
		default:
			last = err
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited: %v", c.waitErr)
		case <-ctx.Done():
			select {
			case <-c.exited: // the exit is what cancelled ctx
				return fmt.Errorf("containerd exited: %v", c.waitErr)
			default:
			}
			return fmt.Errorf("%w (last check: %v)", ctx.Err(), last)
		case <-time.After(delay):
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

// cgroupRoot is where the host mounts its cgroup hierarchies.
const cgroupRoot = "/sys/fs/cgroup"

// cgroup2Magic is CGROUP2_SUPER_MAGIC, the f_type statfs reports for cgroup2.
const cgroup2Magic = 0x63677270

// isHybrid reports whether root holds cgroup v1 hierarchies and a cgroup2
// mount at root/unified.
func isHybrid(root string) bool {
	var st syscall.Statfs_t
	if syscall.Statfs(root, &st) != nil || st.Type == cgroup2Magic {
		return false
	}
	return syscall.Statfs(filepath.Join(root, "unified"), &st) == nil && st.Type == cgroup2Magic
}

// startWithAffinity starts cmd from a thread whose CPU mask is cpus (when
// not nil), which the child inherits, and gives the thread its mask back.
func startWithAffinity(cmd *exec.Cmd, cpus *unix.CPUSet) error {
	if cpus == nil {
		return cmd.Start()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var own unix.CPUSet
	if err := unix.SchedGetaffinity(0, &own); err != nil {
		return fmt.Errorf("read CPU affinity: %w", err)
	}
	if err := unix.SchedSetaffinity(0, cpus); err != nil {
		return fmt.Errorf("set CPU affinity: %w", err)
	}
	err := cmd.Start()
	// Narrowing a thread back to its own mask does not fail.
	_ = unix.SchedSetaffinity(0, &own)
	return err
}

// hideCgroup2Command returns a command that runs containerd in a new mount
// namespace (Go makes every mount in it private before exec) after a lazy
// unmount of the cgroup2 mount at unified. If the unmount fails, containerd
// still starts, with a warning in its log.
func hideCgroup2Command(bin, configPath, unified string) *exec.Cmd {
	// unified is a fixed path without quotes or shell metacharacters.
	script := `umount -l '` + unified + `' || echo "kiln: could not hide ` + unified + ` from containerd" >&2; exec "$0" "$@"`
	cmd := exec.Command("/bin/sh", "-c", script, bin, "--config", configPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:      true,
		Unshareflags: syscall.CLONE_NEWNS,
	}
	return cmd
}

// stopStale stops a daemon that an earlier process started with the same
// config and did not stop (its pid is in containerd.pid). Then, if something
// else still answers on the socket, it returns ErrInUse.
func stopStale(ctx context.Context, dir, configPath string, wait time.Duration) error {
	pidPath := filepath.Join(dir, pidName)
	if b, err := os.ReadFile(pidPath); err == nil {
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid > 1 && isOurDaemon(pid, configPath) {
			if err := killPid(ctx, pid, wait); err != nil {
				return fmt.Errorf("daemon: stop stale containerd (pid %d): %w", pid, err)
			}
		}
		_ = os.Remove(pidPath)
	}
	address := filepath.Join(dir, grpcName)
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "unix", address)
	if err == nil {
		conn.Close()
		return fmt.Errorf("daemon: %s: %w", address, ErrInUse)
	}
	return nil
}

// isOurDaemon reports whether pid runs with "--config configPath" on its
// command line, so that a recycled pid is never killed.
func isOurDaemon(pid int, configPath string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == "--config" && string(args[i+1]) == configPath {
			return true
		}
	}
	return false
}

// killPid stops a process that is not our child: SIGTERM, then SIGKILL once
// half of wait has passed, polling for it to vanish. Startup only.
func killPid(ctx context.Context, pid int, wait time.Duration) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	gone := func() bool { return p.Signal(syscall.Signal(0)) != nil || isZombie(pid) }
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return nil // already gone
	}
	deadline := time.Now().Add(wait)
	killed := false
	for !gone() {
		if !killed && time.Now().After(deadline.Add(-wait/2)) {
			_ = p.Signal(syscall.SIGKILL)
			killed = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still running after %v", pid, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// isZombie reports whether pid has exited but not been reaped (its parent is
// not us, so we cannot reap it).
func isZombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}

// KillShims sends SIGKILL to every containerd shim serving the daemon of
// dir: the processes named containerd-shim* whose command line gives dir's
// socket as -address. It is for a caller that gave up on the daemon and
// must not leave the shims behind; the processes of the shims' containers
// are not touched (kill them first). Their state stays under dir, and the
// next daemon started there cleans it up. It returns how many shims it
// signalled.
func KillShims(dir string) (int, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return 0, fmt.Errorf("daemon: %w", err)
	}
	address := filepath.Join(dir, grpcName)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("daemon: %w", err)
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !isShimOf(pid, address) {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n, nil
}

// isShimOf reports whether pid is a containerd shim started by the daemon
// listening on address.
func isShimOf(pid int, address string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	if !strings.HasPrefix(filepath.Base(string(args[0])), "containerd-shim") {
		return false
	}
	for i := 1; i+1 < len(args); i++ {
		if string(args[i]) == "-address" && string(args[i+1]) == address {
			return true
		}
	}
	return false
}

// clearSockets removes socket files a killed daemon left behind; containerd
// unlinks them too, but removing them first means a dial can only reach the
// daemon this Start launches.
func clearSockets(dir string) error {
	for _, name := range []string{grpcName, ttrpcName, debugName} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("daemon: remove stale socket: %w", err)
		}
	}
	return nil
}

// config returns containerd's configuration: everything under dir, the CRI
// plugin disabled, metrics off.
func config(dir, logLevel string) string {
	q := strconv.Quote
	j := func(name string) string { return q(filepath.Join(dir, name)) }
	return `version = 2
root = ` + j("root") + `
state = ` + j("state") + `
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = ` + j(grpcName) + `

[ttrpc]
  address = ` + j(ttrpcName) + `

[debug]
  address = ` + j(debugName) + `
  level = ` + q(logLevel) + `

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = ` + j("opt") + `
`
}

// tail returns at most n bytes from the end of the file at path, starting no
// earlier than offset from.
func tail(path string, from int64, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	start := max(from, end-n)
	b := make([]byte, end-start)
	k, _ := f.ReadAt(b, start)
	return string(b[:k])
}
