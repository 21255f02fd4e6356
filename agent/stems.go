package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/kilnfx/kiln/pool"
)

// StemExecutorPath is where a stem cell's root filesystem holds the
// generic executor.
const StemExecutorPath = "/kiln-executor"

// PrepareStemCells builds, under dataDir/stems/<runtime>, the root
// filesystem of the stem cells of runtime from the static executor binary,
// made ready with prepare (the driver's), and returns the pool's
// description of them.
func PrepareStemCells(dataDir, runtime, executor string, count int, prepare func(dir string) error) (pool.StemSpec, error) {
	switch runtime {
	case "go":
	default:
		return pool.StemSpec{}, fmt.Errorf("%w: stem cells: %q is not the go runtime", ErrInvalidArgument, runtime)
	}
	if err := checkELF(executor); err != nil {
		return pool.StemSpec{}, fmt.Errorf("stem cells: executor %s %w", executor, err)
	}
	root := filepath.Join(dataDir, "stems", runtime, "rootfs")
	if err := os.RemoveAll(root); err != nil {
		return pool.StemSpec{}, fmt.Errorf("stem cells: %w", err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return pool.StemSpec{}, fmt.Errorf("stem cells: %w", err)
	}
	if err := prepare(root); err != nil {
		return pool.StemSpec{}, err
	}
	if err := copyFile(executor, filepath.Join(root, StemExecutorPath)); err != nil {
		return pool.StemSpec{}, err
	}
	return pool.StemSpec{
		Runtime:     runtime,
		RootFS:      root,
		Args:        []string{StemExecutorPath},
		Count:       count,
		MemoryBytes: DefaultMemoryMB << 20,
	}, nil
}
