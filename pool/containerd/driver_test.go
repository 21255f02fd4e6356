package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/containerd/daemon"
)

const waitTimeout = 30 * time.Second

var idSeq atomic.Int64

// newID returns a container id unique in this test process.
func newID(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), idSeq.Add(1))
}

// parseReport turns the probe's "key=value" lines into a map.
func parseReport(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// cgroupFile reads a cgroup v1 file of controller for the cgroup cg.
func cgroupFile(t *testing.T, controller, cg, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, cg, name))
	if err != nil {
		t.Fatalf("read cgroup file: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func isV1() bool { return exists("/sys/fs/cgroup/memory/memory.limit_in_bytes") }

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: not closed after %v", what, waitTimeout)
	}
}

func listed(t *testing.T, d *Driver, id string) bool {
	t.Helper()
	ids, err := d.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(ids, id)
}

// TestSecurityDefaults runs the probe under each OCI runtime and checks what
// it sees, the cgroup limits, Stats, List, Remove and Exited.
func TestSecurityDefaults(t *testing.T) {
	for _, rt := range []string{"runc", "crun"} {
		t.Run(rt, func(t *testing.T) {
			requireContainerd(t)
			d := newDriver(t, WithRuntimeBinary(runtimeBinary(t, rt)))
			a := newAgentSocket(t)
			id := newID("sec-" + rt)
			stdout, stderr := newOutBuffer("END\n"), newOutBuffer("hello stderr")
			spec := probeSpec(id, a, "report")
			spec.Env = []string{"KILN_TEST=1"}
			spec.MemoryBytes = 64 << 20
			spec.CPUMillis = 500
			spec.PidsLimit = 32
			spec.Stdout, spec.Stderr = stdout, stderr
			ctx := t.Context()
			if err := d.Start(ctx, spec); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Remove(context.Background(), id) })

			if got, want := a.next(t, waitTimeout), "reported uid=65534"; got != want {
				t.Errorf("agent socket got %q, want %q", got, want)
			}
			stdout.wait(t, waitTimeout)
			stderr.wait(t, waitTimeout)
			r := parseReport(stdout.String())
			t.Logf("report:\n%s", stdout.String())
			checks := []struct{ key, want string }{
				{"uid", "65534 gid=65534 euid=65534"},
				{"tmpwrite", "ok"},
				{"ifaces", "lo err=<nil>"},
				{"CapInh", "0000000000000000"},
				{"CapPrm", "0000000000000000"},
				{"CapEff", "0000000000000000"},
				{"CapBnd", "0000000000000000"},
				{"CapAmb", "0000000000000000"},
				{"NoNewPrivs", "1"},
				{"Seccomp", "2"},
				{"Groups", "65534"},
			}
			for _, c := range checks {
				if got := r[c.key]; got != c.want {
					t.Errorf("%s = %q, want %q", c.key, got, c.want)
				}
			}
			for _, k := range []string{"rootwrite", "kilnwrite"} {
				if !strings.Contains(r[k], "read-only file system") {
					t.Errorf("%s = %q, want a read-only file system error", k, r[k])
				}
			}

			cg, err := d.CgroupPath(id)
			if err != nil {
				t.Fatal(err)
			}
			if want := "/" + testNamespace + "/" + id; cg != want {
				t.Errorf("CgroupPath = %q, want %q", cg, want)
			}
			if isV1() {
				limits := []struct{ ctl, file, want string }{
					{"memory", "memory.limit_in_bytes", strconv.Itoa(64 << 20)},
					{"pids", "pids.max", "32"},
					{"cpu", "cpu.cfs_quota_us", "50000"},
					{"cpu", "cpu.cfs_period_us", "100000"},
				}
				if exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") {
					limits = append(limits, struct{ ctl, file, want string }{"memory", "memory.memsw.limit_in_bytes", strconv.Itoa(64 << 20)})
				}
				for _, l := range limits {
					if got := cgroupFile(t, l.ctl, cg, l.file); got != l.want {
						t.Errorf("%s/%s = %s, want %s", l.ctl, l.file, got, l.want)
					}
				}
			}

			st, err := d.Stats(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if st.MemoryBytes <= 0 || st.MemoryPeakBytes < st.MemoryBytes {
				t.Errorf("Stats = %+v, want memory > 0 and peak >= current", st)
			}
			if st.CPUUser+st.CPUSystem <= 0 {
				t.Errorf("Stats = %+v, want some CPU time", st)
			}
			if !listed(t, d, id) {
				t.Errorf("List lacks %s", id)
			}

			exited, err := d.Exited(id)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
				t.Fatal("Exited closed while the probe sleeps")
			default:
			}
			if err := d.Remove(ctx, id); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, exited, "Exited after Remove")
			if listed(t, d, id) {
				t.Errorf("List still has %s after Remove", id)
			}
			if _, err := d.Exited(id); !errors.Is(err, pool.ErrContainerNotFound) {
				t.Errorf("Exited after Remove: %v, want ErrContainerNotFound", err)
			}
			if _, err := d.Stats(ctx, id); !errors.Is(err, pool.ErrContainerNotFound) {
				t.Errorf("Stats after Remove: %v, want ErrContainerNotFound", err)
			}
			if exists(d.ctrDir(id)) {
				t.Errorf("%s left behind", d.ctrDir(id))
			}
			if exists(filepath.Join("/sys/fs/cgroup/memory", cg)) {
				t.Errorf("cgroup %s left behind", cg)
			}
			if err := d.Remove(ctx, id); err != nil {
				t.Errorf("second Remove: %v", err)
			}
		})
	}
}

