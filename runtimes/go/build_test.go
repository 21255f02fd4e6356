package goruntime

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// requireGo skips the test when the go command is truly absent, except in CI.
func requireGo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("go command not in PATH")
		}
		t.Skip("go command not in PATH")
	}
}

// TestBuild builds the init template into a static binary. It needs the go
// command and the module cache (or a module proxy) holding kiln's
// dependencies.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	requireGo(t)
	dir := filepath.Join(t.TempDir(), "hello")
	if err := Init(dir, "hello"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	bin, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, ".kiln", "build", "handler"); bin != want || !filepath.IsAbs(bin) {
		t.Errorf("Build = %q, want %q", bin, want)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Errorf("%s is not executable: %v", bin, fi.Mode())
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a PT_INTERP program header: not static")
		}
	}
	if f.Section(".interp") != nil {
		t.Error("binary has an .interp section: not static")
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}
	if _, err := os.Stat(filepath.Join(dir, ".kiln", "sdk", "executor", "sdk", "sdk.go")); err != nil {
		t.Errorf("SDK not written: %v", err)
	}

	// A second build reuses everything and gives the same binary.
	first, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, dir); err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != string(second) {
		t.Error("rebuilding unchanged code changed the binary")
	}
}

func TestBuildCompileError(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	requireGo(t)
	dir := filepath.Join(t.TempDir(), "broken")
	if err := Init(dir, "broken"); err != nil {
		t.Fatal(err)
	}
	bad := "package main\n\nfunc main() { undefinedThing() }\n"
	if err := os.WriteFile(filepath.Join(dir, "handler.go"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Build(t.Context(), dir)
	if err == nil || !strings.Contains(err.Error(), "undefinedThing") {
		t.Fatalf("Build = %v, want an error with the compiler's output", err)
	}
}

func TestBuildRejectsDir(t *testing.T) {
	noMod := t.TempDir()
	noReplace := t.TempDir()
	if err := os.WriteFile(filepath.Join(noReplace, "go.mod"), []byte("module x\n\ngo 1.26\n\nrequire github.com/kilnfx/kiln v0.0.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, dir, want string }{
		{"no go.mod", noMod, "no go.mod"},
		{"no replace", noReplace, "no replace directive for github.com/kilnfx/kiln"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(t.Context(), tt.dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Build = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestMergeGoSum(t *testing.T) {
	path := filepath.Join(t.TempDir(), "go.sum")
	if err := mergeGoSum(path, []byte("a v1 h1:x=\nb v1 h1:y=\n")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("c v1 h1:z=\na v1 h1:x="), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mergeGoSum(path, []byte("a v1 h1:x=\nb v1 h1:y=\n\n")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "c v1 h1:z=\na v1 h1:x=\nb v1 h1:y=\n"; string(got) != want {
		t.Errorf("go.sum = %q, want %q", got, want)
	}
	fi, _ := os.Stat(path)
	mtime := fi.ModTime()
	time.Sleep(10 * time.Millisecond)
	if err := mergeGoSum(path, []byte("b v1 h1:y=\n")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); !fi.ModTime().Equal(mtime) {
		t.Error("mergeGoSum rewrote a go.sum that had every line")
	}
}
