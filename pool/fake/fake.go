// Package fake is a pool.Driver and a pool.Clock for tests. Each fake
// "container" is a goroutine running kiln's real executor code in-process
// against the container's socket (the Go SDK, or the stem cell executor when
// the spec names no function), so tests exercise the real executor protocol
// without containerd.
package fake

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/stem"
	"github.com/kilnfx/kiln/pool"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// ErrFrozen is what a handler call returns when it reaches a frozen fake
// container: the pool forgot to thaw it.
var ErrFrozen = errors.New("fake: call reached a frozen container")

// Driver is a fake pool.Driver. Use New.
type Driver struct {
	handler sdk.Handler

	mu         sync.Mutex
	containers map[string]*container
	// NoDial, when set, makes started containers never connect, as an
	// executor that hangs before Ready.
	NoDial bool
	// FailStart, when set, is returned by Start.
	FailStart error
	starts    int
	thaws     int
	freezes   int
	use       int64 // memory every container holds, as Stats reports it
	hook      func(op, id string) error
	diagnosis pool.Diagnosis // what Diagnose reports, Stats aside
}

type container struct {
	spec    pool.ContainerSpec
	cancel  context.CancelFunc
	exited  chan struct{}
	frozen  atomic.Bool
	memory  atomic.Int64
	loaded  atomic.Pointer[string] // function a stem cell became
	handler sdk.Handler
}

var (
	_ pool.Driver    = (*Driver)(nil)
	_ pool.Diagnoser = (*Driver)(nil)
)

// New returns a Driver whose containers serve calls with h.
func New(h sdk.Handler) *Driver {
	return &Driver{handler: h, containers: make(map[string]*container), use: 1 << 20,
		diagnosis: pool.Diagnosis{ExitCode: -1}}
}

// SetDiagnosis sets what Diagnose reports for every container: its exit
// status, signal, fault counters and limits (its Stats are Stats's). The
// default is an exit status of -1 (unknown) and no faults.
func (d *Driver) SetDiagnosis(diag pool.Diagnosis) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.diagnosis = diag
}

