package pool

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrContainerNotFound is returned (wrapped) by a Driver for an id it does not
// know.
var ErrContainerNotFound = errors.New("container not found")

// ErrUnavailable is returned (wrapped) by a Driver whose container runtime
// cannot be reached now (containerd down or restarting). Containers already
// running are not affected. The pool passes it on unchanged: a call that
// needed a new container gets it from Acquire and may be retried later.
var ErrUnavailable = errors.New("container runtime unavailable")

// ContainerSpec is everything a Driver needs to create one function container.
type ContainerSpec struct {
	// ID is unique among live containers: [A-Za-z0-9_.-], at most 76 bytes.
	ID string
	// Function is the name of the function the container serves, or empty for
	// a stem cell. Drivers record it as a label.
	Function string
	// RootFS is a host directory used read-only as the container's root.
	RootFS string
	// Args is the process command line; Args[0] is a path inside RootFS.
	Args []string
	// Env is the process environment, as KEY=VALUE.
	Env []string
	// Cwd is the process's working directory, an absolute path inside
	// RootFS; empty means "/".
	Cwd string
	// SocketDir is the container's own host directory, bind-mounted at
	// ExecutorDir inside the container. The agent's socket lives there.
	SocketDir string
	// Mounts are further read-only bind mounts, such as a function's code
	// over a runtime's shared root filesystem. Each Target must be a
	// directory of RootFS.
	Mounts []Mount
	// MemoryBytes is the hard memory limit; 0 means DefaultMemoryBytes.
	MemoryBytes int64
	// CPUMillis is the CPU quota in millicores; 0 means unlimited.
	CPUMillis int64
	// PidsLimit bounds the number of tasks in the container; 0 means
	// DefaultPidsLimit.
	PidsLimit int64
	// Stdout and Stderr receive the process output; nil discards it.
	Stdout, Stderr io.Writer
}

// Mount is a host directory bind-mounted read-only (nosuid, nodev) into a
// container.
type Mount struct {
	// Source is an absolute host path; Target an absolute path inside the
	// container, other than "/", ExecutorDir, /proc, /dev, /sys and /tmp.
	Source, Target string
}

// SpecError is a ContainerSpec a Driver could never start: Field names the
// ContainerSpec field (CPUMillis, Env, Args, MemoryBytes, ...) and Reason
// says what is wrong with it.
type SpecError struct {
	Field, Reason string
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Reason }

// SpecChecker is a Driver that can tell, before any container is created,
// whether it could start one from a spec: the kernel's and the runtime's
// real limits (a CPU quota too small to set, an environment over the exec
// limit). CheckSpec ignores ID, SocketDir, Stdout and Stderr; a spec it
// refuses gives an error wrapping a *SpecError. It is safe for concurrent
// use and touches nothing.
type SpecChecker interface {
	CheckSpec(spec ContainerSpec) error
}

// RootFSPreparer is a Driver that needs a root filesystem directory made
// ready before containers run from it (mount points, the container user's
// passwd entry). PrepareRootFS must be safe to run again on the same dir,
// and must not run while containers use it.
type RootFSPreparer interface {
	PrepareRootFS(dir string) error
}

// PrepareRootFS makes dir usable as a ContainerSpec.RootFS for the pool's
// driver; drivers that are no RootFSPreparer need nothing done.
func (p *Pool) PrepareRootFS(dir string) error {
	if rp, ok := p.driver.(RootFSPreparer); ok {
		return rp.PrepareRootFS(dir)
	}
	return nil
}

// ErrImageNotFound is returned (wrapped) by an ImageStore for a reference
// it holds no image of (and, where it pulls, could not pull).
var ErrImageNotFound = errors.New("image not found")

// ErrInvalidImage is returned (wrapped) by ImageStore.ImportImage for an
// archive that is no image (neither an OCI image layout nor a docker save
// archive, or one whose content is broken), and by ImageRootFS for an image
// it cannot run (no manifest for this node's platform, a layer it cannot
// apply).
var ErrInvalidImage = errors.New("invalid image")

// Image is an image an ImageStore holds.
type Image struct {
	// Name is its canonical reference ("docker.io/library/hello:1").
	Name string
	// Digest is the digest of its manifest, or of its index.
	Digest string
	// SizeBytes is the size of its content for the node's platform.
	SizeBytes int64
	// Created is when it was imported.
	Created time.Time
}

// ImageRootFS is an image made ready to run: its root filesystem as a
// directory and what its config says about the process.
type ImageRootFS struct {
	Image
	// Dir is a host directory usable as ContainerSpec.RootFS (the driver's
	// PrepareRootFS has run on it). It is shared by every function of the
	// image and must not be written to.
	Dir string
	// Entrypoint and Cmd are the image config's: the process runs
	// Entrypoint followed by Cmd.
	Entrypoint, Cmd []string
	// Env is the image config's environment, as KEY=VALUE.
	Env []string
	// WorkingDir is the image config's working directory; empty means "/".
	WorkingDir string
}

