package csharp_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnfx/kiln/runtimes/csharp"
)

// requireMcs skips the test when mcs is not installed, unless in CI
// (CI=true), where it fails.
func requireMcs(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mcs"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mcs is not installed (make setup installs it): %v", err)
		}
		t.Skipf("mcs is not installed: %v", err)
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBuild(t *testing.T) {
	requireMcs(t)
	dir := writeFiles(t, map[string]string{
		"Handler.cs": "using Kiln;\npublic static class Handler { public static object Handle(Request r) { return Greeting.Of(r.Text); } }\n",
		// A helper in a subdirectory, and a Main of the function's own,
		// which is no entry point.
		"lib/Greeting.cs":   "static class Greeting { public static string Of(string n) { return \"Hello, \" + n; } static void Main() {} }\n",
		".hidden/Broken.cs": "not C#",
		"bin/Broken.cs":     "not C#",
	})
	program, err := csharp.Build(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, ".kiln", "build", "handler.exe"); program != want {
		t.Errorf("Build returned %s, want %s", program, want)
	}
	if fi, err := os.Stat(program); err != nil || fi.Size() == 0 {
		t.Errorf("the program: %v, %v", fi, err)
	}
}

func TestBuildCompileError(t *testing.T) {
	requireMcs(t)
	dir := writeFiles(t, map[string]string{
		"Handler.cs": "using Kiln;\npublic static class Handler {\n  public static object Handle(Request r) { return undefinedThing; }\n}\n",
	})
	_, err := csharp.Build(t.Context(), dir)
	if err == nil || !strings.Contains(err.Error(), "Handler.cs(3,") || !strings.Contains(err.Error(), "error CS0103") || !strings.Contains(err.Error(), "undefinedThing") {
		t.Errorf("Build returned %v, want mcs's error CS0103 at Handler.cs line 3", err)
	}
}

func TestBuildNoSources(t *testing.T) {
	dir := writeFiles(t, map[string]string{"kiln.yaml": "name: x\n"})
	if _, err := csharp.Build(t.Context(), dir); err == nil || !strings.Contains(err.Error(), "no .cs files") {
		t.Errorf("Build returned %v", err)
	}
}

func TestSources(t *testing.T) {
	dir := writeFiles(t, map[string]string{"b.cs": "", "a/c.cs": "", "obj/x.cs": "", ".kiln/build/Worker.cs": "", "readme.md": ""})
	got, err := csharp.Sources(dir)
	if err != nil || strings.Join(got, " ") != "a/c.cs b.cs" {
		t.Errorf("Sources = %q, %v", got, err)
	}
}

// TestTemplateBuilds compiles the template's handler.
func TestTemplateBuilds(t *testing.T) {
	requireMcs(t)
	src, err := fs.ReadFile(csharp.Template, "Handler.cs.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	dir := writeFiles(t, map[string]string{"Handler.cs": strings.ReplaceAll(string(src), "{{.Name}}", "hello")})
	if _, err := csharp.Build(t.Context(), dir); err != nil {
		t.Fatal(err)
	}
}
