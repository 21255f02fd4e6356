package containerd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kilnfx/kiln/pool"
)

// Container layout and limits the driver applies.
const (
	// TmpfsSize is the size of the tmpfs mounted at /tmp.
	TmpfsSize = 16 << 20
	// cpuPeriod is the CFS period, in microseconds (100 ms).
	cpuPeriod = 100_000
	// MinCPUMillis is the smallest non-zero ContainerSpec.CPUMillis: the
	// kernel refuses a CFS quota below 1 ms per period.
	MinCPUMillis = 10
)

// RequiredDirs are the directories ContainerSpec.RootFS must contain: the
// mount points of the container's mounts. PrepareRootFS creates them.
var RequiredDirs = []string{"/proc", "/dev", "/sys", "/tmp", pool.ExecutorDir}

// Limits of the kernel's execve(2) that a container's command line and
// environment must fit.
const (
	// MaxArgStringBytes is MAX_ARG_STRLEN: one argument or KEY=VALUE entry,
	// its NUL included.
	MaxArgStringBytes = 32 * 4096
	// MaxExecBytes bounds the sum of the arguments and environment entries
	// with their NULs and pointers: a quarter of the 8 MiB stack limit the
	// container inherits is the kernel's bound, and kiln keeps half of it
	// for what the executor adds.
	MaxExecBytes = 1 << 20
)

// validate checks what Start needs from spec before anything is created.
// Errors wrap ErrInvalidSpec and a *pool.SpecError.
func validate(spec pool.ContainerSpec) error {
	if err := identifiers.Validate(spec.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, &pool.SpecError{Field: "ID", Reason: err.Error()})
	}
	if !filepath.IsAbs(spec.SocketDir) {
		return specError("SocketDir", "%q is not an absolute path", spec.SocketDir)
	}
	return checkSpec(spec)
}

// CheckSpec implements pool.SpecChecker: it applies Start's checks of
// everything but the id and the socket dir.
func (d *Driver) CheckSpec(spec pool.ContainerSpec) error { return checkSpec(spec) }

func specError(field, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrInvalidSpec, &pool.SpecError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func checkSpec(spec pool.ContainerSpec) error {
	if !filepath.IsAbs(spec.RootFS) {
		return specError("RootFS", "%q is not an absolute path", spec.RootFS)
	}
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) {
			return specError("Mounts", "source %q is not an absolute path", m.Source)
		}
		if !filepath.IsAbs(m.Target) || filepath.Clean(m.Target) != m.Target || m.Target == "/" {
			return specError("Mounts", "target %q is not a clean absolute path below /", m.Target)
		}
		for _, r := range RequiredDirs {
			if m.Target == r || strings.HasPrefix(m.Target, r+"/") {
				return specError("Mounts", "target %q is inside the reserved %s", m.Target, r)
			}
		}
	}
	if spec.Cwd != "" && (!filepath.IsAbs(spec.Cwd) || strings.IndexByte(spec.Cwd, 0) >= 0) {
		return specError("Cwd", "%q is not an absolute path", spec.Cwd)
	}
	if len(spec.Args) == 0 || spec.Args[0] == "" {
		return specError("Args", "empty")
	}
	total := 0
	for _, s := range spec.Args {
		if strings.IndexByte(s, 0) >= 0 {
			return specError("Args", "NUL byte in an argument")
		}
		if len(s)+1 > MaxArgStringBytes {
			return specError("Args", "an argument of %d bytes is over the kernel's %d byte limit", len(s), MaxArgStringBytes-1)
		}
		total += len(s) + 1 + 8
	}
	for _, e := range spec.Env {
		if strings.IndexByte(e, 0) >= 0 || !strings.Contains(e, "=") || strings.HasPrefix(e, "=") {
			return specError("Env", "entry %.40q is not KEY=VALUE", e)
		}
		if len(e)+1 > MaxArgStringBytes {
			key, _, _ := strings.Cut(e, "=")
			return specError("Env", "%s is %d bytes, over the kernel's %d byte limit for one variable", key, len(e), MaxArgStringBytes-1)
		}
		total += len(e) + 1 + 8
	}
	if total > MaxExecBytes {
		return specError("Env", "the command line and environment are %d bytes, over the %d byte limit", total, MaxExecBytes)
	}
	if spec.MemoryBytes < 0 {
		return specError("MemoryBytes", "%d < 0", spec.MemoryBytes)
	}
	if spec.PidsLimit < 0 {
		return specError("PidsLimit", "%d < 0", spec.PidsLimit)
	}
	if spec.CPUMillis < 0 || (spec.CPUMillis > 0 && spec.CPUMillis < MinCPUMillis) {
		return specError("CPUMillis", "%d: want 0 (no quota) or at least %d (the kernel's smallest CFS quota)", spec.CPUMillis, MinCPUMillis)
	}
	if spec.CPUMillis > 1<<40 {
		return specError("CPUMillis", "%d too large", spec.CPUMillis)
	}
	return nil
}

