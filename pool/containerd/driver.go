// Package containerd is the real pool.Driver: it runs function containers
// under containerd (runtime io.containerd.runc.v2, with runc or crun) from a
// plain root filesystem directory, without snapshots. It is also a
// pool.ImageStore (images.go): imported OCI images live in containerd's
// content store, and each is run from a directory its layers are applied
// to.
//
// Every container gets the security defaults of kiln's design: uid/gid
// pool.ContainerUID, a read-only root, no capabilities, no_new_privileges,
// containerd's default seccomp profile, pids and memory limits, an optional
// CPU quota, a 16 MiB tmpfs at /tmp, its own network namespace (loopback
// only) and the container's SocketDir bind-mounted read-only at
// pool.ExecutorDir. Its cgroup is /<namespace>/<id>.
//
// Root filesystem contract: runc cannot create mount points in a read-only
// root, so ContainerSpec.RootFS must already contain the directories /proc,
// /dev, /sys, /tmp and /kiln, and its top directory must be searchable by
// pool.ContainerUID. PrepareRootFS creates them (and a minimal /etc/passwd
// and /etc/group naming uid 65534).
//
// The driver never calls containerd on a per-call path: Stats, Freeze, Thaw
// and Update read and write the container's cgroup files directly, through
// file descriptors opened once per container. On cgroup v1 the driver keeps
// an empty sentinel freezer cgroup (/<namespace>/.kiln-freeze-sentinel)
// FROZEN, which keeps the kernel's freezer switch on so that a freeze or
// thaw costs microseconds rather than milliseconds; it is never removed.
//
// The OCI runtime is crun by default (WithRuntimeBinary): it starts
// containers about 30% faster than runc here. See pool/containerd/daemon's
// WithHideCgroup2 for the hybrid cgroup hosts crun refuses.
//
// Lifecycle of a container as the driver sees it:
//
//	Start ──► created ──► running ──(exits / killed)──► exited ──Remove──► gone
//	   │ any error: task, container and FIFOs     │ Remove while containerd   ▲
//	   │ are deleted before Start returns         │ is unreachable: killed    │
//	   └──────────────────────────────────────────┼──────────────────────────►│
//	                                              ▼ through the cgroup        │
//	                                           pending ──(containerd back)────┘
//
// containerd may go away and come back (restarted, or an external daemon
// stopped) while its containers run on: see reach.go for what the driver
// does meanwhile.
//
// Only pool/containerd (and agent's managed daemon) may import containerd.
package containerd

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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/namespaces"

	"github.com/kilnfx/kiln/pool"
)

// Labels the driver sets on containers.
const (
	// LabelFunction holds ContainerSpec.Function (empty for a stem cell).
	LabelFunction = "kiln.function"
	// LabelStart identifies the Start call that created a container, so
	// that a failed create is cleaned up only when it was this driver's.
	LabelStart = "kiln.start"
	// LabelShimGroup makes containers with the same value share one
	// containerd-shim-runc-v2 process.
	LabelShimGroup = "io.containerd.runc.v2.group"
)

// runtimeName is the containerd runtime every container uses.
const runtimeName = "io.containerd.runc.v2"

// DefaultRuntimeBinary is the OCI runtime used without WithRuntimeBinary.
const DefaultRuntimeBinary = "crun"

var (
	// ErrClosed is returned (wrapped) by every method after Close.
	ErrClosed = errors.New("driver closed")
	// ErrInvalidSpec is returned (wrapped) by Start for a ContainerSpec it
	// refuses; nothing was created.
	ErrInvalidSpec = errors.New("invalid container spec")
	// ErrContainerExists is returned (wrapped) by Start when the id is taken,
	// by this driver or by a container an earlier run left behind.
	ErrContainerExists = errors.New("container already exists")
)

var _ pool.Driver = (*Driver)(nil)
var _ pool.SpecChecker = (*Driver)(nil)
var _ pool.RootFSPreparer = (*Driver)(nil)