// Diagnose implements pool.Diagnoser with what SetDiagnosis set. The hook
// sees it as the op "diagnose".
func (d *Driver) Diagnose(ctx context.Context, id string) (pool.Diagnosis, error) {
	if err := d.before("diagnose", id); err != nil {
		return pool.Diagnosis{}, err
	}
	st, err := d.Stats(ctx, id)
	if err != nil {
		return pool.Diagnosis{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	diag := d.diagnosis
	diag.Stats, diag.HasStats = st, true
	return diag, nil
}

// SetMemoryUse sets the memory use Stats reports for every container
// (default 1 MiB).
func (d *Driver) SetMemoryUse(bytes int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.use = bytes
}

// SetHook makes the driver call f before an operation on a container: op
// is "start", "dial" (in the executor, before it connects), "freeze",
// "thaw", "update", "diagnose" or "remove". f may block, to hold the container where
// it is; an error from f is what the operation returns (for "dial", the
// executor exits without connecting). A nil f removes the hook.
func (d *Driver) SetHook(f func(op, id string) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hook = f
}

// before runs the hook, if any, for op on the container id.
func (d *Driver) before(op, id string) error {
	d.mu.Lock()
	f := d.hook
	d.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(op, id)
}

// Start implements pool.Driver.
func (d *Driver) Start(ctx context.Context, spec pool.ContainerSpec) error {
	if err := d.before("start", spec.ID); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.FailStart != nil {
		return d.FailStart
	}
	if _, ok := d.containers[spec.ID]; ok {
		return fmt.Errorf("container %s already exists", spec.ID)
	}
	d.starts++
	runCtx, cancel := context.WithCancel(context.Background())
	c := &container{spec: spec, cancel: cancel, exited: make(chan struct{})}
	c.memory.Store(spec.MemoryBytes)
	c.handler = func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		if c.frozen.Load() {
			return nil, ErrFrozen
		}
		return d.handler(ctx, req)
	}
	d.containers[spec.ID] = c
	socket := filepath.Join(spec.SocketDir, pool.SocketName)
	noDial := d.NoDial
	go func() {
		defer close(c.exited)
		if noDial {
			<-runCtx.Done()
			return
		}
		if err := d.before("dial", spec.ID); err != nil {
			return
		}
		var err error
		if spec.Function == "" {
			err = stem.Run(runCtx, socket, "go", func(init *pb.Init) error {
				name := init.Env["KILN_FUNCTION"]
				c.loaded.Store(&name)
				return sdk.RunFunction(runCtx, socket, name, c.handler)
			})
		} else {
			err = sdk.RunFunction(runCtx, socket, spec.Function, c.handler)
		}
		if err != nil && spec.Stderr != nil && runCtx.Err() == nil {
			fmt.Fprintln(spec.Stderr, "executor:", err)
		}
	}()
	return nil
}

func (d *Driver) get(id string) (*container, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[id]
	if !ok {
		return nil, fmt.Errorf("%s: %w", id, pool.ErrContainerNotFound)
	}
	return c, nil
}

// Exited implements pool.Driver.
func (d *Driver) Exited(id string) (<-chan struct{}, error) {
	c, err := d.get(id)
	if err != nil {
		return nil, err
	}
	return c.exited, nil
}

// Remove implements pool.Driver.
func (d *Driver) Remove(ctx context.Context, id string) error {
	if err := d.before("remove", id); err != nil {
		return err
	}
	d.mu.Lock()
	c, ok := d.containers[id]
	delete(d.containers, id)
	d.mu.Unlock()
	if !ok {
		return nil
	}
	c.cancel()
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// List implements pool.Driver.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]string, 0, len(d.containers))
	for id := range d.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// Stats implements pool.Driver.
func (d *Driver) Stats(ctx context.Context, id string) (pool.Stats, error) {
	if _, err := d.get(id); err != nil {
		return pool.Stats{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return pool.Stats{MemoryBytes: d.use, MemoryPeakBytes: d.use}, nil
}

// Freeze implements pool.Driver.
func (d *Driver) Freeze(ctx context.Context, id string) error {
	if err := d.before("freeze", id); err != nil {
		return err
	}
	c, err := d.get(id)
	if err != nil {
		return err
	}
	c.frozen.Store(true)
	d.mu.Lock()
	d.freezes++
	d.mu.Unlock()
	return nil
}

// Thaw implements pool.Driver.
func (d *Driver) Thaw(ctx context.Context, id string) error {
	if err := d.before("thaw", id); err != nil {
		return err
	}
	c, err := d.get(id)
	if err != nil {
		return err
	}
	c.frozen.Store(false)
	d.mu.Lock()
	d.thaws++
	d.mu.Unlock()
	return nil
}

// Update implements pool.Driver.
func (d *Driver) Update(ctx context.Context, id string, memoryBytes, cpuMillis int64) error {
	if err := d.before("update", id); err != nil {
		return err
	}
	c, err := d.get(id)
	if err != nil {
		return err
	}
	c.memory.Store(memoryBytes)
	return nil
}

// Frozen reports whether the container is frozen, and whether it exists.
func (d *Driver) Frozen(id string) (frozen, ok bool) {
	c, err := d.get(id)
	if err != nil {
		return false, false
	}
	return c.frozen.Load(), true
}

// Memory returns the container's memory limit.
func (d *Driver) Memory(id string) int64 {
	c, err := d.get(id)
	if err != nil {
		return 0
	}
	return c.memory.Load()
}

// Crash makes the container's executor exit, as a process that dies. It
// reports whether the container existed.
func (d *Driver) Crash(id string) bool {
	c, err := d.get(id)
	if err != nil {
		return false
	}
	c.cancel()
	<-c.exited
	return true
}

// Starts returns how many containers were started.
func (d *Driver) Starts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.starts
}

// Adopt registers a container as if an earlier run had left it behind.
func (d *Driver) Adopt(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	exited := make(chan struct{})
	close(exited)
	d.containers[id] = &container{cancel: func() {}, exited: exited}
}

// Env returns the environment the container was started with.
func (d *Driver) Env(id string) []string {
	c, err := d.get(id)
	if err != nil {
		return nil
	}
	return c.spec.Env
}
