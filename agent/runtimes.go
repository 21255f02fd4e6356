package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/pool"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	"github.com/kilnfx/kiln/runtimes"
	"github.com/kilnfx/kiln/runtimes/rootfs"
)

// Where the containers of a runtime other than go see what the agent gives
// them over the runtime's shared, read-only root filesystem.
const (
	// CodeMountPath is the function's code directory.
	CodeMountPath = "/function"
	// ExecutorMountPath is the host directory holding the executor binary.
	ExecutorMountPath = "/kiln-bin"
	// ExecutorName is the executor binary's name in it.
	ExecutorName = "kiln-executor"
)

// Environment the agent gives the generic executor (cmd/kiln-executor).
const (
	EnvRuntime     = "KILN_RUNTIME"
	EnvCodeDir     = "KILN_CODE_DIR"
	EnvHandler     = "KILN_HANDLER"
	EnvConcurrency = "KILN_CONCURRENCY"
)

// DefaultPath is the PATH of a runtime's container unless the function
// sets its own.
const DefaultPath = "PATH=/usr/local/bin:/usr/bin:/bin"

// RuntimeNames returns every runtime a FunctionSpec may name, sorted.
func RuntimeNames() []string {
	return slices.Sorted(slices.Values(append(runtimes.Names(), "go")))
}

// recipeOf returns the recipe of the root filesystem of spec's runtime
// with spec's extra packages. Errors wrap ErrInvalidArgument.
func recipeOf(name string, packages []string) (*rootfs.Recipe, error) {
	rt := runtimes.Get(name)
	if rt == nil {
		return nil, fmt.Errorf("%w: runtime: unknown runtime %q (one of: %v)", ErrInvalidArgument, name, RuntimeNames())
	}
	r, err := rootfs.ParseRecipe(rt.Name, rt.Recipe)
	if err != nil {
		return nil, fmt.Errorf("recipe of runtime %s: %w", rt.Name, err)
	}
	if len(packages) == 0 {
		return r, nil
	}
	r, err = r.With(packages)
	if err != nil {
		return nil, fmt.Errorf("%w: packages: %v", ErrInvalidArgument, err)
	}
	return r, nil
}

// InstallExecutor copies the static generic executor binary exe into
// dataDir/bin and returns that directory, which every container of a
// runtime other than go mounts at ExecutorMountPath. The copy is replaced
// atomically: running containers keep the binary they started with.
func InstallExecutor(dataDir, exe string) (string, error) {
	if err := checkELF(exe); err != nil {
		return "", fmt.Errorf("executor %s %w", exe, err)
	}
	binDir := filepath.Join(dataDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", fmt.Errorf("install executor: %w", err)
	}
	tmp := filepath.Join(binDir, "."+ExecutorName+".tmp")
	if err := copyFile(exe, tmp); err != nil {
		return "", fmt.Errorf("install executor: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(binDir, ExecutorName)); err != nil {
		return "", fmt.Errorf("install executor: %w", err)
	}
	return binDir, nil
}

// PrepareRuntimeRootFS returns the hook that makes a freshly built runtime
// root filesystem usable: the mount points of the code and the executor,
// then the driver's own preparation (prepare, say the pool's
// PrepareRootFS).
func PrepareRuntimeRootFS(prepare func(dir string) error) func(dir string) error {
	return func(dir string) error {
		for _, d := range []string{CodeMountPath, ExecutorMountPath} {
			if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
				return err
			}
		}
		return prepare(dir)
	}
}

// runtimeBase returns the built root filesystem of runtime with the extra
// packages, building it first when build is set and it is missing. A
// missing one is an ErrUnavailable naming the command that builds it.
func (a *Agent) runtimeBase(ctx context.Context, runtime string, packages []string, build bool) (rootfs.Base, error) {
	r, err := recipeOf(runtime, packages)
	if err != nil {
		return rootfs.Base{}, err
	}
	if b, ok := a.bases.Lookup(r); ok {
		return b, nil
	}
	if !build {
		return rootfs.Base{}, fmt.Errorf("%w: runtime %s (recipe %s) is not built: `kiln runtime build %s`, or deploy the function again", ErrUnavailable, runtime, r.Hash(), runtime)
	}
	return a.buildBase(ctx, r, io.Discard)
}

// buildBase builds r (once, however many ask at the same time), logging its
// progress and writing it to w as lines "stage elapsed".
func (a *Agent) buildBase(ctx context.Context, r *rootfs.Recipe, w io.Writer) (rootfs.Base, error) {
	a.log.Info("runtime build", "runtime", r.Name, "recipe", r.Hash(), "packages", r.Packages)
	b, err := a.bases.Build(ctx, r, func(stage string, elapsed time.Duration) {
		a.log.Info("runtime build", "runtime", r.Name, "recipe", r.Hash(), "stage", stage, "elapsed", elapsed.Round(time.Millisecond))
		fmt.Fprintf(w, "%s %s\n", stage, elapsed.Round(time.Millisecond))
	})
	if err != nil {
		if ctx.Err() != nil {
			return rootfs.Base{}, ctx.Err()
		}
		if errors.Is(err, rootfs.ErrInvalidRecipe) || errors.Is(err, rootfs.ErrUnknownPackage) {
			return rootfs.Base{}, fmt.Errorf("%w: runtime %s: %v", ErrInvalidArgument, r.Name, err)
		}
		return rootfs.Base{}, fmt.Errorf("%w: runtime %s: %v", ErrUnavailable, r.Name, err)
	}
	a.log.Info("runtime built", "runtime", b.Name, "recipe", b.Hash, "size", b.Size, "build_time", b.BuildTime)
	return b, nil
}

