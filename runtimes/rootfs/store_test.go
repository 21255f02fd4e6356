package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary acts as a fake mmdebstrap when fakeEnv is set: it prints
// mmdebstrap-like lines, makes a small tree at its target (its second last
// argument), appends a line to $KILN_FAKE_MMDEBSTRAP_COUNT, and then does
// what fakeEnv says: "ok", "sleep" (waits to be killed), "missing" (fails
// as apt does on an unknown package) or "fail".
const fakeEnv = "KILN_FAKE_MMDEBSTRAP"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeMmdebstrap(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeMmdebstrap(mode string, args []string) int {
	if count := os.Getenv(fakeEnv + "_COUNT"); count != "" {
		f, err := os.OpenFile(count, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, strings.Join(args, " "))
			f.Close()
		}
	}
	target := args[len(args)-2]
	fmt.Println("I: running apt-get update...")
	fmt.Println("I: downloading packages with apt...")
	switch mode {
	case "missing":
		fmt.Println("E: Unable to locate package kiln-no-such-package")
		fmt.Println("E: mmdebstrap failed to run")
		return 1
	case "fail":
		fmt.Println("E: something else broke")
		return 1
	}
	fmt.Println("I: extracting archives...")
	for _, d := range []string{"usr/bin", "usr/share/doc/jq", "var/log"} {
		os.MkdirAll(filepath.Join(target, d), 0o700)
	}
	os.WriteFile(filepath.Join(target, "usr/bin/jq"), []byte("#!/bin/sh\n"), 0o700)
	os.WriteFile(filepath.Join(target, "usr/share/doc/jq/copyright"), []byte("text"), 0o600)
	os.WriteFile(filepath.Join(target, "var/log/dpkg.log"), []byte("log"), 0o600)
	os.Link(filepath.Join(target, "usr/bin/jq"), filepath.Join(target, "usr/bin/jq-link"))
	if mode == "sleep" {
		time.Sleep(time.Minute)
	}
	fmt.Println("I: cleaning package lists and apt cache...")
	return 0
}