// PrepareRootFS implements pool.RootFSPreparer with the package's
// PrepareRootFS.
func (d *Driver) PrepareRootFS(dir string) error { return PrepareRootFS(dir) }

// Option configures New.
type Option func(*options)

type options struct {
	namespace   string
	runcRoot    string
	binary      string
	shimGroup   string
	stateDir    string
	killTimeout time.Duration
	callTimeout time.Duration
	dialTimeout time.Duration
	cgroupRoot  string
	cpus        string // cpuset.cpus of every container; "" for all
	pullTimeout time.Duration
	log         *slog.Logger
}

// WithNamespace sets the containerd namespace (default "kiln"). It is also
// the first element of every container's cgroup path.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithRuncRoot sets the OCI runtime's --root directory for container state
// (default: the shim's, /run/containerd/runc/<namespace>).
func WithRuncRoot(dir string) Option { return func(o *options) { o.runcRoot = dir } }

// WithRuntimeBinary sets the OCI runtime the runc shim executes (its
// BinaryName option), as a name on the daemon's PATH or an absolute path:
// "crun" (default) or "runc".
//
// crun is the default because it brings a container up about 30% faster
// than runc (BenchmarkStartInterleaved: p50 108 ms against 155 ms on a
// 2-vCPU VM). crun 1.x refuses hybrid cgroup hosts whose cgroup2 hierarchy
// holds any controller; a containerd started by pool/containerd/daemon hides that
// mount from itself and its runtimes (daemon.WithHideCgroup2), otherwise
// use "runc" on such hosts. Start's error says so when it happens.
func WithRuntimeBinary(name string) Option { return func(o *options) { o.binary = name } }

// WithShimGroup makes every container of this driver share one shim process
// (label io.containerd.runc.v2.group=name); "" gives each container its own
// shim, the default. A grouped shim exits when its last container is
// deleted.
func WithShimGroup(name string) Option { return func(o *options) { o.shimGroup = name } }

// WithStateDir sets the host directory where the driver keeps per-container
// files (stdout/stderr FIFOs); default /run/kiln/<namespace>. It must not be
// visible to containers.
func WithStateDir(dir string) Option { return func(o *options) { o.stateDir = dir } }

// WithKillTimeout bounds how long Remove waits for a killed process to exit
// when ctx has no earlier deadline, and how long Start's cleanup after a
// failure may take (default 10s).
func WithKillTimeout(d time.Duration) Option { return func(o *options) { o.killTimeout = d } }

// WithCallTimeout bounds the containerd calls of one Start (default 30s).
// Start checks its ctx between calls but lets a call in flight finish:
// interrupting task creation would leak a half-created runc container.
func WithCallTimeout(d time.Duration) Option { return func(o *options) { o.callTimeout = d } }

// WithDialTimeout bounds New's connection to containerd (default 10s).
func WithDialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// WithLogger sets where the driver reports containerd going away and coming
// back, and containers it could delete only later (default: nowhere).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Driver runs pool containers under containerd. Its methods are safe for
// concurrent use.
type Driver struct {
	client  *containerd.Client
	address string
	opts    options
	log     *slog.Logger
	// runtimeOpts is passed to the runc shim with every container.
	runtimeOpts *runcoptions.Options
	// setSwap is false on cgroup v1 without swap accounting, where runc
	// cannot set memory+swap.
	setSwap bool
	// nonce and seq make LabelStart tokens unique.
	nonce string
	seq   atomic.Uint64

	// ctx lives as long as the Driver: task.Wait streams run under it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the connection monitor and flushes of pending

	// reachable says whether containerd answered last (see reach.go).
	// Changes are made under upMu.
	reachable atomic.Bool
	upMu      sync.Mutex
	upC       chan struct{} // guarded by upMu: closed when containerd next becomes reachable
	flushMu   sync.Mutex    // serialises flushes of pending

	mu       sync.RWMutex
	ctrs     map[string]*container // guarded by mu
	starting map[string]struct{}   // guarded by mu
	// pending (guarded by mu) holds the containers whose processes Remove
	// killed while containerd was unreachable, to delete once it answers:
	// the driver's record, or nil for a container known only by its id.
	pending map[string]*container
	closed  bool // guarded by mu

	// imageMu serialises the making and removing of image root
	// filesystem directories (images.go).
	imageMu sync.Mutex
}