// TestExitBySelf: Exited fires when the process exits on its own, and Remove
// then cleans up.
func TestExitBySelf(t *testing.T) {
	d := newDriver(t)
	a := newAgentSocket(t)
	id := newID("exit")
	out := newOutBuffer("END\n")
	spec := probeSpec(id, a, "exit")
	spec.Stdout = out
	if err := d.Start(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	exited, err := d.Exited(id)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, exited, "Exited")
	if err := d.Remove(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	// The output was copied before the task was deleted.
	if !strings.Contains(out.String(), "END\n") {
		t.Errorf("stdout lost: %q", out.String())
	}
}

func TestRemoveMissing(t *testing.T) {
	d := newDriver(t)
	for _, id := range []string{"never-created", "../etc", "", strings.Repeat("x", 200)} {
		if err := d.Remove(t.Context(), id); err != nil {
			t.Errorf("Remove(%q) = %v, want nil", id, err)
		}
	}
	if _, err := d.Exited("never-created"); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Exited: %v", err)
	}
	if _, err := d.Stats(t.Context(), "never-created"); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Stats: %v", err)
	}
	if _, err := d.CgroupPath("never-created"); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("CgroupPath: %v", err)
	}
}

// TestOrphans: a Driver closed with a running container (a kilnd restart)
// leaves it behind; a new Driver lists and removes it, and also removes a
// container that never got a task.
func TestOrphans(t *testing.T) {
	d1 := newDriver(t)
	a := newAgentSocket(t)
	id := newID("orphan")
	if err := d1.Start(t.Context(), probeSpec(id, a, "ready")); err != nil {
		t.Fatal(err)
	}
	a.next(t, waitTimeout)
	cg, _ := d1.CgroupPath(id)
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d1.Remove(t.Context(), id); !errors.Is(err, ErrClosed) {
		t.Errorf("Remove after Close = %v, want ErrClosed", err)
	}

	d2 := newDriver(t)
	// A container without a task, as a crash between create and task create
	// leaves.
	bare := newID("bare")
	if _, err := d2.client.NewContainer(d2.withNS(t.Context()), bare,
		containerd.WithNewSpec(oci.WithRootFSPath(rootFS), oci.WithProcessArgs("/probe"))); err != nil {
		t.Fatal(err)
	}
	for _, x := range []string{id, bare} {
		if !listed(t, d2, x) {
			t.Fatalf("List lacks leftover %s", x)
		}
		if _, err := d2.Exited(x); !errors.Is(err, pool.ErrContainerNotFound) {
			t.Errorf("Exited(leftover) = %v, want ErrContainerNotFound", err)
		}
		if err := d2.Remove(t.Context(), x); err != nil {
			t.Fatalf("Remove leftover %s: %v", x, err)
		}
		if listed(t, d2, x) {
			t.Errorf("List still has %s", x)
		}
	}
	if isV1() && exists(filepath.Join("/sys/fs/cgroup/memory", cg)) {
		t.Errorf("cgroup %s left behind", cg)
	}
}