// fakeStore returns a store in a new directory whose mmdebstrap is the fake
// one in the given mode, and the file counting its runs.
func fakeStore(t *testing.T, mode string, opts ...Option) (*Store, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	count := filepath.Join(t.TempDir(), "runs")
	t.Setenv(fakeEnv, mode)
	t.Setenv(fakeEnv+"_COUNT", count)
	t.Setenv("GORACE", "atexit_sleep_ms=0") // a -race fake would sleep 1 s on exit
	s, err := NewStore(filepath.Join(t.TempDir(), "runtimes"), append([]Option{WithMmdebstrap(exe)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s, count
}

// runs returns how many times the fake mmdebstrap ran.
func runs(t *testing.T, count string) int {
	t.Helper()
	data, err := os.ReadFile(count)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

func tinyRecipe(t *testing.T, name string) *Recipe {
	t.Helper()
	r, err := ParseRecipe(name, []byte("suite: bookworm\nvariant: extract\npackages: [jq]\nremove: [/usr/share/doc/*, /var/log/*]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// stageRecorder records the stages a progress function is given.
type stageRecorder struct {
	mu     sync.Mutex
	stages []string
}

func (s *stageRecorder) progress(stage string, _ time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stages = append(s.stages, stage)
}

func (s *stageRecorder) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.stages)
}

func TestBuildFake(t *testing.T) {
	var prepared string
	s, count := fakeStore(t, "ok", WithPrepare(func(rootfs string) error {
		prepared = rootfs
		return os.MkdirAll(filepath.Join(rootfs, "proc"), 0o755)
	}))
	r := tinyRecipe(t, "tiny")
	var rec stageRecorder
	b, err := s.Build(t.Context(), r, rec.progress)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{StageStart, StageResolving, StageDownloading, StageUnpacking, StageCleaning, StagePreparing, StageDone}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Errorf("stages %v, want %v", got, want)
	}
	if b.Name != "tiny" || b.Hash != r.Hash() || b.RootFS != filepath.Join(s.Dir(), "tiny-"+r.Hash(), "rootfs") {
		t.Errorf("Base %+v", b)
	}
	if filepath.Base(prepared) != "rootfs" || !strings.HasPrefix(prepared, s.Dir()+"/.tmp-") {
		t.Errorf("prepare ran on %q, want the temporary tree", prepared)
	}
	if _, err := os.Stat(filepath.Join(b.RootFS, "proc")); err != nil {
		t.Errorf("the prepared tree is not the one built: %v", err)
	}
	if b.Size != int64(len("#!/bin/sh\n")) {
		t.Errorf("Size %d, want one copy of the hard-linked jq", b.Size)
	}
	if !slices.Equal(b.Packages, []string{"jq"}) || b.Built.IsZero() || b.BuildTime <= 0 {
		t.Errorf("Base %+v", b)
	}
	for _, gone := range []string{"usr/share/doc/jq", "var/log/dpkg.log"} {
		if _, err := os.Lstat(filepath.Join(b.RootFS, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", gone, err)
		}
	}
	for p, want := range map[string]os.FileMode{"usr/bin/jq": 0o705, "usr/bin": 0o705, "var/log": 0o705} {
		fi, err := os.Stat(filepath.Join(b.RootFS, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	if got, ok := s.Lookup(r); !ok || got.Size != b.Size || !got.Built.Equal(b.Built) || got.BuildTime != b.BuildTime {
		t.Errorf("Lookup = %+v, %v; want %+v", got, ok, b)
	}

	rec = stageRecorder{}
	again, err := s.Build(t.Context(), r, rec.progress)
	if err != nil {
		t.Fatal(err)
	}
	if n := runs(t, count); n != 1 {
		t.Errorf("mmdebstrap ran %d times for two Builds, want 1", n)
	}
	if again.RootFS != b.RootFS || !slices.Equal(rec.get(), []string{StageDone}) {
		t.Errorf("second Build = %+v with stages %v", again, rec.get())
	}
}

func TestBuildArgs(t *testing.T) {
	s, count := fakeStore(t, "ok")
	r, err := tinyRecipe(t, "tiny").With([]string{"sed"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Build(t.Context(), r, nil); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(count)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Fields(string(data))
	for _, want := range []string{"--variant=extract", "--include=jq,sed", "--dpkgopt=path-exclude=/usr/share/doc/*", "bookworm", DefaultMirror} {
		if !slices.Contains(args, want) {
			t.Errorf("mmdebstrap args %q lack %q", args, want)
		}
	}
}

func TestBuildConcurrentFake(t *testing.T) {
	s, count := fakeStore(t, "ok")
	r := tinyRecipe(t, "tiny")
	const n = 4
	bases := make([]Base, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { bases[i], errs[i] = s.Build(t.Context(), r, nil) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || bases[i].RootFS != bases[0].RootFS || !bases[i].Built.Equal(bases[0].Built) {
			t.Errorf("Build %d = %+v, %v; want %+v", i, bases[i], errs[i], bases[0])
		}
	}
	if got := runs(t, count); got != 1 {
		t.Errorf("mmdebstrap ran %d times for %d concurrent Builds, want 1", got, n)
	}
}

func TestBuildMissingPackageFake(t *testing.T) {
	s, _ := fakeStore(t, "missing")
	r := tinyRecipe(t, "tiny")
	_, err := s.Build(t.Context(), r, nil)
	if !errors.Is(err, ErrUnknownPackage) || !strings.Contains(err.Error(), "kiln-no-such-package") {
		t.Fatalf("Build error = %v, want ErrUnknownPackage naming kiln-no-such-package", err)
	}
	assertNothingLeft(t, s, r)
}

func TestBuildFailureFake(t *testing.T) {
	s, _ := fakeStore(t, "fail")
	r := tinyRecipe(t, "tiny")
	_, err := s.Build(t.Context(), r, nil)
	if !errors.Is(err, ErrBuildFailed) || !strings.Contains(err.Error(), "E: something else broke") {
		t.Fatalf("Build error = %v, want ErrBuildFailed with the output's tail", err)
	}
	assertNothingLeft(t, s, r)
}

func TestBuildPrepareFails(t *testing.T) {
	s, _ := fakeStore(t, "ok", WithPrepare(func(string) error { return errors.New("no passwd") }))
	r := tinyRecipe(t, "tiny")
	if _, err := s.Build(t.Context(), r, nil); err == nil || !strings.Contains(err.Error(), "no passwd") {
		t.Fatalf("Build error = %v, want the prepare hook's", err)
	}
	assertNothingLeft(t, s, r)
}

// TestBuildCancelFake cancels the only caller of a build: mmdebstrap is
// killed and nothing is left.
func TestBuildCancelFake(t *testing.T) {
	s, count := fakeStore(t, "sleep")
	r := tinyRecipe(t, "tiny")
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	var once sync.Once
	errc := make(chan error, 1)
	go func() {
		_, err := s.Build(ctx, r, func(stage string, _ time.Duration) {
			if stage == StageUnpacking {
				once.Do(func() { close(started) })
			}
		})
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Build error = %v, want context.Canceled", err)
	}
	waitNoBuilds(t, s)
	assertNothingLeft(t, s, r)
	if n := runs(t, count); n != 1 {
		t.Errorf("mmdebstrap ran %d times", n)
	}
}

// TestBuildWaiterCancel: a waiter whose ctx ends returns at once while the
// build goes on for the other caller.
func TestBuildWaiterCancel(t *testing.T) {
	s, _ := fakeStore(t, "ok")
	r := tinyRecipe(t, "tiny")
	// Hold the build's lock, as another process would, so both calls wait.
	unlock, locked, err := s.tryLock(key(r))
	if err != nil || !locked {
		t.Fatal(locked, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 2)
	basec := make(chan Base, 1)
	go func() {
		b, err := s.Build(t.Context(), r, nil)
		basec <- b
		errc <- err
	}()
	go func() {
		_, err := s.Build(ctx, r, nil)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: error %v", err)
	}
	unlock()
	b := <-basec
	if err := <-errc; err != nil {
		t.Fatalf("the other caller: %v", err)
	}
	if _, ok := s.Lookup(r); !ok || b.Hash != r.Hash() {
		t.Fatalf("the build did not complete: %+v", b)
	}
}

// TestLeftoversNotComplete: temporary directories and builds without
// metadata are never complete, and NewStore removes them.
func TestLeftoversNotComplete(t *testing.T) {
	s, _ := fakeStore(t, "ok")
	r := tinyRecipe(t, "tiny")
	k := key(r)
	tmp := filepath.Join(s.Dir(), ".tmp-"+k+"-123")
	final := filepath.Join(s.Dir(), k)
	for _, d := range []string{tmp, final} {
		if err := os.MkdirAll(filepath.Join(d, "rootfs/usr/bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Metadata in the temporary directory, as if it had been written
	// there: still not complete.
	if err := writeMetadata(tmp, Base{Name: r.Name, Hash: r.Hash()}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup(r); ok {
		t.Fatal("Lookup took a build without metadata as complete")
	}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Fatalf("List = %v, %v; want nothing", l, err)
	}
	// A partial metadata file is not complete either.
	if err := os.WriteFile(filepath.Join(final, metadataFile), []byte(`{"name":"tiny","ha`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup(r); ok {
		t.Fatal("Lookup took a build with broken metadata as complete")
	}

	// While another holds the lock, NewStore leaves them alone.
	unlock, _, err := s.tryLock(k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewStore(s.Dir()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("NewStore removed a build under way: %v", err)
	}
	unlock()
	if _, err := NewStore(s.Dir()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{tmp, final} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("NewStore left %s: %v", d, err)
		}
	}
}

func TestListAndRemove(t *testing.T) {
	s, _ := fakeStore(t, "ok")
	tiny := tinyRecipe(t, "tiny")
	tinySed, err := tiny.With([]string{"sed"})
	if err != nil {
		t.Fatal(err)
	}
	other := tinyRecipe(t, "tiny-other") // a name that starts with the other
	for _, r := range []*Recipe{tiny, tinySed, other} {
		if _, err := s.Build(t.Context(), r, nil); err != nil {
			t.Fatal(err)
		}
	}
	l, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range l {
		got = append(got, b.Name+"-"+b.Hash)
	}
	if want := []string{key(tiny), key(tinySed), key(other)}; !slices.Equal(got, want) && !slices.Equal(got, []string{key(tinySed), key(tiny), key(other)}) {
		t.Errorf("List = %v, want %v in build order", got, want)
	}

	inUse := func(hash string) bool { return hash == tinySed.Hash() }
	err = s.Remove("tiny", inUse)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), key(tinySed)) {
		t.Fatalf("Remove error = %v, want ErrInUse naming %s", err, key(tinySed))
	}
	if _, ok := s.Lookup(tiny); ok {
		t.Error("Remove left the build not in use")
	}
	if _, ok := s.Lookup(tinySed); !ok {
		t.Error("Remove removed the build in use")
	}
	if _, ok := s.Lookup(other); !ok {
		t.Error("Remove of tiny removed tiny-other")
	}
	if err := s.Remove("tiny", func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup(tinySed); ok {
		t.Error("Remove left a build no longer in use")
	}
	if l, _ := s.List(); len(l) != 1 || l[0].Name != "tiny-other" {
		t.Errorf("List after Remove = %+v", l)
	}
	if err := s.Remove("../etc", nil); !errors.Is(err, ErrInvalidRecipe) {
		t.Errorf("Remove of a bad name: %v", err)
	}
}

func TestRemoveRefusesBuildUnderWay(t *testing.T) {
	s, _ := fakeStore(t, "ok")
	r := tinyRecipe(t, "tiny")
	if _, err := s.Build(t.Context(), r, nil); err != nil {
		t.Fatal(err)
	}
	unlock, _, err := s.tryLock(key(r))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := s.Remove("tiny", nil); err == nil || !strings.Contains(err.Error(), "being built or removed") {
		t.Fatalf("Remove while locked: %v", err)
	}
	if _, ok := s.Lookup(r); !ok {
		t.Fatal("Remove removed a locked build")
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/end\04`: `/end\04`} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// waitNoBuilds waits until the store has no build under way.
func waitNoBuilds(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.builds)
		s.mu.Unlock()
		entries, _ := filepath.Glob(filepath.Join(s.Dir(), ".tmp-*"))
		if n == 0 && len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("builds under way: %d, temporary directories %v", n, entries)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertNothingLeft checks that r has no complete build and no directory
// in the store.
func assertNothingLeft(t *testing.T, s *Store, r *Recipe) {
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
