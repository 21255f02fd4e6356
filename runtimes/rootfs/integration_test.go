package rootfs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfx/kiln/runtimes"
	"github.com/kilnfx/kiln/runtimes/rootfs"
)

// The tests of this file run the real mmdebstrap against the recipe's
// mirror (deb.debian.org by default). They need root and mmdebstrap (make
// setup); without them they skip, except with CI=true, where they fail.

// requireMmdebstrap skips the test when it cannot run mmdebstrap as root,
// unless CI=true, where it fails instead.
func requireMmdebstrap(t *testing.T) {
	t.Helper()
	if testing.Short() || os.Getenv("KILN_UNIT_ONLY") != "" {
		t.Skip("runs mmdebstrap (-short or KILN_UNIT_ONLY)")
	}
	reason := ""
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		reason = "mmdebstrap is not installed (make setup)"
	} else if os.Geteuid() != 0 {
		reason = "mmdebstrap tests need root"
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(reason + " (CI=true)")
	}
	t.Skip(reason)
}

// countingStore returns a store in a new directory whose mmdebstrap is a
// wrapper counting its runs, and a function returning the count.
func countingStore(t *testing.T, opts ...rootfs.Option) (*rootfs.Store, func() int) {
	t.Helper()
	tmp := t.TempDir()
	count := filepath.Join(tmp, "runs")
	wrapper := filepath.Join(tmp, "mmdebstrap")
	script := fmt.Sprintf("#!/bin/sh\necho run >> %s\nexec mmdebstrap \"$@\"\n", count)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := rootfs.NewStore(filepath.Join(tmp, "runtimes"), append([]rootfs.Option{rootfs.WithMmdebstrap(wrapper)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s, func() int {
		data, _ := os.ReadFile(count)
		return strings.Count(string(data), "\n")
	}
}

func parse(t *testing.T, name, data string) *rootfs.Recipe {
	t.Helper()
	r, err := rootfs.ParseRecipe(name, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const jqRecipe = `
suite: bookworm
variant: extract
packages: [jq]
remove: [/usr/share/doc/*, /var/cache/apt/*, /var/lib/apt/lists/*, /usr/lib/*/gconv]
`

// runAsNobody runs argv in the tree as uid 65534, the tree bind-mounted
// read-only in a mount namespace of its own, and returns its output.
func runAsNobody(t *testing.T, tree string, argv ...string) (string, error) {
	t.Helper()
	return runAsNobodyWith(t, tree, "", argv...)
}

// runAsNobodyWith is runAsNobody with the directory tmp, when not empty,
// bind-mounted read-only at the tree's /tmp, and with /proc mounted, as a
// container has it (mono needs it), when the tree has the mount point.
func runAsNobodyWith(t *testing.T, tree, tmp string, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	script := `mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec chroot --userspec=65534:65534 "$0" "$@"`
	if tmp != "" {
		script = `mount --bind "$0" "$0" && mount --bind "$KILN_TMP" "$0/tmp" && mount -o remount,bind,ro "$0/tmp" && { [ ! -d "$0/proc" ] || mount -t proc proc "$0/proc"; } && mount -o remount,bind,ro "$0" && exec chroot --userspec=65534:65534 "$0" "$@"`
	}
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, tree}, argv...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "NODE_EXTRA_CA_CERTS=", "KILN_TMP=" + tmp}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestMmdebstrapBuild builds jq twice at once and once more: mmdebstrap
// runs once, the tree works for an unprivileged user on a read-only root.
func TestMmdebstrapBuild(t *testing.T) {
	requireMmdebstrap(t)
	s, runs := countingStore(t)
	r := parse(t, "jq", jqRecipe)

	var mu sync.Mutex
	var stages []string
	progress := func(stage string, elapsed time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		stages = append(stages, stage)
		t.Logf("%-12s %v", stage, elapsed.Round(time.Millisecond))
	}
	var wg sync.WaitGroup
	bases := make([]rootfs.Base, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() { bases[i], errs[i] = s.Build(t.Context(), r, progress) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Build %d: %v", i, err)
		}
	}
	if n := runs(); n != 1 {
		t.Errorf("two concurrent Builds ran mmdebstrap %d times, want 1", n)
	}
	b := bases[0]
	if bases[1].RootFS != b.RootFS || !bases[1].Built.Equal(b.Built) {
		t.Errorf("concurrent Builds returned %+v and %+v", bases[0], bases[1])
	}
	t.Logf("jq: %d bytes in %v, stages %v", b.Size, b.BuildTime, stages)
	for _, want := range []string{rootfs.StageStart, rootfs.StageResolving, rootfs.StageDownloading, rootfs.StageUnpacking, rootfs.StageCleaning, rootfs.StageDone} {
		if !strings.Contains(strings.Join(stages, " "), want) {
			t.Errorf("stages %v lack %s", stages, want)
		}
	}
	if b.Size < 100_000 || b.Size > 60_000_000 {
		t.Errorf("Size %d, want a small tree", b.Size)
	}
	if _, err := os.Stat(filepath.Join(b.RootFS, "usr/bin/jq")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(b.RootFS), "base.json")); err != nil {
		t.Error(err)
	}
	if m, _ := filepath.Glob(filepath.Join(b.RootFS, "usr/share/doc/*")); len(m) > 0 {
		t.Errorf("remove globs left %v", m)
	}
	if out, err := runAsNobody(t, b.RootFS, "/usr/bin/jq", "-n", "1+1"); err != nil || strings.TrimSpace(out) != "2" {
		t.Errorf("jq as nobody on a read-only root: %q, %v", out, err)
	}
	if got, ok := s.Lookup(r); !ok || got.RootFS != b.RootFS {
		t.Errorf("Lookup = %+v, %v", got, ok)
	}
	start := time.Now()
	again, err := s.Build(t.Context(), r, nil)
	if err != nil || again.RootFS != b.RootFS || runs() != 1 {
		t.Errorf("third Build = %+v, %v after %d mmdebstrap runs", again, err, runs())
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a complete build took %v to find", d)
	}
	if l, err := s.List(); err != nil || len(l) != 1 || l[0].Hash != r.Hash() {
		t.Errorf("List = %+v, %v", l, err)
	}
}

func TestMmdebstrapUnknownPackage(t *testing.T) {
	requireMmdebstrap(t)
	s, _ := countingStore(t)
	r := parse(t, "jq", "suite: bookworm\nvariant: extract\npackages: [jq, kiln-no-such-package]\n")
	_, err := s.Build(t.Context(), r, nil)
	if !errors.Is(err, rootfs.ErrUnknownPackage) || !strings.Contains(err.Error(), "kiln-no-such-package") || strings.Contains(err.Error(), "jq,") {
		t.Fatalf("Build error = %v, want ErrUnknownPackage naming kiln-no-such-package alone", err)
	}
	t.Log(err)
	assertEmpty(t, s, r)
}

func TestMmdebstrapMirrorUnreachable(t *testing.T) {
	requireMmdebstrap(t)
	s, _ := countingStore(t)
	r := parse(t, "jq", "suite: bookworm\nvariant: extract\nmirror: http://127.0.0.1:9/debian\npackages: [jq]\n")
	_, err := s.Build(t.Context(), r, nil)
	if !errors.Is(err, rootfs.ErrMirrorUnreachable) || !strings.Contains(err.Error(), "http://127.0.0.1:9/debian") {
		t.Fatalf("Build error = %v, want ErrMirrorUnreachable naming the mirror", err)
	}
	t.Log(err)
	assertEmpty(t, s, r)
}

// TestMmdebstrapCancel cancels a build while it downloads: mmdebstrap and
// its children are killed and nothing is left.
func TestMmdebstrapCancel(t *testing.T) {
	requireMmdebstrap(t)
	s, runs := countingStore(t)
	r := parse(t, "jq", jqRecipe)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var once sync.Once
	_, err := s.Build(ctx, r, func(stage string, _ time.Duration) {
		if stage == rootfs.StageDownloading {
			once.Do(cancel)
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Build error = %v, want context.Canceled", err)
	}
	// The build ends in the background; then nothing may be left.
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, _ := filepath.Glob(filepath.Join(s.Dir(), ".tmp-*"))
		if len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left after cancellation: %v", m)
		}
		time.Sleep(100 * time.Millisecond)
	}
	assertEmpty(t, s, r)
	if runs() != 1 {
		t.Errorf("mmdebstrap ran %d times", runs())
	}
	out, _ := exec.Command("pgrep", "-f", s.Dir()).Output()
	if len(out) > 0 {
		t.Errorf("processes left: %s", out)
	}
}

// assertEmpty checks that r has no complete build and that the store holds
// no directory.
func assertEmpty(t *testing.T, s *rootfs.Store, r *rootfs.Recipe) {
	t.Helper()
	if _, ok := s.Lookup(r); ok {
		t.Error("a failed build is complete")
	}
	entries, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("left in the store: %s", e.Name())
		}
	}
}

// TestRuntimeRecipes parses the recipes kiln embeds.
func TestRuntimeRecipes(t *testing.T) {
	for _, name := range runtimes.Names() {
		r, err := rootfs.ParseRecipe(name, runtimes.Get(name).Recipe)
		if err != nil {
			t.Errorf("runtime %s: %v", name, err)
			continue
		}
		if r.Suite != "bookworm" || r.Mirror != rootfs.DefaultMirror {
			t.Errorf("runtime %s: suite %s, mirror %s", name, r.Suite, r.Mirror)
		}
	}
}

// runtimeCacheDir keeps the runtimes' builds across runs of
// TestRuntimeRootFS, so a re-run takes no time.
const runtimeCacheDir = "/var/cache/kiln-test/runtimes"

// TestRuntimeRootFS builds the root filesystems of the python3, node, ruby,
// csharp and binary runtimes from their recipes (in runtimeCacheDir, so only the first
// run builds) and checks that each works as uid 65534 on a read-only root
// and keeps to its size aim. It takes about half a minute the first time,
// and runs only with KILN_TEST_RUNTIME_ROOTFS=1.
func TestRuntimeRootFS(t *testing.T) {
	if os.Getenv("KILN_TEST_RUNTIME_ROOTFS") != "1" {
		t.Skip("set KILN_TEST_RUNTIME_ROOTFS=1 to build the runtimes' root filesystems")
	}
	requireMmdebstrap(t)
	// The mount points a container needs, as kilnd's preparation of a
	// tree makes them (trees built before this have none but /tmp).
	mountPoints := rootfs.WithPrepare(func(tree string) error {
		for _, dir := range []string{"proc", "sys", "dev", "tmp"} {
			if err := os.MkdirAll(filepath.Join(tree, dir), 0o755); err != nil {
				return err
			}
		}
		return nil
	})
	s, err := rootfs.NewStore(runtimeCacheDir, mountPoints)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		runtime string
		maxSize int64
		argv    []string
		want    string
		prefix  bool // the output need only begin with want
		// csharp, when set, is a C# program compiled with mcs into
		// /tmp/hello.exe (a read-only bind mount) before argv runs.
		csharp string
	}{
		{"python3", 60 << 20, []string{"/usr/bin/python3", "-c", "import json, threading, traceback, importlib.util, sys; print(json.dumps(sys.version_info[:2]))"}, "[3, 11]", false, ""},
		{"node", 120 << 20, []string{"/usr/bin/node", "-e", `require("fs"); console.log(process.version.split(".")[0])`}, "v18", false, ""},
		{"ruby", 60 << 20, []string{"/usr/bin/ruby", "-e", `require "json"; require "thread"; puts JSON.generate({a: RUBY_VERSION[0, 3]})`}, `{"a":"3.1"}`, false, ""},
		{"binary", 30 << 20, []string{"/bin/sh", "-c", `printf 'a b\n' | cut -d' ' -f2 | sed s/b/ok/ | grep ok | head -n1 | tr -d '\n'; ls / >/dev/null`}, "ok", false, ""},
		{"cpp", 30 << 20, []string{"/bin/sh", "-c", "echo ok"}, "ok", false, ""},
		// With no /proc in the chroot the dynamic linker cannot expand the
		// JVM's $ORIGIN run path (a container has /proc): it is given.
		{"java", 250 << 20, []string{"/lib64/ld-linux-x86-64.so.2", "--library-path", "/usr/lib/jvm/java-17-openjdk-amd64/lib", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "-XX:-UsePerfData", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-version"}, "openjdk version \"17.", true, ""},
		{"csharp", 60 << 20, []string{"/usr/bin/mono", "/tmp/hello.exe"}, `{"a":"ok","n":3}`, false,
			`using System; using System.Linq; using System.Collections.Generic; using System.Runtime.InteropServices;
class Hello {
  [DllImport("libc")] static extern int getpid();
  static void Main() {
    var n = new List<int> { 1, 2, 3 }.Where(x => x > 0).Count();
    if (getpid() <= 0) throw new Exception("getpid");
    System.IO.File.ReadAllBytes("/proc/self/status");
    Console.WriteLine("{\"a\":\"" + new Uri("http://ok/").Host + "\",\"n\":" + n + "}");
  }
}`},
	} {
		t.Run(tc.runtime, func(t *testing.T) {
			r, err := rootfs.ParseRecipe(tc.runtime, runtimes.Get(tc.runtime).Recipe)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
			defer cancel()
			b, err := s.Build(ctx, r, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %.1f MB, built in %v (%s)", tc.runtime, float64(b.Size)/1e6, b.BuildTime, b.RootFS)
			if b.Size > tc.maxSize {
				t.Errorf("%s: %d bytes, aim at most %d", tc.runtime, b.Size, tc.maxSize)
			}
			tmp := ""
			if tc.csharp != "" {
				tmp = compileCSharp(t, tc.csharp)
			}
			out, err := runAsNobodyWith(t, b.RootFS, tmp, tc.argv...)
			if got := strings.TrimSpace(out); err != nil || got != tc.want && !(tc.prefix && strings.HasPrefix(got, tc.want)) {
				t.Errorf("%q as nobody on a read-only root: %q, %v; want %q", tc.argv, out, err, tc.want)
			}
		})
	}
}

// compileCSharp compiles source with mcs into hello.exe in a new directory
// readable by uid 65534, and returns the directory.
func compileCSharp(t *testing.T, source string) string {
	t.Helper()
	if _, err := exec.LookPath("mcs"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mcs is not installed (make setup installs it): %v", err)
		}
		t.Skipf("mcs is not installed: %v", err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hello.cs"), []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "mcs", "-nologo", "-out:"+filepath.Join(dir, "hello.exe"), filepath.Join(dir, "hello.cs"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mcs: %v\n%s", err, out)
	}
	return dir
}