// TestStartFailureCleansUp: a process that cannot start leaves nothing.
func TestStartFailureCleansUp(t *testing.T) {
	d := newDriver(t)
	a := newAgentSocket(t)
	id := newID("fail")
	spec := probeSpec(id, a, "report")
	spec.Args = []string{"/does-not-exist"}
	spec.Stdout = newOutBuffer("")
	err := d.Start(t.Context(), spec)
	if err == nil {
		d.Remove(t.Context(), id)
		t.Fatal("Start of a missing program succeeded")
	}
	t.Logf("Start error: %v", err)
	if listed(t, d, id) {
		t.Errorf("List has %s after a failed Start", id)
	}
	if exists(d.ctrDir(id)) {
		t.Errorf("%s left behind", d.ctrDir(id))
	}
	if _, err := d.Exited(id); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Exited = %v, want ErrContainerNotFound", err)
	}
	// The id is free again.
	spec.Args = []string{"/probe", "ready"}
	if err := d.Start(t.Context(), spec); err != nil {
		t.Fatalf("Start after a failed Start: %v", err)
	}
	if err := d.Remove(t.Context(), id); err != nil {
		t.Fatal(err)
	}
}

// TestStartCancelledCleansUp: a ctx cancelled mid-Start leaves nothing.
func TestStartCancelledCleansUp(t *testing.T) {
	d := newDriver(t)
	a := newAgentSocket(t)
	for after := time.Duration(0); after < 200*time.Millisecond; after += 15 * time.Millisecond {
		id := newID("cancel")
		ctx, cancel := context.WithTimeout(t.Context(), after)
		spec := probeSpec(id, a, "ready")
		spec.Stdout = newOutBuffer("")
		t0 := time.Now()
		err := d.Start(ctx, spec)
		took := time.Since(t0)
		cancel()
		if err == nil {
			// Start won the race; that is fine too.
			if err := d.Remove(t.Context(), id); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Logf("cancel after %v: Start returned after %v: %v", after, took, err)
		if listed(t, d, id) {
			t.Errorf("cancel after %v: List has %s", after, id)
		}
		if exists(d.ctrDir(id)) {
			t.Errorf("cancel after %v: %s left behind", after, d.ctrDir(id))
		}
		if cg := filepath.Join("/sys/fs/cgroup/memory", testNamespace, id); exists(cg) {
			t.Errorf("cancel after %v: %s left behind", after, cg)
		}
	}
}

func TestStartDuplicate(t *testing.T) {
	d := newDriver(t)
	a := newAgentSocket(t)
	id := newID("dup")
	if err := d.Start(t.Context(), probeSpec(id, a, "ready")); err != nil {
		t.Fatal(err)
	}
	defer d.Remove(context.Background(), id)
	if err := d.Start(t.Context(), probeSpec(id, a, "ready")); !errors.Is(err, ErrContainerExists) {
		t.Fatalf("second Start = %v, want ErrContainerExists", err)
	}
	exited, err := d.Exited(id)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		t.Fatal("first container exited after a duplicate Start")
	default:
	}
	// A leftover with the same id (not known to this Driver) is refused too.
	d2 := newDriver(t)
	if err := d2.Start(t.Context(), probeSpec(id, a, "ready")); !errors.Is(err, ErrContainerExists) {
		t.Fatalf("Start over a leftover = %v, want ErrContainerExists", err)
	}
	if !listed(t, d, id) {
		t.Fatal("the refused Start deleted the existing container")
	}
}