// container is the driver's record of a container it started.
type container struct {
	id     string
	cgroup string // cgroup path, "/<namespace>/<id>"
	dir    string // FIFO dir, "" when the container has no output streams
	ctr    containerd.Container
	task   containerd.Task

	exited     chan struct{}
	exitOnce   sync.Once
	cancelWait context.CancelFunc
	// exitStatus and exitKnown are the task's exit status as its wait
	// reported it; written once, before exited is closed, and read only
	// after.
	exitStatus uint32
	exitKnown  bool

	statsMu sync.Mutex
	stats   cgroupStats // guarded by statsMu

	freezeMu sync.Mutex
	freezer  freezer // guarded by freezeMu
	removed  bool    // guarded by freezeMu: being removed, freezer closed
}

func (c *container) markExited() { c.exitOnce.Do(func() { close(c.exited) }) }

// New connects to the containerd daemon at address (a unix socket path) and
// checks that it answers within ctx and the dial timeout. The Driver manages
// the containers of one namespace. The Driver's background work (waiting for
// task exits) lives until Close, independent of ctx's cancellation.
func New(ctx context.Context, address string, opts ...Option) (*Driver, error) {
	o := options{
		namespace:   "kiln",
		binary:      DefaultRuntimeBinary,
		killTimeout: 10 * time.Second,
		callTimeout: 30 * time.Second,
		dialTimeout: 10 * time.Second,
		pullTimeout: DefaultPullTimeout,
		cgroupRoot:  "/sys/fs/cgroup",
		log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := identifiers.Validate(o.namespace); err != nil {
		return nil, fmt.Errorf("containerd driver: namespace: %w", err)
	}
	if o.stateDir == "" {
		o.stateDir = filepath.Join("/run/kiln", o.namespace)
	}
	if !filepath.IsAbs(o.stateDir) {
		return nil, fmt.Errorf("containerd driver: state dir %q is not absolute", o.stateDir)
	}
	if o.binary == "" {
		o.binary = DefaultRuntimeBinary
	}
	client, err := containerd.New(address,
		containerd.WithDefaultNamespace(o.namespace),
		containerd.WithTimeout(o.dialTimeout))
	if err != nil {
		return nil, fmt.Errorf("containerd driver: connect %s: %w", address, err)
	}
	nsctx := namespaces.WithNamespace(ctx, o.namespace)
	if _, err := client.Version(nsctx); err != nil {
		client.Close()
		return nil, fmt.Errorf("containerd driver: version: %w", err)
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		client.Close()
		return nil, fmt.Errorf("containerd driver: %w", err)
	}
	d := &Driver{
		nonce:    hex.EncodeToString(nonce[:]),
		client:   client,
		address:  address,
		opts:     o,
		log:      o.log,
		setSwap:  swapAccounting(o.cgroupRoot),
		upC:      make(chan struct{}),
		ctrs:     make(map[string]*container),
		starting: make(map[string]struct{}),
		pending:  make(map[string]*container),
	}
	d.runtimeOpts = &runcoptions.Options{Root: o.runcRoot, BinaryName: o.binary}
	d.ctx, d.cancel = context.WithCancel(namespaces.WithNamespace(context.WithoutCancel(ctx), o.namespace))
	d.setupSentinel()
	d.reachable.Store(true)
	d.wg.Add(1)
	go d.monitor(client.Conn())
	return d, nil
}

// swapAccounting reports whether runc can set a memory+swap limit: always on
// cgroup v2 (memory.swap.max), on v1 only with swap accounting enabled.
func swapAccounting(root string) bool {
	if _, err := os.Stat(filepath.Join(root, "memory", "memory.limit_in_bytes")); err != nil {
		return true // no v1 memory controller: v2
	}
	_, err := os.Stat(filepath.Join(root, "memory", "memory.memsw.limit_in_bytes"))
	return err == nil
}

// Namespace returns the containerd namespace the driver manages.
func (d *Driver) Namespace() string { return d.opts.namespace }

// Close stops the driver's background work and closes the connection to
// containerd. Containers keep running; a later Driver finds them with List
// and removes them with Remove. Containers that Remove left pending are
// deleted first if containerd answers, within the kill timeout; the others
// are left to a later Driver too. After Close, channels returned by Exited
// for still-running containers are never closed, and every method returns
// ErrClosed. Close is idempotent.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	ctrs := d.ctrs
	d.ctrs = nil
	d.mu.Unlock()
	if d.reachable.Load() {
		ctx, cancel := context.WithTimeout(d.ctx, d.opts.killTimeout)
		d.flushPending(ctx)
		cancel()
	}
	d.mu.RLock()
	if n := len(d.pending); n > 0 {
		d.log.Warn("containers left in containerd for the next start to delete", "containers", n)
	}
	d.mu.RUnlock()
	d.cancel()
	d.wg.Wait()
	for _, c := range ctrs {
		c.statsMu.Lock()
		c.stats.close()
		c.statsMu.Unlock()
		c.freezeMu.Lock()
		c.freezer.close()
		c.removed = true
		c.freezeMu.Unlock()
	}
	return d.client.Close()
}

