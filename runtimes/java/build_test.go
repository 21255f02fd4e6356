package java_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	goruntime "github.com/kilnfx/kiln/runtimes/go"
	"github.com/kilnfx/kiln/runtimes/java"
)

func requireJavac(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(java.Compiler); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (make setup installs it): %v", java.Compiler, err)
		}
		t.Skipf("%s is not installed: %v", java.Compiler, err)
	}
}

// TestBuildTemplate builds the function `kiln init --runtime java` writes:
// its class and the worker's, in the classes directory.
func TestBuildTemplate(t *testing.T) {
	requireJavac(t)
	dir := filepath.Join(t.TempDir(), "hello")
	if err := goruntime.WriteTemplate(dir, "hello", java.Template); err != nil {
		t.Fatal(err)
	}
	cfg, err := goruntime.LoadConfig(filepath.Join(dir, goruntime.ConfigFile))
	if err != nil || cfg.Runtime != java.Name || cfg.Handler != java.Handler {
		t.Errorf("the template's kiln.yaml: %+v, %v", cfg, err)
	}
	classes, err := java.Build(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, class := range []string{java.Handler, "kiln/Worker.class", "kiln/Request.class", "kiln/Response.class"} {
		if _, err := os.Stat(filepath.Join(classes, class)); err != nil {
			t.Errorf("the build lacks %s: %v", class, err)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	requireJavac(t)
	dir := t.TempDir()
	if _, err := java.Build(t.Context(), dir); err == nil || !strings.Contains(err.Error(), "no .java file") {
		t.Errorf("Build of an empty directory: %v", err)
	}
	src := "public class Handler {\n    public static Object handle(kiln.Request req) { return nope; }\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "Handler.java"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := java.Build(t.Context(), dir); err == nil || !strings.Contains(err.Error(), "Handler.java:2") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Build of a broken Handler.java returned %v, want the compiler's message", err)
	}
}

// TestWorkerSource checks the one-file form of the worker a stem cell runs.
func TestWorkerSource(t *testing.T) {
	src := string(java.WorkerSource())
	if strings.Count(src, "package kiln;") != 1 || strings.Index(src, "public final class Worker") > strings.Index(src, "public final class Request") {
		t.Errorf("WorkerSource has not one package clause, or does not begin with Worker")
	}
}
