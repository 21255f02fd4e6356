package java

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Paths inside a function directory that Build writes.
const (
	// SDKDir holds the worker's sources, kiln/*.java.
	SDKDir = ".kiln/sdk"
	// ClassesDir holds the compiled classes: the function's code.
	ClassesDir = ".kiln/build/classes"
)

// Compiler is the Java compiler Build runs, found in PATH.
const Compiler = "javac"

// CompileFlags are the flags Build compiles with: Java 17's language and
// API, the release of the runtime's JVM.
var CompileFlags = []string{"--release", "17", "-encoding", "UTF-8"}

// maxOutput bounds the compiler output Build puts in an error.
const maxOutput = 16 << 10

// Build compiles the Java function in dir and returns the absolute path of
// its classes directory (dir/.kiln/build/classes). It writes the worker's
// sources into dir/.kiln/sdk/kiln/, empties the classes directory, then
// runs, in dir:
//
//	javac --release 17 -encoding UTF-8 -d .kiln/build/classes .kiln/sdk/kiln/*.java *.java
//
// with every .java file of dir and its subdirectories (but .kiln and
// hidden ones). A failed compile's error holds the compiler's output (its
// last 16 KiB). Cancelling ctx kills the compiler. Build is not safe to
// run concurrently on the same dir.
func Build(ctx context.Context, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	sources, err := userSources(dir)
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if len(sources) == 0 {
		return "", fmt.Errorf("build: %s: no .java file: not a Java function directory (see kiln init)", dir)
	}
	compiler, err := exec.LookPath(Compiler)
	if err != nil {
		return "", fmt.Errorf("build: the %s command (a JDK) is needed to build Java functions: %w", Compiler, err)
	}
	sdk := filepath.Join(dir, filepath.FromSlash(SDKDir))
	if err := os.RemoveAll(sdk); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(sdk, "kiln"), 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	entries, err := fs.ReadDir(SDK, "kiln")
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	args := append([]string{}, CompileFlags...)
	args = append(args, "-d", ClassesDir)
	for _, e := range entries {
		src, err := fs.ReadFile(SDK, path.Join("kiln", e.Name()))
		if err != nil {
			return "", fmt.Errorf("build: %w", err)
		}
		rel := path.Join(SDKDir, "kiln", e.Name())
		if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(rel)), src, 0o644); err != nil {
			return "", fmt.Errorf("build: %w", err)
		}
		args = append(args, rel)
	}
	args = append(args, sources...)
	classes := filepath.Join(dir, filepath.FromSlash(ClassesDir))
	if err := os.RemoveAll(classes); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := os.MkdirAll(classes, 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
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
		return "", fmt.Errorf("build: %s: %w\n%s", Compiler, err, out)
	}
	return classes, nil
}

// userSources returns the .java files under dir, relative to it, leaving
// out .kiln and hidden directories.
func userSources(dir string) ([]string, error) {
	var sources []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".java") {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			sources = append(sources, filepath.ToSlash(rel))
		}
		return nil
	})
	return sources, err
}