// withNS returns ctx carrying the driver's namespace.
func (d *Driver) withNS(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, d.opts.namespace)
}

// ctrDir is the driver-owned host directory of container id.
func (d *Driver) ctrDir(id string) string { return filepath.Join(d.opts.stateDir, id) }

// CgroupPath returns the cgroup path of a container this driver started,
// relative to a cgroup hierarchy root: "/<namespace>/<id>". It returns
// pool.ErrContainerNotFound (wrapped) for an unknown id.
func (d *Driver) CgroupPath(id string) (string, error) {
	c, err := d.get(id)
	if err != nil {
		return "", err
	}
	return c.cgroup, nil
}

// get returns the record of a container this driver started.
func (d *Driver) get(id string) (*container, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, ErrClosed
	}
	c, ok := d.ctrs[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, pool.ErrContainerNotFound)
	}
	return c, nil
}

// Exited returns a channel closed when the process of container id exits
// (by itself, by a signal, or because Remove killed it). It returns
// pool.ErrContainerNotFound (wrapped) for a container this Driver did not
// start or has removed.
func (d *Driver) Exited(id string) (<-chan struct{}, error) {
	c, err := d.get(id)
	if err != nil {
		return nil, err
	}
	return c.exited, nil
}

// Start creates container spec.ID and starts its process; see the package
// doc for what the container gets. It returns once the process has been
// started. An invalid spec yields ErrInvalidSpec, a taken id
// ErrContainerExists. While containerd is unreachable it fails at once, and
// when containerd cannot be reached during Start it fails, with an error
// wrapping pool.ErrUnavailable. On any error, whatever Start created (task,
// container, FIFOs) is deleted before it returns, even when ctx was
// cancelled; what containerd, gone meanwhile, could not delete is killed
// through its cgroup and deleted once containerd answers again. Start
// checks ctx before each of its three containerd calls (create container,
// create task, start task) but lets a call in flight finish, bounded by the
// call timeout, so it may return up to one call's time after ctx is done.
func (d *Driver) Start(ctx context.Context, spec pool.ContainerSpec) (err error) {
	if err := validate(spec); err != nil {
		return err
	}
	id := spec.ID
	if !d.reachable.Load() {
		return fmt.Errorf("start %q: %w: containerd does not answer on %s", id, pool.ErrUnavailable, d.address)
	}
	defer func() {
		if err != nil && !errors.Is(err, pool.ErrUnavailable) && unreachable(err) {
			err = fmt.Errorf("%w: %w", pool.ErrUnavailable, err)
		}
	}()
	specOpts := d.specOpts(spec)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	_, known := d.ctrs[id]
	_, starting := d.starting[id]
	_, pending := d.pending[id]
	if known || starting || pending {
		d.mu.Unlock()
		return fmt.Errorf("start %q: %w", id, ErrContainerExists)
	}
	d.starting[id] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.starting, id)
		d.mu.Unlock()
	}()

	// Each containerd call, once begun, runs to completion under opCtx, and
	// ctx is checked between calls: cancelling task creation half way kills
	// runc create and leaks a cgroup and a shim that containerd does not
	// clean up.
	opCtx, cancelOp := context.WithTimeout(context.WithoutCancel(d.withNS(ctx)), d.opts.callTimeout)
	defer cancelOp()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start %q: %w", id, err)
	}
	token := d.nonce + "." + strconv.FormatUint(d.seq.Add(1), 10)
	labels := map[string]string{LabelFunction: spec.Function, LabelStart: token}
	if d.opts.shimGroup != "" {
		labels[LabelShimGroup] = d.opts.shimGroup
	}
	ctr, err := d.client.NewContainer(opCtx, id,
		containerd.WithRuntime(runtimeName, d.runtimeOpts),
		containerd.WithNewSpec(specOpts...),
		containerd.WithContainerLabels(labels),
	)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("start %q: %w: %w", id, ErrContainerExists, err)
		}
		// The call may have failed after containerd stored the container
		// (a timeout, a lost connection): delete it if it is this one.
		if cerr := d.deleteIfCreated(opCtx, id, token); cerr != nil {
			if unreachable(cerr) {
				// No task was made, so nothing runs: delete it later.
				d.addPending(id, nil)
			}
			return fmt.Errorf("start %q: create container: %w (cleanup: %v)", id, err, cerr)
		}
		return fmt.Errorf("start %q: create container: %w", id, err)
	}

	c := &container{
		id:     id,
		cgroup: cgroupPath(d.opts.namespace, id),
		ctr:    ctr,
		exited: make(chan struct{}),
	}
	defer func() {
		if err != nil {
			if cerr := d.cleanup(opCtx, c); cerr != nil {
				if unreachable(cerr) {
					if oerr := d.removeOffline(opCtx, id, c); oerr != nil {
						cerr = fmt.Errorf("%w; %v", cerr, oerr)
					}
				}
				err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
			}
		}
	}()

	ioCreator := cio.NullIO
	if spec.Stdout != nil || spec.Stderr != nil {
		c.dir = d.ctrDir(id)
		if err := os.MkdirAll(c.dir, 0o700); err != nil {
			return fmt.Errorf("start %q: %w", id, err)
		}
		ioCreator = cio.NewCreator(cio.WithStreams(nil, orDiscard(spec.Stdout), orDiscard(spec.Stderr)), cio.WithFIFODir(c.dir))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start %q: %w", id, err)
	}
	task, err := ctr.NewTask(opCtx, ioCreator)
	if err != nil {
		if strings.Contains(err.Error(), "hybrid mode not supported") {
			return fmt.Errorf("start %q: create task: %w (crun cannot run on this hybrid cgroup host as containerd "+
				"sees it: start containerd with pool/containerd/daemon (WithHideCgroup2) or use WithRuntimeBinary(\"runc\"))", id, err)
		}
		return fmt.Errorf("start %q: create task: %w", id, err)
	}
	c.task = task

	// Wait before Start so that no exit can be missed; the wait outlives ctx.
	waitCtx, cancelWait := context.WithCancel(d.ctx)
	c.cancelWait = cancelWait
	exitC, err := task.Wait(waitCtx)
	if err != nil {
		return fmt.Errorf("start %q: wait: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start %q: %w", id, err)
	}
	if err := task.Start(opCtx); err != nil {
		return fmt.Errorf("start %q: start task: %w", id, err)
	}

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	d.ctrs[id] = c
	d.mu.Unlock()
	go d.watch(waitCtx, c, exitC)
	return nil
}