func TestInvalidSpec(t *testing.T) {
	good := pool.ContainerSpec{ID: "ok", RootFS: "/r", Args: []string{"/probe"}, SocketDir: "/s"}
	if err := validate(good); err != nil {
		t.Fatalf("validate(good) = %v", err)
	}
	tests := []struct {
		name string
		edit func(*pool.ContainerSpec)
	}{
		{"empty id", func(s *pool.ContainerSpec) { s.ID = "" }},
		{"slash id", func(s *pool.ContainerSpec) { s.ID = "a/b" }},
		{"dotdot id", func(s *pool.ContainerSpec) { s.ID = ".." }},
		{"long id", func(s *pool.ContainerSpec) { s.ID = strings.Repeat("a", 77) }},
		{"relative rootfs", func(s *pool.ContainerSpec) { s.RootFS = "r" }},
		{"no socket dir", func(s *pool.ContainerSpec) { s.SocketDir = "" }},
		{"no args", func(s *pool.ContainerSpec) { s.Args = nil }},
		{"empty arg0", func(s *pool.ContainerSpec) { s.Args = []string{""} }},
		{"nul arg", func(s *pool.ContainerSpec) { s.Args = []string{"/p", "a\x00b"} }},
		{"bad env", func(s *pool.ContainerSpec) { s.Env = []string{"NOEQUALS"} }},
		{"empty env key", func(s *pool.ContainerSpec) { s.Env = []string{"=x"} }},
		{"negative memory", func(s *pool.ContainerSpec) { s.MemoryBytes = -1 }},
		{"negative pids", func(s *pool.ContainerSpec) { s.PidsLimit = -1 }},
		{"negative cpu", func(s *pool.ContainerSpec) { s.CPUMillis = -1 }},
		{"tiny cpu", func(s *pool.ContainerSpec) { s.CPUMillis = 5 }},
		{"huge cpu", func(s *pool.ContainerSpec) { s.CPUMillis = 1 << 50 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.edit(&s)
			if err := validate(s); !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("validate = %v, want ErrInvalidSpec", err)
			}
		})
	}
}

// TestSpec checks the generated OCI spec without running it.
func TestSpec(t *testing.T) {
	d := &Driver{opts: options{namespace: "kiln"}, setSwap: true}
	spec := pool.ContainerSpec{ID: "c1", Function: "f", RootFS: "/r", Args: []string{"/bin/x", "a"},
		Env: []string{"A=1"}, SocketDir: "/host/c1", CPUMillis: 250}
	s, err := oci.GenerateSpec(namespaces.WithNamespace(t.Context(), "kiln"), nil, &containers.Container{ID: "c1"}, d.specOpts(spec)...)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Root.Readonly || s.Root.Path != "/r" {
		t.Errorf("root = %+v", s.Root)
	}
	if s.Process.User.UID != pool.ContainerUID || s.Process.User.GID != pool.ContainerUID {
		t.Errorf("user = %+v", s.Process.User)
	}
	c := s.Process.Capabilities
	if n := len(c.Bounding) + len(c.Effective) + len(c.Permitted) + len(c.Inheritable) + len(c.Ambient); n != 0 {
		t.Errorf("capabilities = %+v", c)
	}
	if !s.Process.NoNewPrivileges || s.Linux.Seccomp == nil {
		t.Fatalf("no_new_privileges %v, seccomp %v", s.Process.NoNewPrivileges, s.Linux.Seccomp != nil)
	}
	allowed := map[string]bool{}
	for _, r := range s.Linux.Seccomp.Syscalls {
		if r.Action == specs.ActAllow {
			for _, n := range r.Names {
				allowed[n] = true
			}
		}
	}
	if !allowed["read"] || allowed["ptrace"] || allowed["process_vm_readv"] || allowed["process_vm_writev"] {
		t.Errorf("seccomp allows read %v, ptrace %v, process_vm_readv %v, process_vm_writev %v (want only read)",
			allowed["read"], allowed["ptrace"], allowed["process_vm_readv"], allowed["process_vm_writev"])
	}
	r := s.Linux.Resources
	if *r.Memory.Limit != pool.DefaultMemoryBytes || *r.Memory.Swap != pool.DefaultMemoryBytes {
		t.Errorf("memory = %d swap %d", *r.Memory.Limit, *r.Memory.Swap)
	}
	if r.Pids.Limit != pool.DefaultPidsLimit {
		t.Errorf("pids = %d", r.Pids.Limit)
	}
	if *r.CPU.Quota != 25000 || *r.CPU.Period != 100000 {
		t.Errorf("cpu = %d/%d", *r.CPU.Quota, *r.CPU.Period)
	}
	if s.Linux.CgroupsPath != "/kiln/c1" {
		t.Errorf("cgroup = %s", s.Linux.CgroupsPath)
	}
	mounts := map[string]string{}
	for _, m := range s.Mounts {
		mounts[m.Destination] = m.Type + " " + m.Source + " " + strings.Join(m.Options, ",")
	}
	if got, want := mounts["/tmp"], "tmpfs tmpfs nosuid,nodev,mode=1777,size=16m"; got != want {
		t.Errorf("/tmp = %q, want %q", got, want)
	}
	if got, want := mounts[pool.ExecutorDir], "bind /host/c1 rbind,ro,nosuid,nodev"; got != want {
		t.Errorf("%s = %q, want %q", pool.ExecutorDir, got, want)
	}
	if _, ok := mounts["/run"]; ok {
		t.Error("/run is mounted; its mount point is not in RequiredDirs")
	}
	for dst := range mounts {
		if !slices.Contains(RequiredDirs, dst) && !strings.HasPrefix(dst, "/dev/") {
			t.Errorf("mount %s needs a mount point missing from RequiredDirs", dst)
		}
	}
	netns := false
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" && ns.Path == "" {
			netns = true
		}
	}
	if !netns {
		t.Error("no new network namespace")
	}
	if !slices.Contains(s.Process.Env, "A=1") {
		t.Errorf("env = %v", s.Process.Env)
	}
}

