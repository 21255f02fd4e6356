package cpp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Paths inside a function directory.
const (
	// Source is the function's C++ source file.
	Source = "handler.cpp"
	// SDKDir holds kiln.hpp; it is on the include path.
	SDKDir = ".kiln/sdk"
	// BinaryPath is the built function binary.
	BinaryPath = ".kiln/build/handler"
)

// Compiler is the C++ compiler Build runs, found in PATH.
const Compiler = "g++"

// CompileFlags are the flags Build compiles with: C++17, optimised, and
// linked statically (so the binary needs nothing of the root filesystem
// it runs on, not even a C library) and stripped.
var CompileFlags = []string{"-std=c++17", "-O2", "-static", "-s"}

// maxOutput bounds the compiler output Build puts in an error.
const maxOutput = 16 << 10

// Build compiles the C++ function in dir into one static binary and
// returns its absolute path (dir/.kiln/build/handler). It writes kiln.hpp
// into dir/.kiln/sdk, then runs, in dir:
//
//	g++ -std=c++17 -O2 -static -s -I.kiln/sdk -o .kiln/build/handler handler.cpp
//
// A failed compile's error holds the compiler's output (its last 16 KiB).
// Cancelling ctx kills the compiler. Build is not safe to run concurrently
// on the same dir.
func Build(ctx context.Context, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, Source)); errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("build: %s: no %s: not a C++ function directory (see kiln init)", dir, Source)
	}
	compiler, err := exec.LookPath(Compiler)
	if err != nil {
		return "", fmt.Errorf("build: the %s command is needed to build C++ functions: %w", Compiler, err)
	}
	sdk := filepath.Join(dir, filepath.FromSlash(SDKDir))
	if err := os.MkdirAll(sdk, 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := os.WriteFile(filepath.Join(sdk, "kiln.hpp"), SDK, 0o644); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	bin := filepath.Join(dir, filepath.FromSlash(BinaryPath))
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	args := append(append([]string{}, CompileFlags...), "-I"+SDKDir, "-o", BinaryPath, Source)
	cmd := exec.CommandContext(ctx, compiler, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("build: %s: %w", Compiler, ctx.Err())
		}
		out = bytes.TrimSpace(out)
		if len(out) > maxOutput {
			out = append([]byte("...\n"), out[len(out)-maxOutput:]...)
		}
		return "", fmt.Errorf("build: %s %s: %w\n%s", Compiler, strings.Join(args, " "), err, out)
	}
	return bin, nil
}