// cleanup deletes what a failed Start created. It runs under its own bounded
// context: a cancelled ctx must not leave a container behind.
func (d *Driver) cleanup(ctx context.Context, c *container) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.opts.killTimeout)
	defer cancel()
	var errs []error
	task := c.task
	if task == nil {
		// NewTask may have failed on the client side (a cancelled ctx) after
		// containerd created the task.
		if t, err := c.ctr.Task(ctx, nil); err == nil {
			task = t
		}
	}
	if task != nil {
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete task: %w", err))
		}
	}
	if c.cancelWait != nil {
		c.cancelWait()
	}
	if err := c.ctr.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete container: %w", err))
	}
	if c.dir != "" {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	d.removeCgroups(c.cgroup)
	return errors.Join(errs...)
}

// deleteIfCreated deletes container id if it carries the start token, that
// is, if the Start that made token created it after all.
func (d *Driver) deleteIfCreated(ctx context.Context, id, token string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.killTimeout)
	defer cancel()
	ctr, err := d.client.ContainerService().Get(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ctr.Labels[LabelStart] != token {
		return nil // someone else's
	}
	if err := d.client.ContainerService().Delete(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// removeCgroups removes the (empty) cgroup directories of cgroup path cg in
// every hierarchy, best effort. runc removes them when it deletes a
// container; this catches those a runc killed half way through create left
// behind. rmdir fails harmlessly on a cgroup that still has processes.
func (d *Driver) removeCgroups(cg string) {
	entries, err := os.ReadDir(d.opts.cgroupRoot)
	if err != nil {
		return
	}
	_ = syscall.Rmdir(filepath.Join(d.opts.cgroupRoot, cg)) // pure cgroup v2
	for _, e := range entries {
		if e.IsDir() {
			_ = syscall.Rmdir(filepath.Join(d.opts.cgroupRoot, e.Name(), cg))
		}
	}
}

// watch closes c.exited when the task exits. A failed wait (the daemon
// restarting) is retried with backoff, and at once when containerd becomes
// reachable again, until the task is found gone or ctx (Remove, Close) ends
// it. Background only: nothing waits on this loop.
func (d *Driver) watch(ctx context.Context, c *container, exitC <-chan containerd.ExitStatus) {
	delay := 50 * time.Millisecond
	for {
		st, ok := <-exitC
		if !ok {
			// Closed without a status: treat like a failed wait.
			st = containerd.ExitStatus{}
		}
		err := st.Error()
		if ok && err == nil {
			c.markExitedWith(st.ExitCode())
			return
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil && errdefs.IsNotFound(errdefs.FromGRPC(err)) {
			c.markExited()
			return
		}
		up := d.reconnected()
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-up:
			t.Stop()
		}
		delay = min(2*delay, 5*time.Second)
		exitC, err = c.task.Wait(ctx)
		if err != nil {
			exitC = closedExit
		}
	}
}

// closedExit is a closed channel standing in for a wait that failed to start.
var closedExit = func() <-chan containerd.ExitStatus {
	c := make(chan containerd.ExitStatus)
	close(c)
	return c
}()

// Remove kills container id's process (SIGKILL) if it runs, waits for it to
// exit, and deletes the task, the container and the driver's files for it.
// It also removes containers an earlier process left behind (found in
// containerd by id). The wait for exit is bounded by ctx and the kill
// timeout. Removing a missing container returns nil. After a successful
// Remove the channel from Exited is closed. On error the container may
// remain; Remove can be retried.
//
// While containerd is unreachable, Remove kills the container's processes
// through its cgroup instead and returns nil once none is left; the task
// and the container are deleted when containerd answers again (see
// reach.go).
func (d *Driver) Remove(ctx context.Context, id string) error {
	if err := identifiers.Validate(id); err != nil {
		return nil // no such container can exist
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	c := d.ctrs[id]
	delete(d.ctrs, id)
	d.mu.Unlock()

	ctx = d.withNS(ctx)
	var err error
	offline := !d.reachable.Load()
	switch {
	case offline:
		err = d.removeOffline(ctx, id, c)
	case c == nil:
		err = d.removeLeftover(ctx, id)
	default:
		err = d.removeKnown(ctx, c)
	}
	if err != nil && !offline && (unreachable(err) || !d.reachable.Load()) {
		// containerd went away during the removal.
		err = d.removeOffline(ctx, id, c)
	}
	if err == nil {
		return nil
	}
	if c != nil {
		d.mu.Lock()
		if _, taken := d.ctrs[id]; !taken && !d.closed {
			c.freezeMu.Lock()
			c.removed = false
			c.freezeMu.Unlock()
			d.ctrs[id] = c
		}
		d.mu.Unlock()
	}
	return fmt.Errorf("remove %q: %w", id, err)
}

// removeKnown removes a container this driver started.
func (d *Driver) removeKnown(ctx context.Context, c *container) error {
	killCtx, cancel := context.WithTimeout(ctx, d.opts.killTimeout)
	defer cancel()
	select {
	case <-c.exited:
		d.thawForKill(c)
	default:
		// Killing through the cgroup spares the runtime's kill (a shim
		// call and an OCI runtime process): a third of what a removal
		// costs containerd.
		if !d.killFrozen(killCtx, c) {
			if err := c.task.Kill(killCtx, syscall.SIGKILL); err != nil &&
				!errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
				return fmt.Errorf("kill: %w", err)
			}
		}
		select {
		case <-c.exited:
		case <-killCtx.Done():
			return fmt.Errorf("wait for exit: %w", killCtx.Err())
		}
	}
	if _, err := c.task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task: %w", err)
	}
	c.cancelWait()
	if err := c.ctr.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container: %w", err)
	}
	c.statsMu.Lock()
	c.stats.close()
	c.statsMu.Unlock()
	if c.dir != "" {
		if err := os.RemoveAll(c.dir); err != nil {
			return err
		}
	}
	c.markExited()
	return nil
}

