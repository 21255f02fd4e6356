package cpp_test

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfx/kiln/runtimes/cpp"
	goruntime "github.com/kilnfx/kiln/runtimes/go"
)

// requireCompiler skips the test when g++ is missing, unless CI is set,
// where it fails.
func requireCompiler(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(cpp.Compiler); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (make setup installs it): %v", cpp.Compiler, err)
		}
		t.Skipf("%s is not installed: %v", cpp.Compiler, err)
	}
}

// TestBuildTemplate builds the function `kiln init --runtime cpp` writes:
// a static executable, with the SDK beside it.
func TestBuildTemplate(t *testing.T) {
	requireCompiler(t)
	dir := filepath.Join(t.TempDir(), "hello")
	if err := goruntime.WriteTemplate(dir, "hello", cpp.Template); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"handler.cpp", "kiln.yaml", ".gitignore"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("the template lacks %s: %v", name, err)
		}
	}
	cfg, err := goruntime.LoadConfig(filepath.Join(dir, goruntime.ConfigFile))
	if err != nil || cfg.Runtime != cpp.Name {
		t.Errorf("the template's kiln.yaml: %+v, %v", cfg, err)
	}
	bin, err := cpp.Build(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if bin != filepath.Join(dir, ".kiln", "build", "handler") {
		t.Errorf("Build returned %s", bin)
	}
	if sdk, err := os.ReadFile(filepath.Join(dir, ".kiln", "sdk", "kiln.hpp")); err != nil || string(sdk) != string(cpp.SDK) {
		t.Errorf("the SDK was not written beside the function: %v", err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an interpreter: it is not statically linked", bin)
		}
	}
}

// TestBuildErrors checks that a compile error is reported with the
// compiler's message, and a directory with no handler.cpp as such.
func TestBuildErrors(t *testing.T) {
	requireCompiler(t)
	dir := t.TempDir()
	if _, err := cpp.Build(t.Context(), dir); err == nil || !strings.Contains(err.Error(), "no handler.cpp") {
		t.Errorf("Build of an empty directory: %v", err)
	}
	src := "#include \"kiln.hpp\"\nint main() { return kiln::serve(no_such_handler); }\n"
	if err := os.WriteFile(filepath.Join(dir, "handler.cpp"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := cpp.Build(t.Context(), dir)
	if err == nil || !strings.Contains(err.Error(), "handler.cpp:2") || !strings.Contains(err.Error(), "no_such_handler") ||
		!strings.Contains(err.Error(), "-static") {
		t.Errorf("Build of a broken handler.cpp returned %v, want the command and the compiler's message", err)
	}
}