// ImageStore is a Driver that keeps OCI images and runs containers from
// them, without a registry: images come in as archives. Every method is
// safe for concurrent use and honours ctx cancellation. A reference is
// matched as given and in its canonical form ("hello:1" is
// "docker.io/library/hello:1").
type ImageStore interface {
	// ImportImage reads an image archive from r, a docker-archive
	// (docker save) or an OCI image layout as a tar (not compressed; its
	// layers may be), stores its content and returns the images it named
	// (an image without a name gets one from its digest). An image of the
	// same name is replaced. An archive that is no image is an error
	// wrapping ErrInvalidImage.
	ImportImage(ctx context.Context, r io.Reader) ([]Image, error)
	// Images lists the stored images, sorted by name.
	Images(ctx context.Context) ([]Image, error)
	// Image returns the stored image ref names, or an error wrapping
	// ErrImageNotFound; it never pulls.
	Image(ctx context.Context, ref string) (Image, error)
	// RemoveImage deletes the stored image ref names (its content once no
	// other image shares it, and its root filesystem directory once no
	// other image has the same digest), or returns an error wrapping
	// ErrImageNotFound. The caller makes sure no container runs from it.
	RemoveImage(ctx context.Context, ref string) error
	// ImageRootFS returns the image ref names ready to run, making its
	// root filesystem directory the first time (the image's layers
	// applied in order; later calls find it). A ref the store does not
	// hold may be pulled from its registry, within a short bound; when
	// that fails too the error wraps ErrImageNotFound and names ref.
	ImageRootFS(ctx context.Context, ref string) (ImageRootFS, error)
}

// Images returns the driver's ImageStore, or false when the driver keeps
// no images.
func (p *Pool) Images() (ImageStore, bool) {
	is, ok := p.driver.(ImageStore)
	return is, ok
}

// ExecutorDir is where a container sees its SocketDir.
const ExecutorDir = "/kiln"

// SocketName is the name of the agent's socket inside SocketDir.
const SocketName = "agent.sock"

// Defaults for ContainerSpec fields left zero.
const (
	DefaultMemoryBytes = 128 << 20
	DefaultPidsLimit   = 256
	// ContainerUID is the non-root user and group function processes run as.
	ContainerUID = 65534
)

// Stats is a reading of a container's cgroup.
type Stats struct {
	// CPUUser and CPUSystem are the CPU time used since the container started.
	CPUUser, CPUSystem time.Duration
	// MemoryBytes is the current memory use; MemoryPeakBytes the highest seen.
	MemoryBytes, MemoryPeakBytes int64
}

// Driver creates and controls containers. pool/containerd is the real one;
// tests use a fake. Every method is safe for concurrent use and honours ctx
// cancellation for the calls it makes to the runtime.
type Driver interface {
	// Start creates the container described by spec and starts its process.
	// It returns once the process has been started; readiness is the
	// executor's Ready message, never Start's return. On error nothing is
	// left behind (or, when the runtime went away during Start, the driver
	// deletes what is left once it is back). While the runtime cannot be
	// reached Start fails at once with an error wrapping ErrUnavailable.
	Start(ctx context.Context, spec ContainerSpec) error
	// Exited returns a channel closed when the container's process exits,
	// or ErrContainerNotFound.
	Exited(id string) (<-chan struct{}, error)
	// Remove kills the container's process if it runs and deletes the
	// container. Removing a missing container is not an error. While the
	// runtime cannot be reached, a driver may kill the processes itself
	// and delete the container once the runtime is back: when Remove
	// returns nil nothing of the container runs any more and the driver
	// owns whatever is left of it.
	Remove(ctx context.Context, id string) error
	// List returns the ids of every container the driver manages, including
	// those an earlier run left behind.
	List(ctx context.Context) ([]string, error)
	// Stats reads the container's cgroup counters.
	Stats(ctx context.Context, id string) (Stats, error)
	// Freeze stops every process of the container with the cgroup
	// freezer. It returns once the container is frozen.
	Freeze(ctx context.Context, id string) error
	// Thaw resumes a frozen container; thawing a running one is a no-op.
	// It is on the call path: implementations write the cgroup directly and
	// never call containerd when they can avoid it.
	Thaw(ctx context.Context, id string) error
	// Update sets the container's memory limit and CPU quota (millicores;
	// 0 removes the quota), as when a stem cell becomes a function's
	// container.
	Update(ctx context.Context, id string, memoryBytes, cpuMillis int64) error
}
