package kiln

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

func TestWriteSDK(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sdk")
	if err := WriteSDK(dir); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatalf("written go.mod does not parse: %v\n%s", err, data)
	}
	if f.Module.Mod.Path != ModulePath {
		t.Errorf("module = %q, want %q", f.Module.Mod.Path, ModulePath)
	}
	if f.Go == nil || !strings.HasPrefix(f.Go.Version, "1.26") {
		t.Errorf("go directive = %v, want 1.26", f.Go)
	}
	if len(f.Replace) != 0 || len(f.Exclude) != 0 || f.Toolchain != nil {
		t.Errorf("unexpected replace/exclude/toolchain in\n%s", data)
	}

	kilnData, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	kilnMod, err := modfile.Parse("go.mod", kilnData, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, r := range kilnMod.Require {
		want[r.Mod.Path] = r.Mod.Version
	}
	var direct []string
	for _, r := range f.Require {
		if r.Mod.Version != want[r.Mod.Path] {
			t.Errorf("require %s %s, kiln has %q", r.Mod.Path, r.Mod.Version, want[r.Mod.Path])
		}
		if !r.Indirect {
			direct = append(direct, r.Mod.Path)
		}
	}
	if wantDirect := []string{"google.golang.org/grpc", "google.golang.org/protobuf"}; !slices.Equal(direct, wantDirect) {
		t.Errorf("direct requirements = %v, want %v", direct, wantDirect)
	}

	for _, src := range sdkSources {
		matches, err := filepath.Glob(filepath.Join(filepath.FromSlash(src), "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(matches) == 0 {
			t.Fatalf("no sources in %s", src)
		}
		for _, m := range matches {
			got, err := os.ReadFile(filepath.Join(dir, m))
			if strings.HasSuffix(m, "_test.go") {
				if !os.IsNotExist(err) {
					t.Errorf("%s written (err %v)", m, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s not written: %v", m, err)
				continue
			}
			orig, err := os.ReadFile(m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, orig) {
				t.Errorf("%s differs from the source", m)
			}
		}
	}
}

func TestWriteSDKEmptyDir(t *testing.T) {
	if err := WriteSDK(""); err == nil {
		t.Fatal("WriteSDK(\"\") succeeded")
	}
}

func TestGoSum(t *testing.T) {
	want, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(GoSum(), want) {
		t.Error("GoSum differs from go.sum")
	}
	if !bytes.Contains(GoSum(), []byte("google.golang.org/grpc ")) {
		t.Error("GoSum has no line for google.golang.org/grpc")
	}
}

// TestSDKModuleDeps checks that the written SDK module resolves with its own
// go.mod, kiln's go.sum and no module proxy, to the very module versions kiln
// builds the SDK packages with. It fails when the SDK grows a dependency
// sdkDirect/sdkIndirect do not list.
func TestSDKModuleDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("go not in PATH")
		}
		t.Skip("go not in PATH")
	}
	dir := t.TempDir()
	if err := WriteSDK(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), GoSum(), 0o644); err != nil {
		t.Fatal(err)
	}
	list := func(dir string, pkgs ...string) []string {
		t.Helper()
		args := append([]string{"list", "-mod=readonly", "-deps", "-f", "{{with .Module}}{{.Path}} {{.Version}}{{end}}"}, pkgs...)
		cmd := exec.Command(goBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=", "GOWORK=off", "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
		}
		var mods []string
		for _, l := range strings.Split(string(out), "\n") {
			if l = strings.TrimSpace(l); l != "" && !slices.Contains(mods, l) {
				mods = append(mods, l)
			}
		}
		slices.Sort(mods)
		return mods
	}
	got := list(dir, "./...")
	want := list(".", "./executor/sdk", "./proto/executorpb")
	if !slices.Equal(got, want) {
		t.Errorf("SDK module builds with\n%s\nkiln builds the SDK with\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
