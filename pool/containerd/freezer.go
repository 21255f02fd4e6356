package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/pool"
)

// sentinelName is the freezer cgroup, under the namespace's, that the driver
// keeps FROZEN. While any v1 freezer cgroup is frozen the kernel's
// freezer_active static key stays on, and freezing or thawing a container
// costs microseconds instead of the milliseconds of flipping that key. The
// leading dot keeps it apart from container ids, which start with a letter
// or digit. It is left in place by Close and reused by the next Driver.
const sentinelName = ".kiln-freeze-sentinel"

// freezer holds a container's open cgroup freeze control file.
type freezer struct {
	opened bool
	v2     bool
	// state is freezer.state (v1) or cgroup.freeze (v2), opened read-write.
	state *os.File
	// events is cgroup.events (v2 only), where "frozen 1" confirms a freeze.
	events *os.File
	buf    [256]byte
}

// Values written to the control files.
var (
	v1Frozen = []byte("FROZEN")
	v1Thawed = []byte("THAWED")
	v2Frozen = []byte("1")
	v2Thawed = []byte("0")
)

func (f *freezer) open(root, cg string) error {
	p := filepath.Join(root, "freezer", cg, "freezer.state")
	st, err := os.OpenFile(p, os.O_RDWR, 0)
	if err == nil {
		f.state, f.opened = st, true
		return nil
	}
	for _, base := range []string{filepath.Join(root, "unified"), root} {
		dir := filepath.Join(base, cg)
		st, err := os.OpenFile(filepath.Join(dir, "cgroup.freeze"), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		ev, err := os.Open(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			st.Close()
			return err
		}
		f.state, f.events, f.v2, f.opened = st, ev, true, true
		return nil
	}
	return fmt.Errorf("no freezer cgroup %s under %s: %w", cg, root, os.ErrNotExist)
}

func (f *freezer) close() {
	closeFile(&f.state)
	closeFile(&f.events)
	f.opened = false
}

// write writes b to the control file.
func (f *freezer) write(b []byte) error {
	if _, err := f.state.WriteAt(b, 0); err != nil {
		return fmt.Errorf("write %s: %w", f.state.Name(), err)
	}
	return nil
}

// frozen reports whether the kernel has finished freezing the cgroup.
func (f *freezer) frozen() (bool, error) {
	file := f.state
	if f.v2 {
		file = f.events
	}
	n, err := file.ReadAt(f.buf[:], 0)
	if n == 0 && err != nil {
		return false, fmt.Errorf("read %s: %w", file.Name(), err)
	}
	b := f.buf[:n]
	if f.v2 {
		v, ok := field(b, "frozen")
		return ok && v == 1, nil
	}
	return bytes.HasPrefix(b, v1Frozen), nil
}

// freeze writes the frozen state and waits until the kernel reports every
// task frozen: first by re-reading the state (a freeze with the sentinel
// in place completes in microseconds), then, for a slow freeze, with a
// backoff from 100 µs. On ctx expiry it thaws the cgroup again.
func (f *freezer) freeze(ctx context.Context) error {
	on := v1Frozen
	if f.v2 {
		on = v2Frozen
	}
	if err := f.write(on); err != nil {
		return err
	}
	var timer *time.Timer
	delay := 100 * time.Microsecond
	for i := 0; ; i++ {
		ok, err := f.frozen()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if i < 50 {
			runtime.Gosched()
			continue
		}
		if timer == nil {
			timer = time.NewTimer(delay)
			defer timer.Stop()
		} else {
			timer.Reset(delay)
		}
		select {
		case <-ctx.Done():
			_ = f.thaw()
			return fmt.Errorf("freeze: %w", ctx.Err())
		case <-timer.C:
		}
		delay = min(2*delay, 10*time.Millisecond)
		if !f.v2 && i%20 == 0 {
			// A v1 freeze can stall in FREEZING; writing FROZEN again
			// retries the tasks that were busy.
			if err := f.write(on); err != nil {
				return err
			}
		}
	}
}

func (f *freezer) thaw() error {
	if f.v2 {
		return f.write(v2Thawed)
	}
	return f.write(v1Thawed)
}

// freezerFor returns c's open freezer; the caller holds c.freezeMu.
func (d *Driver) freezerFor(c *container) (*freezer, error) {
	if c.removed {
		return nil, fmt.Errorf("container %q: %w", c.id, pool.ErrContainerNotFound)
	}
	if !c.freezer.opened {
		if err := c.freezer.open(d.opts.cgroupRoot, c.cgroup); err != nil {
			return nil, fmt.Errorf("container %q: %w", c.id, err)
		}
	}
	return &c.freezer, nil
}

// Freeze stops every process of container id with the cgroup freezer and
// returns once the kernel reports the cgroup frozen. It writes the cgroup
// directly (v1 freezer.state, v2 cgroup.freeze), never calling containerd.
// It waits for the freeze at most until ctx is done, then thaws the
// container again and returns ctx's error. Freezing a frozen container is a
// no-op. It returns pool.ErrContainerNotFound (wrapped) for a container this
// Driver did not start. Freeze and Thaw of one container are serialised.
func (d *Driver) Freeze(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	f, err := d.freezerFor(c)
	if err != nil {
		return err
	}
	if err := f.freeze(ctx); err != nil {
		return fmt.Errorf("freeze %q: %w", id, err)
	}
	return nil
}

// Thaw resumes container id's processes with one write to its freezer
// control file, through a file descriptor kept open since the first Freeze
// or Thaw; it does not wait (a v1 thaw takes effect within the write).
// Thawing a running container is a no-op. It returns
// pool.ErrContainerNotFound (wrapped) for a container this Driver did not
// start. It does not allocate on success.
func (d *Driver) Thaw(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	f, err := d.freezerFor(c)
	if err != nil {
		return err
	}
	return f.thaw()
}

// killFrozen kills every process of c through its cgroup, without
// containerd, and reports whether it did: on cgroup v2 by writing
// cgroup.kill; on v1 by freezing the cgroup (a no-op for a frozen
// container), sending SIGKILL to each process in cgroup.procs and thawing
// it. A frozen task cannot exit, so no listed process id can have been
// reaped and reused before its signal; the signals take effect at the
// thaw. It reports false, having killed nothing, when the cgroup files
// cannot be used (the caller then kills through the runtime); either way
// c's freezer is thawed and closed and c is marked removed, as by
// thawForKill.
func (d *Driver) killFrozen(ctx context.Context, c *container) bool {
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	defer func() {
		if c.freezer.opened {
			_ = c.freezer.thaw()
		}
		c.freezer.close()
		c.removed = true
	}()
	if c.removed {
		return false
	}
	for _, base := range []string{filepath.Join(d.opts.cgroupRoot, "unified"), d.opts.cgroupRoot} {
		kill := filepath.Join(base, c.cgroup, "cgroup.kill")
		if exists(kill) {
			return os.WriteFile(kill, []byte("1"), 0) == nil
		}
	}
	procs := filepath.Join(d.opts.cgroupRoot, "freezer", c.cgroup, "cgroup.procs")
	if !exists(procs) {
		return false
	}
	if !c.freezer.opened {
		if err := c.freezer.open(d.opts.cgroupRoot, c.cgroup); err != nil || c.freezer.v2 {
			return false
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := c.freezer.freeze(ctx); err != nil {
		return false
	}
	pids, err := readPids(procs)
	if err != nil {
		return false
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return false
		}
	}
	return true
}

// thawForKill thaws c before it is killed: a task frozen by the v1 freezer
// does not die of SIGKILL until thawed. Best effort.
func (d *Driver) thawForKill(c *container) {
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	if c.freezer.opened {
		_ = c.freezer.thaw()
	}
	c.freezer.close()
	c.removed = true
}

// thawCgroup thaws cgroup path cg by path, for containers an earlier
// process left behind. Best effort.
func (d *Driver) thawCgroup(cg string) {
	var f freezer
	if f.open(d.opts.cgroupRoot, cg) == nil {
		_ = f.thaw()
		f.close()
	}
}

// setupSentinel creates the namespace's sentinel freezer cgroup and freezes
// it, on cgroup v1 only. Best effort: without it freezing works, slower.
func (d *Driver) setupSentinel() {
	v1 := filepath.Join(d.opts.cgroupRoot, "freezer")
	if !exists(filepath.Join(v1, "cgroup.procs")) {
		return
	}
	dir := filepath.Join(v1, d.opts.namespace, sentinelName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(dir, "freezer.state"), v1Frozen, 0)
}

// Update sets container id's memory limit (memory and memory+swap; 0 means
// pool.DefaultMemoryBytes) and CPU quota (millicores over a 100 ms period;
// 0 removes the quota) by writing its cgroup files directly, as when a stem
// cell becomes a function's container. Lowering the memory limit below the
// container's current use fails with the kernel's error (EBUSY) and leaves
// the old limit. It returns pool.ErrContainerNotFound (wrapped) for a
// container this Driver did not start and ErrInvalidSpec for negative or
// too small values.
func (d *Driver) Update(ctx context.Context, id string, memoryBytes, cpuMillis int64) error {
	if memoryBytes < 0 || cpuMillis < 0 || (cpuMillis > 0 && cpuMillis < MinCPUMillis) || cpuMillis > 1<<40 {
		return fmt.Errorf("update %q: %w: memory %d, cpu %d millicores", id, ErrInvalidSpec, memoryBytes, cpuMillis)
	}
	if memoryBytes == 0 {
		memoryBytes = pool.DefaultMemoryBytes
	}
	c, err := d.get(id)
	if err != nil {
		return err
	}
	c.freezeMu.Lock() // also serialises updates
	defer c.freezeMu.Unlock()
	if c.removed {
		return fmt.Errorf("container %q: %w", id, pool.ErrContainerNotFound)
	}
	root, cg := d.opts.cgroupRoot, c.cgroup
	if memDir := filepath.Join(root, "memory", cg); exists(filepath.Join(memDir, "memory.limit_in_bytes")) {
		if err := updateV1(memDir, filepath.Join(root, "cpu", cg), memoryBytes, cpuMillis); err != nil {
			return fmt.Errorf("update %q: %w", id, err)
		}
		return nil
	}
	for _, base := range []string{filepath.Join(root, "unified"), root} {
		dir := filepath.Join(base, cg)
		if exists(filepath.Join(dir, "memory.max")) {
			if err := updateV2(dir, memoryBytes, cpuMillis); err != nil {
				return fmt.Errorf("update %q: %w", id, err)
			}
			return nil
		}
	}
	return fmt.Errorf("update %q: no memory cgroup %s: %w", id, cg, os.ErrNotExist)
}

// updateV1 writes cgroup v1 limits. memory.memsw.limit_in_bytes must stay at
// or above memory.limit_in_bytes, so the order of the two writes depends on
// whether the limit grows or shrinks.
func updateV1(memDir, cpuDir string, mem, cpuMillis int64) error {
	limit := filepath.Join(memDir, "memory.limit_in_bytes")
	memsw := filepath.Join(memDir, "memory.memsw.limit_in_bytes")
	val := strconv.FormatInt(mem, 10)
	writes := []string{limit}
	if exists(memsw) {
		cur, err := readCgroupInt(limit)
		if err != nil {
			return err
		}
		if mem > cur {
			writes = []string{memsw, limit}
		} else {
			writes = []string{limit, memsw}
		}
	}
	for _, p := range writes {
		if err := os.WriteFile(p, []byte(val), 0); err != nil {
			return err
		}
	}
	quota := "-1"
	if cpuMillis > 0 {
		quota = strconv.FormatInt(cpuMillis*cpuPeriod/1000, 10)
		if err := os.WriteFile(filepath.Join(cpuDir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cpuPeriod)), 0); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(cpuDir, "cpu.cfs_quota_us"), []byte(quota), 0)
}

// updateV2 writes cgroup v2 limits: memory.max, no swap, cpu.max.
func updateV2(dir string, mem, cpuMillis int64) error {
	if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(mem, 10)), 0); err != nil {
		return err
	}
	if p := filepath.Join(dir, "memory.swap.max"); exists(p) {
		if err := os.WriteFile(p, []byte("0"), 0); err != nil {
			return err
		}
	}
	cpu := "max " + strconv.Itoa(cpuPeriod)
	if cpuMillis > 0 {
		cpu = strconv.FormatInt(cpuMillis*cpuPeriod/1000, 10) + " " + strconv.Itoa(cpuPeriod)
	}
	return os.WriteFile(filepath.Join(dir, "cpu.max"), []byte(cpu), 0)
}

func readCgroupInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, ok := parseInt(b)
	if !ok {
		return 0, errors.New(path + ": not a number")
	}
	return v, nil
}