// TestHostCgroupView: on a hybrid cgroup host, against a containerd that
// sees the host's cgroup2 mount (daemon.WithHideCgroup2(false)), runc works
// and crun, when the cgroup2 hierarchy holds controllers, fails with an
// error that says what to do, leaving nothing behind.
func TestHostCgroupView(t *testing.T) {
	requireContainerd(t)
	var st syscall.Statfs_t
	if syscall.Statfs("/sys/fs/cgroup/unified", &st) != nil || st.Type != 0x63677270 {
		t.Skip("not a hybrid cgroup host")
	}
	dir, err := os.MkdirTemp("/tmp", "kh")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ctd, err := daemon.Start(ctx, filepath.Join(dir, "d"), daemon.WithHideCgroup2(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ctd.Stop(ctx)
	open := func(rt string) *Driver {
		d, err := New(ctx, ctd.Address(), WithNamespace(testNamespace), WithRuntimeBinary(rt),
			WithRuncRoot(filepath.Join(dir, "runc")), WithStateDir(filepath.Join(dir, "state")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	a := newAgentSocket(t)

	runc := open(runtimeBinary(t, "runc"))
	id := newID("hostview-runc")
	if err := runc.Start(ctx, probeSpec(id, a, "ready")); err != nil {
		t.Fatal(err)
	}
	if got := a.next(t, waitTimeout); got != "ready uid=65534" {
		t.Errorf("probe said %q", got)
	}
	if err := runc.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}

	ctl, _ := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	if len(strings.TrimSpace(string(ctl))) == 0 {
		return
	}
	crun := open(runtimeBinary(t, "crun"))
	id = newID("hostview-crun")
	err = crun.Start(ctx, probeSpec(id, a, "ready"))
	if err == nil {
		crun.Remove(ctx, id)
		t.Fatal("crun started on a hybrid host with cgroup2 controllers; drop this test's expectation")
	}
	if !strings.Contains(err.Error(), "WithHideCgroup2") {
		t.Errorf("error lacks the hint: %v", err)
	}
	if listed(t, crun, id) {
		t.Error("failed Start left the container")
	}
}
