package csharp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Paths inside a function directory that Build writes.
const (
	// WorkerPath is the worker's source, written for the compiler.
	WorkerPath = ".kiln/build/Worker.cs"
	// ProgramPath is the built program: the worker and the function.
	ProgramPath = ".kiln/build/" + Handler
)

// CompilerFlags are mcs's flags for a function, besides its sources and
// -out: an optimised executable whose entry point is the worker's, so that
// a Main of the function's is no entry point.
var CompilerFlags = []string{"-nologo", "-optimize+", "-target:exe", "-main:Kiln.Worker"}

// maxOutput bounds the compiler output Build puts in an error.
const maxOutput = 16 << 10

// Build compiles the C# function in dir into one program and returns its
// absolute path (dir/.kiln/build/handler.exe), the function's whole code.
//
// It writes the worker's source to dir/.kiln/build/Worker.cs and runs, in
// dir, with the mcs command found in PATH (Debian's mono-mcs):
//
//	mcs -nologo -optimize+ -target:exe -main:Kiln.Worker -out:.kiln/build/handler.exe .kiln/build/Worker.cs FILES...
//
// where FILES are the *.cs files of dir and its subdirectories, sorted,
// leaving out hidden directories (.kiln, .git) and bin and obj. The program
// references the assemblies it uses by name: they must be in the runtime's
// root filesystem (mscorlib, System, System.Core and their dependencies;
// others come with `packages`). A failed compilation's error holds mcs's
// messages (file(line,column): error CS...). Cancelling ctx kills mcs.
// Build is not safe to run concurrently on the same dir.
func Build(ctx context.Context, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	sources, err := Sources(dir)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if len(sources) == 0 {
		return "", fmt.Errorf("build: %s: no .cs files (kiln init --runtime csharp writes Handler.cs)", dir)
	}
	mcs, err := exec.LookPath("mcs")
	if err != nil {
		return "", fmt.Errorf("build: the mcs command (Debian's mono-mcs) is needed to build C# functions: %w", err)
	}
	worker := filepath.Join(dir, filepath.FromSlash(WorkerPath))
	if err := os.MkdirAll(filepath.Dir(worker), 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := os.WriteFile(worker, Worker, 0o644); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	program := filepath.Join(dir, filepath.FromSlash(ProgramPath))
	if err := os.Remove(program); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("build: %w", err)
	}
	args := append(slices.Clone(CompilerFlags), "-out:"+filepath.ToSlash(ProgramPath), filepath.ToSlash(WorkerPath))
	args = append(args, sources...)
	cmd := exec.CommandContext(ctx, mcs, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("build: mcs: %w", ctx.Err())
		}
		out = bytes.TrimSpace(out)
		if len(out) > maxOutput {
			out = append([]byte("...\n"), out[len(out)-maxOutput:]...)
		}
		return "", fmt.Errorf("build: mcs: %w\n%s", err, out)
	}
	return program, nil
}

// Sources returns the C# sources of the function in dir, relative to dir
// with forward slashes and sorted: the *.cs files of dir and its
// subdirectories, except in hidden directories and in bin and obj.
func Sources(dir string) ([]string, error) {
	var sources []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != dir && (strings.HasPrefix(name, ".") || name == "bin" || name == "obj") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".cs") && d.Type().IsRegular() {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			sources = append(sources, filepath.ToSlash(rel))
		}
		return nil
	})
	slices.Sort(sources)
	return sources, err
}
