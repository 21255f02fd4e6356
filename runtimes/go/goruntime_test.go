package goruntime

import (
	"errors"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"

	"github.com/kilnfx/kiln"
)

func TestInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "hello")
	if err := Init(dir, "hello"); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	src := read("handler.go")
	f, err := parser.ParseFile(token.NewFileSet(), "handler.go", src, 0)
	if err != nil {
		t.Fatalf("handler.go does not parse: %v\n%s", err, src)
	}
	if f.Name.Name != "main" {
		t.Errorf("handler.go package %s, want main", f.Name.Name)
	}
	for _, want := range []string{"func Handle(ctx context.Context, req *sdk.Request) (*sdk.Response, error)", "sdk.Serve(Handle)", `"X-Handler": []string{"hello"}`, `"Hello, "`} {
		if !strings.Contains(string(src), want) {
			t.Errorf("handler.go lacks %s", want)
		}
	}

	mod, err := modfile.Parse("go.mod", read("go.mod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if mod.Module.Mod.Path != "hello" || mod.Go == nil || mod.Go.Version != "1.26" {
		t.Errorf("go.mod: module %q go %v", mod.Module.Mod.Path, mod.Go)
	}
	if len(mod.Require) != 1 || mod.Require[0].Mod.Path != kiln.ModulePath || mod.Require[0].Mod.Version != "v0.0.0" {
		t.Errorf("go.mod requires %v", mod.Require)
	}
	if len(mod.Replace) != 1 || mod.Replace[0].Old.Path != kiln.ModulePath || mod.Replace[0].New.Path != "./.kiln/sdk" {
		t.Errorf("go.mod replaces %v", mod.Replace)
	}

	cfg, err := LoadConfig(filepath.Join(dir, ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Name: "hello", Runtime: "go", Memory: 128, Timeout: "30s"}
	if cfg.Name != want.Name || cfg.Runtime != want.Runtime || cfg.Memory != want.Memory || cfg.Timeout != want.Timeout {
		t.Errorf("kiln.yaml = %+v, want %+v", cfg, want)
	}

	if got := strings.TrimSpace(lastLine(read(".gitignore"))); got != ".kiln/" {
		t.Errorf(".gitignore = %q", got)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func TestInitEmptyExistingDir(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, "fn"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "handler.go")); err != nil {
		t.Fatal(err)
	}
}

func TestInitRefuses(t *testing.T) {
	nonEmpty := t.TempDir()
	if err := os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir, fn, want string
	}{
		{"non-empty dir", nonEmpty, "fn", "not empty"},
		{"file", file, "fn", "not a directory"},
		{"bad name", filepath.Join(t.TempDir(), "x"), "Hello", "invalid function name"},
		{"empty name", filepath.Join(t.TempDir(), "x"), "", "invalid function name"},
		{"path name", filepath.Join(t.TempDir(), "x"), "../x", "invalid function name"},
		{"empty dir", "", "fn", "empty directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Init(tt.dir, tt.fn)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Init(%q, %q) = %v, want an error containing %q", tt.dir, tt.fn, err, tt.want)
			}
		})
	}
	if entries, _ := os.ReadDir(nonEmpty); len(entries) != 1 {
		t.Errorf("Init wrote into a non-empty dir: %v", entries)
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "hello", "hello-world", "f1", "a" + strings.Repeat("b", 62)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "1a", "-a", "Hello", "a_b", "a.b", "a/b", "a" + strings.Repeat("b", 63), "héllo"} {
		if err := ValidateName(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}
