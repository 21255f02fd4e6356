package containerd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnfx/kiln/pool"
)

// TestFreezeThaw: a frozen busy container uses no CPU, a thawed one does;
// freezing twice and thawing a running container are no-ops; a frozen
// container is removed promptly.
func TestFreezeThaw(t *testing.T) {
	d := newDriver(t)
	if isV1() {
		state := filepath.Join("/sys/fs/cgroup/freezer", testNamespace, sentinelName, "freezer.state")
		if b, err := os.ReadFile(state); err != nil || strings.TrimSpace(string(b)) != "FROZEN" {
			t.Errorf("sentinel %s: %q, %v", state, b, err)
		}
	}
	a := newAgentSocket(t)
	id := newID("freeze")
	ctx := t.Context()
	if err := d.Start(ctx, probeSpec(id, a, "busy")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Remove(context.Background(), id) })
	a.next(t, waitTimeout)
	cpu := func() time.Duration {
		t.Helper()
		st, err := d.Stats(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return st.CPUUser + st.CPUSystem
	}
	if err := d.Thaw(ctx, id); err != nil {
		t.Fatalf("Thaw of a running container: %v", err)
	}
	for range 2 {
		if err := d.Freeze(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	cg, _ := d.CgroupPath(id)
	if isV1() {
		if got := cgroupFile(t, "freezer", cg, "freezer.state"); got != "FROZEN" {
			t.Errorf("freezer.state = %s after Freeze", got)
		}
	}
	before := cpu()
	time.Sleep(100 * time.Millisecond)
	if used := cpu() - before; used > 5*time.Millisecond {
		t.Errorf("frozen container used %v of CPU in 100ms", used)
	}
	if err := d.Thaw(ctx, id); err != nil {
		t.Fatal(err)
	}
	before = cpu()
	time.Sleep(100 * time.Millisecond)
	if used := cpu() - before; used < 10*time.Millisecond {
		t.Errorf("thawed busy container used only %v of CPU in 100ms", used)
	}

	if err := d.Freeze(ctx, id); err != nil {
		t.Fatal(err)
	}
	exited, _ := d.Exited(id)
	start := time.Now()
	if err := d.Remove(ctx, id); err != nil {
		t.Fatalf("Remove of a frozen container: %v", err)
	}
	waitClosed(t, exited, "Exited")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Remove of a frozen container took %v", took)
	}
	if err := d.Freeze(ctx, id); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Freeze after Remove = %v", err)
	}
	if err := d.Thaw(ctx, id); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Thaw after Remove = %v", err)
	}
}

// TestRemoveFrozenLeftover: a container left frozen by an earlier process is
// thawed and removed by a new Driver.
func TestRemoveFrozenLeftover(t *testing.T) {
	d1 := newDriver(t)
	a := newAgentSocket(t)
	id := newID("frozen-orphan")
	if err := d1.Start(t.Context(), probeSpec(id, a, "ready")); err != nil {
		t.Fatal(err)
	}
	a.next(t, waitTimeout)
	if err := d1.Freeze(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	d2 := newDriver(t)
	start := time.Now()
	if err := d2.Remove(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Remove took %v", took)
	}
	if listed(t, d2, id) {
		t.Error("still listed")
	}
}

func TestUpdate(t *testing.T) {
	d := newDriver(t)
	a := newAgentSocket(t)
	id := newID("update")
	ctx := t.Context()
	spec := probeSpec(id, a, "ready")
	spec.MemoryBytes = 64 << 20
	spec.CPUMillis = 500
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Remove(context.Background(), id) })
	a.next(t, waitTimeout)
	cg, _ := d.CgroupPath(id)
	check := func(mem int64, quota string) {
		t.Helper()
		if !isV1() {
			return
		}
		want := strconv.FormatInt(mem, 10)
		if got := cgroupFile(t, "memory", cg, "memory.limit_in_bytes"); got != want {
			t.Errorf("memory.limit_in_bytes = %s, want %s", got, want)
		}
		if exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") {
			if got := cgroupFile(t, "memory", cg, "memory.memsw.limit_in_bytes"); got != want {
				t.Errorf("memory.memsw.limit_in_bytes = %s, want %s", got, want)
			}
		}
		if got := cgroupFile(t, "cpu", cg, "cpu.cfs_quota_us"); got != quota {
			t.Errorf("cpu.cfs_quota_us = %s, want %s", got, quota)
		}
	}
	check(64<<20, "50000")
	steps := []struct {
		mem, cpu int64
		wantMem  int64
		quota    string
	}{
		{256 << 20, 0, 256 << 20, "-1"},
		{32 << 20, 2000, 32 << 20, "200000"},
		{0, 10, pool.DefaultMemoryBytes, "1000"},
	}
	for _, s := range steps {
		if err := d.Update(ctx, id, s.mem, s.cpu); err != nil {
			t.Fatalf("Update(%d, %d): %v", s.mem, s.cpu, err)
		}
		check(s.wantMem, s.quota)
	}
	for _, bad := range [][2]int64{{-1, 0}, {0, -1}, {0, 5}} {
		if err := d.Update(ctx, id, bad[0], bad[1]); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("Update(%d, %d) = %v, want ErrInvalidSpec", bad[0], bad[1], err)
		}
	}
	if err := d.Update(ctx, "missing", 0, 0); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Update(missing) = %v", err)
	}
}

// TestThawAllocs: Thaw, on the call path, does not allocate.
func TestThawAllocs(t *testing.T) {
	d := newDriver(t)
	a := newAgentSocket(t)
	id := newID("allocs")
	ctx := t.Context()
	if err := d.Start(ctx, probeSpec(id, a, "ready")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Remove(context.Background(), id) })
	a.next(t, waitTimeout)
	if err := d.Thaw(ctx, id); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { d.Thaw(ctx, id) }); n != 0 {
		t.Errorf("Thaw allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { d.Stats(ctx, id) }); n != 0 {
		t.Errorf("Stats allocates %v times", n)
	}
}
