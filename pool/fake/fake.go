// Package fake is a pool.Driver for tests: each "container" is a goroutine
// running the Go SDK's executor in-process against the container's socket, so
// tests exercise the real executor protocol without containerd.
package fake

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
)

// Driver is a fake pool.Driver. The zero value is not usable; use New.
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
}

type container struct {
	spec   pool.ContainerSpec
	cancel context.CancelFunc
	exited chan struct{}
}

var _ pool.Driver = (*Driver)(nil)

// New returns a Driver whose containers serve calls with h.
func New(h sdk.Handler) *Driver {
	return &Driver{handler: h, containers: make(map[string]*container)}
}

// Start implements pool.Driver.
func (d *Driver) Start(ctx context.Context, spec pool.ContainerSpec) error {
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
	d.containers[spec.ID] = c
	go func() {
		defer close(c.exited)
		if d.NoDial {
			<-runCtx.Done()
			return
		}
		err := sdk.Run(runCtx, filepath.Join(spec.SocketDir, pool.SocketName), d.handler)
		if err != nil && spec.Stderr != nil {
			fmt.Fprintln(spec.Stderr, "executor:", err)
		}
	}()
	return nil
}

// Exited implements pool.Driver.
func (d *Driver) Exited(id string) (<-chan struct{}, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[id]
	if !ok {
		return nil, fmt.Errorf("%s: %w", id, pool.ErrContainerNotFound)
	}
	return c.exited, nil
}

// Remove implements pool.Driver.
func (d *Driver) Remove(ctx context.Context, id string) error {
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
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.containers[id]; !ok {
		return pool.Stats{}, fmt.Errorf("%s: %w", id, pool.ErrContainerNotFound)
	}
	return pool.Stats{MemoryBytes: 1 << 20, MemoryPeakBytes: 1 << 20}, nil
}

// Crash makes the container's executor exit, as a process that dies. It
// reports whether the container existed.
func (d *Driver) Crash(id string) bool {
	d.mu.Lock()
	c, ok := d.containers[id]
	d.mu.Unlock()
	if ok {
		c.cancel()
		<-c.exited
	}
	return ok
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