// removeLeftover removes a container this Driver did not start: one left by
// an earlier process, or none at all.
func (d *Driver) removeLeftover(ctx context.Context, id string) error {
	ctr, err := d.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return d.removeDir(id)
	}
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	d.thawCgroup(cgroupPath(d.opts.namespace, id))
	task, err := ctr.Task(ctx, nil)
	switch {
	case err == nil:
		killCtx, cancel := context.WithTimeout(ctx, d.opts.killTimeout)
		_, err := task.Delete(killCtx, containerd.WithProcessKill)
		cancel()
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task: %w", err)
		}
	case errdefs.IsNotFound(err):
	default:
		return fmt.Errorf("load task: %w", err)
	}
	if err := ctr.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container: %w", err)
	}
	d.removeCgroups(cgroupPath(d.opts.namespace, id))
	return d.removeDir(id)
}

func (d *Driver) removeDir(id string) error {
	return os.RemoveAll(d.ctrDir(id))
}

// List returns the ids of every container in the driver's namespace,
// including those an earlier process left behind and ones not created by
// kiln at all. It honours ctx.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	d.mu.RLock()
	closed := d.closed
	d.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	ctrs, err := d.client.ContainerService().List(d.withNS(ctx))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	ids := make([]string, len(ctrs))
	for i, c := range ctrs {
		ids[i] = c.ID
	}
	return ids, nil
}

// Stats reads container id's CPU and memory counters from its cgroup files,
// without calling containerd. The files are opened on the first call and
// kept open until Remove or Close. It returns pool.ErrContainerNotFound
// (wrapped) for a container this Driver did not start.
func (d *Driver) Stats(ctx context.Context, id string) (pool.Stats, error) {
	c, err := d.get(id)
	if err != nil {
		return pool.Stats{}, err
	}
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	if !c.stats.opened {
		if err := c.stats.open(d.opts.cgroupRoot, c.cgroup); err != nil {
			return pool.Stats{}, fmt.Errorf("stats %q: %w", id, err)
		}
	}
	st, err := c.stats.read()
	if err != nil {
		return pool.Stats{}, fmt.Errorf("stats %q: %w", id, err)
	}
	return st, nil
}
