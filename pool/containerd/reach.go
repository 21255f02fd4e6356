package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// Reachability. containerd may go away while its containers keep running
// (their shims are separate processes): a supervised daemon is being
// restarted, or an external one was stopped. The driver follows its gRPC
// connection's state: READY is reachable, TRANSIENT_FAILURE is not. While
// containerd is unreachable:
//
//   - Start fails at once with pool.ErrUnavailable;
//   - Freeze, Thaw, Stats and Update work as ever (cgroup files);
//   - Remove kills the container's processes through its cgroup and leaves
//     the task and the container pending, to be deleted when containerd
//     answers again (or, at the latest, by Close or the next run's
//     pool.RemoveAll);
//   - exit watchers retry, and wake up as soon as containerd is back, when
//     they learn whether each task still runs.
//
// The containerd client's gRPC connection reconnects by itself, but waits up
// to 3 s between attempts; the driver dials the socket every probeInterval
// while containerd is unreachable and cuts that wait short once the socket
// accepts.

// probeInterval is how often the socket of an unreachable containerd is
// tried.
const probeInterval = 100 * time.Millisecond

// monitor keeps d.reachable in step with conn's state until the Driver is
// closed. An IDLE connection is told to connect, so that a daemon that went
// away is noticed without waiting for a call.
func (d *Driver) monitor(conn *grpc.ClientConn) {
	defer d.wg.Done()
	for {
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			d.setReachable(true)
		case connectivity.TransientFailure, connectivity.Shutdown:
			d.setReachable(false)
		case connectivity.Idle:
			conn.Connect()
		}
		if st == connectivity.Shutdown {
			return
		}
		ctx, cancel := d.ctx, context.CancelFunc(func() {})
		if st != connectivity.Ready {
			ctx, cancel = context.WithTimeout(d.ctx, probeInterval)
		}
		changed := conn.WaitForStateChange(ctx, st)
		cancel()
		if d.ctx.Err() != nil {
			return
		}
		if !changed && st == connectivity.TransientFailure && socketAccepts(d.address) {
			conn.ResetConnectBackoff()
		}
	}
}

// socketAccepts reports whether a unix socket at address accepts a
// connection.
func socketAccepts(address string) bool {
	c, err := net.DialTimeout("unix", strings.TrimPrefix(address, "unix://"), probeInterval)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// setReachable records whether containerd answers. On becoming reachable
// again it wakes the exit watchers and deletes the pending containers.
func (d *Driver) setReachable(ok bool) {
	d.upMu.Lock()
	if d.reachable.Load() == ok {
		d.upMu.Unlock()
		return
	}
	d.reachable.Store(ok)
	if ok {
		close(d.upC)
		d.upC = make(chan struct{})
	}
	d.upMu.Unlock()
	if !ok {
		d.log.Error("containerd unreachable: running containers keep serving, new ones fail until it answers again", "address", d.address)
		return
	}
	d.log.Info("containerd reachable again", "address", d.address)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushLocked()
}

// Reachable reports whether containerd answered the driver's connection
// last. It is false from the moment the connection fails until it is
// re-established.
func (d *Driver) Reachable() bool { return d.reachable.Load() }

// reconnected returns a channel closed when containerd next becomes
// reachable.
func (d *Driver) reconnected() <-chan struct{} {
	d.upMu.Lock()
	defer d.upMu.Unlock()
	return d.upC
}

// unreachable reports whether err says containerd could not be reached.
func unreachable(err error) bool {
	return errdefs.IsUnavailable(err) || status.Code(err) == codes.Unavailable
}

// removeOffline is Remove while containerd cannot be reached: it kills the
// processes of container id through its cgroup, waiting (within ctx and
// the kill timeout) until none is left, and leaves the deletion of the task
// and the container pending. c is the driver's record, or nil.
func (d *Driver) removeOffline(ctx context.Context, id string, c *container) error {
	cg := cgroupPath(d.opts.namespace, id)
	if c != nil {
		d.thawForKill(c)
	} else {
		d.thawCgroup(cg)
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.killTimeout)
	defer cancel()
	if err := killCgroup(ctx, d.opts.cgroupRoot, cg); err != nil {
		return fmt.Errorf("containerd unreachable, and killing through the cgroup failed: %w", err)
	}
	if c != nil {
		if c.cancelWait != nil {
			c.cancelWait()
		}
		c.statsMu.Lock()
		c.stats.close()
		c.statsMu.Unlock()
		c.markExited()
	}
	d.addPending(id, c)
	d.log.Info("container killed through its cgroup; containerd deletes it when it answers again", "container", id)
	return nil
}

// addPending leaves container id (c its record, or nil) to be deleted once
// containerd answers, at once if it answers already: the flush of the
// moment it came back may have missed this one.
func (d *Driver) addPending(id string, c *container) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pending[id] = c
	if d.reachable.Load() {
		d.flushLocked()
	}
}