// cgroupPath is the cgroup of container id: "/<namespace>/<id>".
func cgroupPath(namespace, id string) string { return "/" + namespace + "/" + id }

// specOpts returns the OCI spec options for spec, which validate accepted.
// Order matters: capabilities are cleared before the seccomp profile is
// generated, because the default profile allows more syscalls for more
// capabilities.
func (d *Driver) specOpts(spec pool.ContainerSpec) []oci.SpecOpts {
	mem := spec.MemoryBytes
	if mem == 0 {
		mem = pool.DefaultMemoryBytes
	}
	pids := spec.PidsLimit
	if pids == 0 {
		pids = pool.DefaultPidsLimit
	}
	opts := []oci.SpecOpts{
		oci.WithRootFSPath(spec.RootFS),
		oci.WithRootFSReadonly(),
		oci.WithProcessArgs(spec.Args...),
		oci.WithProcessCwd(cmp.Or(spec.Cwd, "/")),
		oci.WithEnv(spec.Env),
		oci.WithUIDGID(pool.ContainerUID, pool.ContainerUID),
		withNoCapabilities,
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		withoutSyscalls(deniedSyscalls...),
		oci.WithPidsLimit(pids),
		oci.WithMemoryLimit(uint64(mem)),
		withMounts(spec.SocketDir, spec.Mounts),
		oci.WithCgroup(cgroupPath(d.opts.namespace, spec.ID)),
		withNetworkNamespace,
	}
	if d.setSwap {
		opts = append(opts, oci.WithMemorySwap(mem))
	}
	if spec.CPUMillis > 0 {
		opts = append(opts, oci.WithCPUCFS(spec.CPUMillis*cpuPeriod/1000, cpuPeriod))
	}
	if d.opts.cpus != "" {
		opts = append(opts, oci.WithCPUs(d.opts.cpus))
	}
	return opts
}

// WithCPUs confines every container, stem cells included, to the CPUs of
// list, in the kernel's list format ("1", "2-3,6"), through its cpuset
// cgroup (default: all the node's CPUs). The list must name online CPUs;
// the caller checks it.
func WithCPUs(list string) Option { return func(o *options) { o.cpus = list } }

// withNoCapabilities empties every capability set.
func withNoCapabilities(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	s.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding:    []string{},
		Effective:   []string{},
		Inheritable: []string{},
		Permitted:   []string{},
		Ambient:     []string{},
	}
	return nil
}

// deniedSyscalls are refused (EPERM) to every process of a container on
// top of the default seccomp profile, which allows them to an unprivileged
// process: attaching to or reading and writing the memory of another
// process of the same uid. Every process of a container runs as the same
// uid, and the function must not reach into its executor.
var deniedSyscalls = []string{"ptrace", "process_vm_readv", "process_vm_writev"}

// withoutSyscalls removes names from every rule of the spec's seccomp
// profile that allows them, so that the profile's default action (EPERM)
// refuses them. It must follow the option that sets the profile.
func withoutSyscalls(names ...string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil || s.Linux.Seccomp == nil {
			return errors.New("no seccomp profile to remove syscalls from")
		}
		rules := s.Linux.Seccomp.Syscalls[:0]
		for _, r := range s.Linux.Seccomp.Syscalls {
			if r.Action == specs.ActAllow {
				r.Names = slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return slices.Contains(names, n) })
				if len(r.Names) == 0 {
					continue
				}
			}
			rules = append(rules, r)
		}
		s.Linux.Seccomp.Syscalls = rules
		return nil
	}
}

// withNetworkNamespace makes sure the container gets a new network
// namespace (containerd's default spec has one; this guards that default).
func withNetworkNamespace(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = ""
			return nil
		}
	}
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	return nil
}

// withMounts replaces containerd's /run tmpfs (its mount point would have to
// exist in the read-only root) with the /tmp tmpfs, the read-only bind of
// the container's socket directory at pool.ExecutorDir and the spec's own
// read-only binds.
func withMounts(socketDir string, binds []pool.Mount) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		mounts := s.Mounts[:0]
		for _, m := range s.Mounts {
			switch m.Destination {
			case "/run", "/tmp", pool.ExecutorDir:
				continue
			}
			mounts = append(mounts, m)
		}
		s.Mounts = append(mounts,
			specs.Mount{
				Destination: "/tmp",
				Type:        "tmpfs",
				Source:      "tmpfs",
				Options:     []string{"nosuid", "nodev", "mode=1777", "size=" + strconv.Itoa(TmpfsSize>>20) + "m"},
			},
			specs.Mount{
				Destination: pool.ExecutorDir,
				Type:        "bind",
				Source:      socketDir,
				Options:     []string{"rbind", "ro", "nosuid", "nodev"},
			},
		)
		for _, b := range binds {
			s.Mounts = append(s.Mounts, specs.Mount{
				Destination: b.Target,
				Type:        "bind",
				Source:      b.Source,
				Options:     []string{"rbind", "ro", "nosuid", "nodev"},
			})
		}
		return nil
	}
}

// orDiscard returns w, or io.Discard for nil.
func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
