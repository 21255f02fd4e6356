package goruntime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"

	"github.com/kilnfx/kiln"
)

// Paths inside a function directory that Build writes.
const (
	// SDKDir holds the kiln SDK module; the function's go.mod replaces
	// github.com/kilnfx/kiln with it.
	SDKDir = ".kiln/sdk"
	// BinaryPath is the built function binary.
	BinaryPath = ".kiln/build/handler"
)

// maxOutput bounds the command output Build puts in an error.
const maxOutput = 16 << 10

// Build compiles the Go function in dir into one static binary and returns
// its absolute path (dir/.kiln/build/handler).
//
// It writes the kiln SDK into dir/.kiln/sdk, adds kiln's go.sum lines missing
// from dir/go.sum (so the SDK's dependencies need no checksum-database
// lookup), then runs, with the go command found in PATH and the caller's
// environment (GOPROXY, GOFLAGS, caches) plus CGO_ENABLED=0, GOWORK=off and
// -mod=mod:
//
//	go mod tidy -e
//	go build -trimpath -buildvcs=false -ldflags=-s -o dir/.kiln/build/handler .
//
// tidy runs with -e because it also loads the tests of the SDK's dependencies,
// whose own dependencies (never part of the build) may be neither in the
// module cache nor reachable; the build reports any error that matters. A
// failed command's error includes its output. Cancelling ctx kills the
// running command. Build is not safe to run concurrently on the same dir.
func Build(ctx context.Context, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := checkGoMod(dir); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build: the go command is needed to build Go functions: %w", err)
	}
	sdk := filepath.Join(dir, filepath.FromSlash(SDKDir))
	if err := os.RemoveAll(sdk); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := kiln.WriteSDK(sdk); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := mergeGoSum(filepath.Join(dir, "go.sum"), kiln.GoSum()); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	bin := filepath.Join(dir, filepath.FromSlash(BinaryPath))
	env := buildEnv()
	if err := runGo(ctx, dir, env, goBin, "mod", "tidy", "-e"); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := runGo(ctx, dir, env, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s", "-o", bin, "."); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	return bin, nil
}

// checkGoMod checks that dir is a Go module whose go.mod replaces the kiln
// module, so that the build can never look kiln up on a module proxy.
func checkGoMod(dir string) error {
	path := filepath.Join(dir, "go.mod")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: no go.mod: not a Go function directory (see kiln init)", dir)
	}
	if err != nil {
		return err
	}
	f, err := modfile.Parse(path, data, nil)
	if err != nil {
		return err
	}
	for _, r := range f.Replace {
		if r.Old.Path == kiln.ModulePath {
			return nil
		}
	}
	return fmt.Errorf("%s: no replace directive for %s; add:\n\treplace %s => ./%s", path, kiln.ModulePath, kiln.ModulePath, SDKDir)
}

// buildEnv is the caller's environment with the settings Build needs; later
// entries win in os/exec.
func buildEnv() []string {
	flags := strings.TrimSpace(os.Getenv("GOFLAGS") + " -mod=mod")
	return append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS="+flags)
}

// runGo runs the go command in dir and returns an error holding its output
// when it fails.
func runGo(ctx context.Context, dir string, env []string, goBin string, args ...string) error {
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), ctx.Err())
	}
	out = bytes.TrimSpace(out)
	if len(out) > maxOutput {
		out = append([]byte("...\n"), out[len(out)-maxOutput:]...)
	}
	return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
}

// mergeGoSum appends to the go.sum at path (creating it) the lines of sum it
// lacks. It leaves the file untouched when nothing is missing.
func mergeGoSum(path string, sum []byte) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	have := make(map[string]bool)
	sc := bufio.NewScanner(bytes.NewReader(old))
	for sc.Scan() {
		have[strings.TrimSpace(sc.Text())] = true
	}
	var add bytes.Buffer
	sc = bufio.NewScanner(bytes.NewReader(sum))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && !have[l] {
			have[l] = true
			add.WriteString(l)
			add.WriteByte('\n')
		}
	}
	if add.Len() == 0 {
		return nil
	}
	merged := old
	if len(merged) > 0 && merged[len(merged)-1] != '\n' {
		merged = append(merged, '\n')
	}
	merged = append(merged, add.Bytes()...)
	return os.WriteFile(path, merged, 0o644)
}