// flushLocked deletes the pending containers in the background, unless the
// Driver is closed (Close flushes them itself). d.mu must be held.
func (d *Driver) flushLocked() {
	if d.closed || len(d.pending) == 0 {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithTimeout(d.ctx, d.opts.killTimeout)
		defer cancel()
		d.flushPending(ctx)
	}()
}

// flushPending deletes the pending containers while ctx allows; those it
// cannot delete stay pending. Flushes run one at a time.
func (d *Driver) flushPending(ctx context.Context) {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	d.mu.RLock()
	todo := maps.Clone(d.pending)
	d.mu.RUnlock()
	n := 0
	for id, c := range todo {
		if ctx.Err() != nil {
			break
		}
		if err := d.deletePending(ctx, id, c); err != nil {
			d.log.Warn("delete a container left while containerd was unreachable", "container", id, "err", err)
			continue
		}
		d.mu.Lock()
		delete(d.pending, id)
		d.mu.Unlock()
		n++
	}
	if n > 0 {
		d.log.Info("deleted containers left while containerd was unreachable", "containers", n)
	}
}

// deletePending deletes the task and the container of a pending container
// and the driver's files for it. Its processes are gone already.
func (d *Driver) deletePending(ctx context.Context, id string, c *container) error {
	ctx = d.withNS(ctx)
	if c == nil || c.task == nil {
		return d.removeLeftover(ctx, id)
	}
	// The task's Delete also closes the output FIFOs this process holds.
	if _, err := c.task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task: %w", err)
	}
	if err := c.ctr.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container: %w", err)
	}
	d.removeCgroups(c.cgroup)
	return d.removeDir(id)
}

// killCgroup sends SIGKILL to every process of cgroup path cg, again and
// again until none is left or ctx is done. The caller thaws the cgroup
// first: tasks frozen by the v1 freezer do not die until thawed. A cgroup
// that does not exist holds nothing to kill.
func killCgroup(ctx context.Context, root, cg string) error {
	procs := cgroupProcs(root, cg)
	if procs == "" {
		return nil
	}
	delay := time.Millisecond
	for {
		pids, err := readPids(procs)
		if errors.Is(err, os.ErrNotExist) || (err == nil && len(pids) == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("kill cgroup %s: %w", cg, err)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("kill cgroup %s: %d processes left: %w", cg, len(pids), ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// cgroupProcs returns the cgroup.procs file of cgroup path cg: in the v1
// freezer (or pids, memory) hierarchy, else in the v2 one; "" when there is
// none.
func cgroupProcs(root, cg string) string {
	for _, dir := range []string{
		filepath.Join(root, "freezer", cg),
		filepath.Join(root, "pids", cg),
		filepath.Join(root, "memory", cg),
		filepath.Join(root, "unified", cg),
		filepath.Join(root, cg),
	} {
		if p := filepath.Join(dir, "cgroup.procs"); exists(p) {
			return p
		}
	}
	return ""
}

// readPids reads the process ids of a cgroup.procs file.
func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