// BuildRuntime builds the base root filesystem of the named runtime unless
// it is built already, writing progress lines ("stage elapsed") to w.
// An unknown runtime is an ErrInvalidArgument; a failed build (an
// unreachable mirror, an unknown package) an ErrUnavailable naming the
// cause.
func (a *Agent) BuildRuntime(ctx context.Context, name string, w io.Writer) (*kilnv1.Runtime, error) {
	r, err := recipeOf(name, nil)
	if err != nil {
		return nil, err
	}
	if b, ok := a.bases.Lookup(r); ok {
		return runtimeRecord(b), nil
	}
	b, err := a.buildBase(ctx, r, w)
	if err != nil {
		return nil, err
	}
	return runtimeRecord(b), nil
}

// Runtimes lists the built root filesystems, by name.
func (a *Agent) Runtimes(ctx context.Context) ([]*kilnv1.Runtime, error) {
	bases, err := a.bases.List()
	if err != nil {
		return nil, err
	}
	out := make([]*kilnv1.Runtime, 0, len(bases))
	for _, b := range bases {
		out = append(out, runtimeRecord(b))
	}
	slices.SortFunc(out, func(x, y *kilnv1.Runtime) int {
		if x.Name != y.Name {
			if x.Name < y.Name {
				return -1
			}
			return 1
		}
		return x.Built.AsTime().Compare(y.Built.AsTime())
	})
	return out, nil
}

// RemoveRuntime removes the built root filesystems of the named runtime
// that no deployed function uses; one in use is an ErrConflict
// naming a function that uses it.
func (a *Agent) RemoveRuntime(ctx context.Context, name string) error {
	if _, err := recipeOf(name, nil); err != nil {
		return err
	}
	a.deployMu.Lock()
	defer a.deployMu.Unlock()
	users := make(map[string]string) // recipe hash → a function using it
	a.mu.RLock()
	for _, fn := range a.functions {
		if s := fn.record.Spec; s.Runtime == name {
			if r, err := recipeOf(name, s.Packages); err == nil {
				users[r.Hash()] = fn.record.Name
			}
		}
	}
	a.mu.RUnlock()
	var inUse error
	err := a.bases.Remove(name, func(hash string) bool {
		if fn, ok := users[hash]; ok {
			inUse = fmt.Errorf("%w: runtime %s (recipe %s) is used by function %s", ErrConflict, name, hash, fn)
			return true
		}
		return false
	})
	if inUse != nil {
		return inUse
	}
	return err
}

func runtimeRecord(b rootfs.Base) *kilnv1.Runtime {
	return &kilnv1.Runtime{
		Name:       b.Name,
		RecipeHash: b.Hash,
		Packages:   b.Packages,
		SizeBytes:  b.Size,
		Built:      timestamppb.New(b.Built),
		BuildTime:  durationpb.New(b.BuildTime),
	}
}

// runtimeFunction fills fn, a function of a runtime other than go whose
// code is in codeDir, to run on the root filesystem base: the code and the
// executor are mounted over it, and the executor is told the runtime,
// handler and concurrency. A function with extra packages runs on a root
// filesystem of its own, so stem cells (started on the plain base) cannot
// serve it.
func (a *Agent) runtimeFunction(fn *pool.Function, s *kilnv1.FunctionSpec, codeDir, base string) {
	fn.RootFS = base
	fn.Mounts = []pool.Mount{
		{Source: codeDir, Target: CodeMountPath},
		{Source: a.binDir, Target: ExecutorMountPath},
	}
	fn.Args = []string{ExecutorMountPath + "/" + ExecutorName}
	if _, set := s.Env["PATH"]; !set {
		fn.Env = append(fn.Env, DefaultPath)
	}
	fn.Env = append(fn.Env,
		EnvRuntime+"="+s.Runtime,
		EnvCodeDir+"="+CodeMountPath,
		EnvHandler+"="+s.Handler,
		EnvConcurrency+"="+strconv.Itoa(int(s.Concurrency)),
	)
	fn.Handler = s.Handler
	if len(s.Packages) == 0 {
		fn.Code = codeDir
	} else {
		fn.Code = ""
	}
}

// RuntimeStemCells returns the pool's description of count stem cells of
// runtime (not go) on its plain base root filesystem in bases, built first
// when missing (a minute or so, once), with the executor of binDir (see
// InstallExecutor).
func RuntimeStemCells(ctx context.Context, bases *rootfs.Store, binDir, runtime string, count int) (pool.StemSpec, error) {
	r, err := recipeOf(runtime, nil)
	if err != nil {
		return pool.StemSpec{}, fmt.Errorf("stem cells: %w", err)
	}
	b, ok := bases.Lookup(r)
	if !ok {
		if b, err = bases.Build(ctx, r, nil); err != nil {
			return pool.StemSpec{}, fmt.Errorf("stem cells of %s: build its root filesystem: %w", runtime, err)
		}
	}
	return pool.StemSpec{
		Runtime:     runtime,
		RootFS:      b.RootFS,
		Mounts:      []pool.Mount{{Source: binDir, Target: ExecutorMountPath}},
		Args:        []string{ExecutorMountPath + "/" + ExecutorName},
		Env:         []string{EnvRuntime + "=" + runtime, DefaultPath, "GOMAXPROCS=1"},
		Count:       count,
		MemoryBytes: DefaultMemoryMB << 20,
	}, nil
}
