package containerd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/containerd/daemon"
)

// poll waits, boundedly, until cond holds.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestContainerdRestart kills the driver's containerd with SIGKILL and
// starts another on the same socket and state: meanwhile Start fails at once
// with pool.ErrUnavailable, a frozen container thaws, and Remove kills a
// container through its cgroup; afterwards the surviving container is still
// the driver's, the removed one is deleted from containerd, and new
// containers start.
func TestContainerdRestart(t *testing.T) {
	requireContainerd(t) // this test kills and starts a containerd of its own
	dir, err := os.MkdirTemp("/tmp", "kr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ctrd, err := daemon.Start(ctx, filepath.Join(dir, "d"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrd.Stop(context.Background()) })
	d, err := New(ctx, ctrd.Address(),
		WithNamespace(testNamespace),
		WithRuncRoot(filepath.Join(dir, "runc")),
		WithStateDir(filepath.Join(dir, "state")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	start := func(id string) {
		t.Helper()
		a := newAgentSocket(t)
		if err := d.Start(ctx, probeSpec(id, a, "ready")); err != nil {
			t.Fatal(err)
		}
		a.next(t, waitTimeout)
	}
	keep, gone := newID("keep"), newID("gone")
	start(keep)
	start(gone)
	if err := d.Freeze(ctx, keep); err != nil {
		t.Fatal(err)
	}
	keepExited, _ := d.Exited(keep)
	goneExited, _ := d.Exited(gone)
	goneCgroup, _ := d.CgroupPath(gone)

	if err := syscall.Kill(ctrd.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-ctrd.Exited()
	poll(t, "the driver to see containerd gone", func() bool { return !d.Reachable() })

	a := newAgentSocket(t)
	if err := d.Start(ctx, probeSpec(newID("new"), a, "ready")); !errors.Is(err, pool.ErrUnavailable) {
		t.Fatalf("Start while containerd is down = %v, want ErrUnavailable", err)
	}
	if err := d.Thaw(ctx, keep); err != nil {
		t.Errorf("Thaw while containerd is down: %v", err)
	}
	if _, err := d.Stats(ctx, keep); err != nil {
		t.Errorf("Stats while containerd is down: %v", err)
	}
	if err := d.Remove(ctx, gone); err != nil {
		t.Fatalf("Remove while containerd is down: %v", err)
	}
	waitClosed(t, goneExited, "Exited of the removed container")
	if pids, err := readPids(cgroupProcs(d.opts.cgroupRoot, goneCgroup)); err == nil && len(pids) > 0 {
		t.Errorf("removed container still has processes %v", pids)
	}

	ctrd, err = daemon.Start(ctx, filepath.Join(dir, "d"))
	if err != nil {
		t.Fatal(err)
	}
	poll(t, "the driver to see containerd back", d.Reachable)
	poll(t, "the removed container to be deleted from containerd", func() bool {
		ids, err := d.List(ctx)
		return err == nil && !slices.Contains(ids, gone)
	})
	if ids, _ := d.List(ctx); !slices.Contains(ids, keep) {
		t.Errorf("containers after the restart: %v, want %s among them", ids, keep)
	}
	kc, _ := d.get(keep)
	task, err := kc.ctr.Task(d.withNS(ctx), nil)
	if err != nil {
		t.Fatalf("task of the surviving container: %v", err)
	}
	if st, err := task.Status(d.withNS(ctx)); err != nil || st.Status != "running" {
		t.Errorf("surviving container's task: %v, %v; want running", st.Status, err)
	}
	select {
	case <-keepExited:
		t.Fatal("the surviving container's Exited closed")
	default:
	}
	fresh := newID("fresh")
	start(fresh)
	// Removing the survivor waits for its exit: its watch is back too.
	for _, id := range []string{keep, fresh} {
		if err := d.Remove(ctx, id); err != nil {
			t.Errorf("Remove %s: %v", id, err)
		}
	}
	waitClosed(t, keepExited, "Exited of the surviving container")
	if ids, _ := d.List(ctx); len(ids) != 0 {
		t.Errorf("containers left: %v", ids)
	}
}
