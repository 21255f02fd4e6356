// Package rootfs builds the base root filesystems of kiln's runtimes
// (python3, node, ruby, binary) from Debian packages with mmdebstrap,
// following each runtime's recipe.yaml, and keeps them content-addressed in a
// directory: a build of recipe r lives in <dir>/<name>-<hash>/, where hash
// is r.Hash(), so a changed recipe gets a new build and an unchanged one is
// built once.
//
// Layout of the store's directory:
//
//	<name>-<hash>/rootfs        the tree, read-only-friendly (readable by all)
//	<name>-<hash>/base.json     the metadata, written last: the build is
//	                            complete when, and only when, it exists
//	<name>-<hash>.lock          flock held while the build is made or removed
//	.tmp-<name>-<hash>-<random> a build under way (or left by a crash)
//
// A build is made in a temporary directory and renamed into place, then its
// metadata is written (to a temporary file renamed over base.json), so a
// crashed or cancelled build leaves only directories that no Lookup takes as
// complete and that the next Build of that recipe, or NewStore, removes.
package rootfs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Errors of Build and Remove; they are wrapped with the details.
var (
	// ErrUnknownPackage: the mirror has no installable package of a name
	// the recipe lists.
	ErrUnknownPackage = errors.New("unknown package")
	// ErrMirrorUnreachable: the recipe's mirror could not be reached or
	// served no index of the suite.
	ErrMirrorUnreachable = errors.New("mirror unreachable")
	// ErrBuildFailed: mmdebstrap, the cleaning or the prepare hook failed
	// for another reason.
	ErrBuildFailed = errors.New("rootfs build failed")
	// ErrInUse: Remove was asked to remove a build that is in use.
	ErrInUse = errors.New("runtime root filesystem in use")
)

// The stages Build reports to its progress function, in order. Stages
// between StageStart and StageCleaning are recognised in mmdebstrap's
// output and may be missing (an extract build never installs).
const (
	StageStart       = "start"
	StageResolving   = "resolving"
	StageDownloading = "downloading"
	StageUnpacking   = "unpacking"
	StageInstalling  = "installing"
	StageCleaning    = "cleaning"
	StagePreparing   = "preparing"
	StageDone        = "done"
)

// metadataFile is the name of a build's metadata, its completeness marker.
const metadataFile = "base.json"

// Base is a complete build of a recipe.
type Base struct {
	// Name is the runtime's name (Recipe.Name).
	Name string `json:"name"`
	// Hash is the recipe's hash (Recipe.Hash).
	Hash string `json:"hash"`
	// RootFS is the absolute path of the tree. It is not stored: it is
	// where the store found the build.
	RootFS string `json:"-"`
	// Size is the bytes of the tree's regular files, each hard-linked
	// file counted once.
	Size int64 `json:"size"`
	// Built is when the build was completed.
	Built time.Time `json:"built"`
	// BuildTime is how long the build took, mmdebstrap to metadata.
	BuildTime time.Duration `json:"build_time_ns"`
	// Packages are the recipe's packages (without their dependencies).
	Packages []string `json:"packages"`
}

// Store keeps the builds of recipes in one directory and makes them. Its
// methods are safe for concurrent use, and several processes may share a
// directory: builds and removals of one recipe are serialised by a lock
// file.
type Store struct {
	dir        string
	mmdebstrap string
	prepare    func(rootfs string) error
	log        *slog.Logger

	mu     sync.Mutex        // guards builds and every build's waiters and progress
	builds map[string]*build // the builds under way in this process, by key (<name>-<hash>)
}

// build is one build under way in this process, shared by every Build call
// of its recipe.
type build struct {
	done   chan struct{} // closed when base and err are set
	base   Base
	err    error
	cancel context.CancelFunc // ends the build; called when its last waiter leaves

	waiters  int                                               // guarded by Store.mu: Build calls waiting on it
	progress map[int]func(stage string, elapsed time.Duration) // guarded by Store.mu: the waiters' progress functions, by waiter id
	nextID   int                                               // guarded by Store.mu
}

// Option configures a Store.
type Option func(*options)

type options struct {
	prepare    func(rootfs string) error
	mmdebstrap string
	log        *slog.Logger
}

// WithPrepare sets a function run on every finished tree (after the
// remove globs, before the build is marked complete); kilnd passes the
// container driver's PrepareRootFS. An error fails the build.
func WithPrepare(prepare func(rootfs string) error) Option {
	return func(o *options) { o.prepare = prepare }
}

// WithMmdebstrap sets the mmdebstrap program run (a name looked up in PATH
// or a path); the default is "mmdebstrap".
func WithMmdebstrap(path string) Option {
	return func(o *options) { o.mmdebstrap = path }
}

// WithLogger sets the logger of builds and clean-ups; the default discards.
func WithLogger(log *slog.Logger) Option {
	return func(o *options) { o.log = log }
}

// NewStore returns the store of the directory dir (DATA_DIR/runtimes),
// creating it when missing, and removes what crashed builds left there
// (temporary directories, builds without metadata) unless another process
// holds their lock.
func NewStore(dir string, opts ...Option) (*Store, error) {
	o := options{mmdebstrap: "mmdebstrap", log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("rootfs store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("rootfs store: %w", err)
	}
	s := &Store{dir: abs, mmdebstrap: o.mmdebstrap, prepare: o.prepare, log: o.log, builds: map[string]*build{}}
	if err := s.removeLeftovers(); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir returns the store's directory, absolute.
func (s *Store) Dir() string { return s.dir }

// key returns the directory name of a recipe's build.
func key(r *Recipe) string { return r.Name + "-" + r.Hash() }

// Lookup returns the complete build of r, or false when there is none
// (never built, under way, or left incomplete by a crash).
func (s *Store) Lookup(r *Recipe) (Base, bool) {
	b, err := s.readBase(key(r))
	if err != nil || b.Name != r.Name || b.Hash != r.Hash() {
		return Base{}, false
	}
	return b, true
}

// readBase reads the metadata of the build in directory k and checks that
// its tree exists.
func (s *Store) readBase(k string) (Base, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, k, metadataFile))
	if err != nil {
		return Base{}, err
	}
	var b Base
	if err := json.Unmarshal(data, &b); err != nil {
		return Base{}, fmt.Errorf("%s: %w", filepath.Join(s.dir, k, metadataFile), err)
	}
	if b.Name+"-"+b.Hash != k {
		return Base{}, fmt.Errorf("%s: names build %s-%s", filepath.Join(s.dir, k, metadataFile), b.Name, b.Hash)
	}
	b.RootFS = filepath.Join(s.dir, k, "rootfs")
	if fi, err := os.Stat(b.RootFS); err != nil || !fi.IsDir() {
		return Base{}, fmt.Errorf("%s: no tree", filepath.Join(s.dir, k))
	}
	return b, nil
}

// Build returns the complete build of r, making it when there is none.
// Concurrent calls for one recipe make one build, which they all wait for;
// across processes the lock file <name>-<hash>.lock does the same.
//
// progress, when not nil, is called with each stage (Stage*) reached and
// the time since the build began, from another goroutine, one call at a
// time; a call that finds a complete build reports only StageDone.
//
// When ctx ends, Build returns ctx.Err() at once; the build goes on for
// the other callers waiting on it, and when none is left it is cancelled:
// mmdebstrap and its children are killed and the temporary directory is
// removed. Errors wrap ErrUnknownPackage (naming the package),
// ErrMirrorUnreachable (naming the mirror) or ErrBuildFailed (with the
// tail of mmdebstrap's output).
func (s *Store) Build(ctx context.Context, r *Recipe, progress func(stage string, elapsed time.Duration)) (Base, error) {
	if err := ctx.Err(); err != nil {
		return Base{}, err
	}
	if b, ok := s.Lookup(r); ok {
		if progress != nil {
			progress(StageDone, 0)
		}
		return b, nil
	}
	k := key(r)
	s.mu.Lock()
	b := s.builds[k]
	if b == nil {
		bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		b = &build{done: make(chan struct{}), cancel: cancel, progress: map[int]func(string, time.Duration){}}
		s.builds[k] = b
		go s.run(bctx, k, b, r)
	}
	id := b.nextID
	b.nextID++
	b.waiters++
	if progress != nil {
		b.progress[id] = progress
	}
	s.mu.Unlock()

	select {
	case <-b.done:
		return b.base, b.err
	case <-ctx.Done():
		s.mu.Lock()
		delete(b.progress, id)
		b.waiters--
		if b.waiters == 0 {
			// Nobody waits: end the build, and let the next Build of
			// this recipe start afresh rather than join a dying one.
			b.cancel()
			if s.builds[k] == b {
				delete(s.builds, k)
			}
		}
		s.mu.Unlock()
		return Base{}, ctx.Err()
	}
}

// run makes the build b of r and publishes its outcome.
func (s *Store) run(ctx context.Context, k string, b *build, r *Recipe) {
	defer b.cancel()
	report := func(stage string, elapsed time.Duration) {
		s.mu.Lock()
		fns := make([]func(string, time.Duration), 0, len(b.progress))
		for _, id := range slices.Sorted(maps.Keys(b.progress)) {
			fns = append(fns, b.progress[id])
		}
		s.mu.Unlock()
		for _, fn := range fns {
			fn(stage, elapsed)
		}
	}
	base, err := s.buildLocked(ctx, k, r, report)
	s.mu.Lock()
	b.base, b.err = base, err
	if s.builds[k] == b {
		delete(s.builds, k)
	}
	s.mu.Unlock()
	close(b.done)
}

// buildLocked takes the lock file of k, then returns the complete build
// another process may have made meanwhile, or makes it.
func (s *Store) buildLocked(ctx context.Context, k string, r *Recipe, report func(string, time.Duration)) (Base, error) {
	unlock, err := s.lock(ctx, k)
	if err != nil {
		return Base{}, err
	}
	defer unlock()
	if b, ok := s.Lookup(r); ok {
		report(StageDone, 0)
		return b, nil
	}
	if err := s.removeIncompleteLocked(k); err != nil {
		return Base{}, err
	}
	return s.make(ctx, k, r, report)
}

// make builds r in a temporary directory and moves it into place; the lock
// of k is held. On failure nothing of the build is left.
func (s *Store) make(ctx context.Context, k string, r *Recipe, report func(string, time.Duration)) (_ Base, err error) {
	start := time.Now()
	stage := func(name string) { report(name, time.Since(start)) }
	stage(StageStart)
	s.log.Info("building runtime root filesystem", "runtime", r.Name, "hash", r.Hash(), "variant", r.Variant, "packages", r.Packages)

	tmp, err := os.MkdirTemp(s.dir, ".tmp-"+k+"-")
	if err != nil {
		return Base{}, fmt.Errorf("rootfs %s: %w", k, err)
	}
	defer func() {
		if err != nil {
			if rerr := removeTree(tmp); rerr != nil {
				s.log.Warn("removing a failed build", "dir", tmp, "err", rerr)
			}
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Base{}, fmt.Errorf("rootfs %s: %w", k, err)
	}
	rootfs := filepath.Join(tmp, "rootfs")
	if err := s.mmdebstrapRun(ctx, r, rootfs, stage); err != nil {
		return Base{}, fmt.Errorf("rootfs %s: %w", k, err)
	}

	stage(StageCleaning)
	if err := removeGlobs(rootfs, r.Remove); err != nil {
		return Base{}, fmt.Errorf("%w: rootfs %s: removing globs: %v", ErrBuildFailed, k, err)
	}
	if err := makeReadable(rootfs); err != nil {
		return Base{}, fmt.Errorf("%w: rootfs %s: %v", ErrBuildFailed, k, err)
	}
	stage(StagePreparing)
	if s.prepare != nil {
		if err := s.prepare(rootfs); err != nil {
			return Base{}, fmt.Errorf("%w: rootfs %s: prepare: %v", ErrBuildFailed, k, err)
		}
	}
	size, err := treeSize(rootfs)
	if err != nil {
		return Base{}, fmt.Errorf("%w: rootfs %s: %v", ErrBuildFailed, k, err)
	}
	if err := ctx.Err(); err != nil {
		return Base{}, err
	}

	final := filepath.Join(s.dir, k)
	if err := os.Rename(tmp, final); err != nil {
		return Base{}, fmt.Errorf("rootfs %s: %w", k, err)
	}
	tmp = final // from here a failure removes the incomplete build
	b := Base{
		Name:      r.Name,
		Hash:      r.Hash(),
		RootFS:    filepath.Join(final, "rootfs"),
		Size:      size,
		Built:     time.Now().UTC().Round(time.Millisecond),
		BuildTime: time.Since(start).Round(time.Millisecond),
		Packages:  slices.Clone(r.Packages),
	}
	if err := writeMetadata(final, b); err != nil {
		return Base{}, fmt.Errorf("rootfs %s: %w", k, err)
	}
	s.log.Info("built runtime root filesystem", "runtime", r.Name, "hash", b.Hash, "size", b.Size, "took", b.BuildTime)
	stage(StageDone)
	return b, nil
}

// writeMetadata writes dir/base.json through a temporary file renamed over
// it, synced, so the file is whole or absent.
func writeMetadata(dir string, b Base) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".base-*.json")
	if err != nil {
		return err
	}
	_, werr := f.Write(append(data, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr, os.Chmod(f.Name(), 0o644)); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, metadataFile)); err != nil {
		os.Remove(f.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// List returns the complete builds of the store, by name then build time.
func (s *Store) List() ([]Base, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("rootfs store: %w", err)
	}
	var out []Base
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := s.readBase(e.Name())
		if err != nil {
			continue // incomplete or not a build
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Base) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return a.Built.Compare(b.Built)
	})
	return out, nil
}

// Remove removes every build of the runtime name (complete or not) whose
// hash inUse does not report, and any temporary directory of that runtime
// no process is building. It refuses the builds in use, and those being
// built or removed by another process, with an error naming them (wrapping
// ErrInUse for those in use) after removing the others. inUse may be nil.
func (s *Store) Remove(name string, inUse func(hash string) bool) error {
	if !runtimeNameRE.MatchString(name) {
		return fmt.Errorf("%w: runtime name %q", ErrInvalidRecipe, name)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("rootfs store: %w", err)
	}
	var used, busy []string
	var errs []error
	for _, e := range entries {
		k, ok := strings.CutPrefix(e.Name(), ".tmp-")
		if ok {
			k = k[:max(strings.LastIndexByte(k, '-'), 0)]
		}
		if !e.IsDir() || !isKeyOf(k, name) {
			continue
		}
		hash := k[len(name)+1:]
		if !ok && inUse != nil && inUse(hash) {
			used = append(used, k)
			continue
		}
		unlock, locked, err := s.tryLock(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !locked {
			if !ok {
				busy = append(busy, k)
			}
			continue
		}
		dir := filepath.Join(s.dir, e.Name())
		if !ok {
			// Incomplete first: no Lookup takes a half-removed tree.
			if err := os.Remove(filepath.Join(dir, metadataFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("rootfs: removing %s: %w", e.Name(), err))
				unlock()
				continue
			}
		}
		if err := removeTree(dir); err != nil {
			errs = append(errs, fmt.Errorf("rootfs: removing %s: %w", e.Name(), err))
		} else if !ok {
			s.log.Info("removed runtime root filesystem", "runtime", name, "hash", hash)
		}
		unlock()
	}
	if len(used) > 0 {
		errs = append(errs, fmt.Errorf("%w: runtime %s: build %s is used by functions (remove or update them first)", ErrInUse, name, strings.Join(used, ", ")))
	}
	if len(busy) > 0 {
		errs = append(errs, fmt.Errorf("rootfs: runtime %s: build %s is being built or removed; try again", name, strings.Join(busy, ", ")))
	}
	return errors.Join(errs...)
}

// isKeyOf reports whether k is a build directory name of runtime name:
// name, '-', 16 hex digits.
func isKeyOf(k, name string) bool {
	hash, ok := strings.CutPrefix(k, name+"-")
	if !ok || len(hash) != 16 {
		return false
	}
	return strings.Trim(hash, "0123456789abcdef") == ""
}

// removeLeftovers removes, for every build whose lock no one holds, its
// temporary directories and its directory when it has no metadata.
func (s *Store) removeLeftovers() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("rootfs store: %w", err)
	}
	keys := map[string]bool{}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		k, ok := strings.CutPrefix(e.Name(), ".tmp-")
		if ok {
			k = k[:max(strings.LastIndexByte(k, '-'), 0)]
		}
		if i := strings.LastIndexByte(k, '-'); i > 0 && isKeyOf(k, k[:i]) {
			keys[k] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		unlock, locked, err := s.tryLock(k)
		if err != nil {
			return err
		}
		if !locked {
			continue
		}
		err = s.removeIncompleteLocked(k)
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// removeIncompleteLocked removes the temporary directories of k and its
// build directory when that has no valid metadata. The lock of k is held.
func (s *Store) removeIncompleteLocked(k string) error {
	tmps, err := filepath.Glob(filepath.Join(s.dir, ".tmp-"+k+"-*"))
	if err != nil {
		return err
	}
	final := filepath.Join(s.dir, k)
	if _, err := os.Lstat(final); err == nil {
		if _, err := s.readBase(k); err != nil {
			tmps = append(tmps, final)
		}
	}
	for _, dir := range tmps {
		s.log.Info("removing an incomplete runtime root filesystem", "dir", dir)
		if err := removeTree(dir); err != nil {
			return fmt.Errorf("rootfs: removing incomplete build %s: %w", dir, err)
		}
	}
	return nil
}

// lock takes the lock file of k, waiting for another process to release
// it until ctx ends.
func (s *Store) lock(ctx context.Context, k string) (unlock func(), err error) {
	for {
		unlock, locked, err := s.tryLock(k)
		if err != nil || locked {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tryLock takes the lock file of k when no one holds it.
func (s *Store) tryLock(k string) (unlock func(), locked bool, err error) {
	f, err := os.OpenFile(filepath.Join(s.dir, k+".lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("rootfs: lock %s: %w", k, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("rootfs: lock %s: %w", k, err)
	}
	return func() { f.Close() }, true, nil
}

// mmdebstrapRun runs mmdebstrap to build r into rootfs (which must not
// exist), reporting the stages it recognises in its output. Cancelling ctx
// kills mmdebstrap's process group.
func (s *Store) mmdebstrapRun(ctx context.Context, r *Recipe, rootfs string, stage func(string)) error {
	args := []string{
		"--mode=root",
		"--format=directory",
		"--variant=" + r.Variant,
		"--include=" + strings.Join(r.Packages, ","),
		`--aptopt=APT::Install-Recommends "false"`,
		`--aptopt=APT::Install-Suggests "false"`,
		// Never bind-mount the host's /dev into a tree that may be
		// removed; root mode creates the device nodes it needs.
		"--skip=chroot/mount/dev",
	}
	for _, p := range excludedPaths {
		args = append(args, "--dpkgopt=path-exclude="+p)
	}
	args = append(args, r.Suite, rootfs, r.Mirror)

	cmd := exec.CommandContext(ctx, s.mmdebstrap, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// On cancellation: TERM to the process group, so mmdebstrap may
	// unmount what it mounted, then KILL to the group after killGrace.
	// Once mmdebstrap is done the group is killed anyway, so no child
	// outlives it.
	var killTimer *time.Timer
	cmd.Cancel = func() error {
		pgid := cmd.Process.Pid
		killTimer = time.AfterFunc(killGrace, func() { syscall.Kill(-pgid, syscall.SIGKILL) })
		return syscall.Kill(-pgid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 2 * killGrace
	out, in := io.Pipe()
	cmd.Stdout, cmd.Stderr = in, in
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: starting %s: %v (install it: apt-get install mmdebstrap)", ErrBuildFailed, s.mmdebstrap, err)
	}
	pgid := cmd.Process.Pid
	tailc := make(chan *outputTail, 1)
	go func() { tailc <- scanOutput(out, stage) }()
	err := cmd.Wait()
	syscall.Kill(-pgid, syscall.SIGKILL)
	if killTimer != nil { // set by Cancel, which Wait waits for
		killTimer.Stop()
	}
	in.Close()
	tail := <-tailc
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return tail.err(r, err)
	}
	return nil
}

// killGrace is how long a cancelled mmdebstrap has to end on SIGTERM.
const killGrace = 3 * time.Second

// excludedPaths are the paths dpkg does not unpack (documentation, manual
// pages, translations): less to write and to remove afterwards.
var excludedPaths = []string{
	"/usr/share/doc/*",
	"/usr/share/man/*",
	"/usr/share/info/*",
	"/usr/share/locale/*",
	"/usr/share/lintian/*",
	"/usr/share/linda/*",
}

// stageMarkers map the beginnings of mmdebstrap's lines to stages.
var stageMarkers = []struct{ prefix, stage string }{
	{"I: running apt-get update", StageResolving},
	{"I: downloading packages", StageDownloading},
	{"I: extracting archives", StageUnpacking},
	{"I: installing essential packages", StageInstalling},
	{"I: installing remaining packages", StageInstalling},
}

// outputTail holds what mmdebstrap's output says about a failure.
type outputTail struct {
	lines   []string // the last lines
	missing []string // packages apt could not find
	fetch   string   // the first "Failed to fetch" line
}

const tailLines = 20

// scanOutput reads mmdebstrap's output to its end, reporting stages and
// keeping what explains a failure.
func scanOutput(r io.Reader, stage func(string)) *outputTail {
	t := &outputTail{}
	reported := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		for _, m := range stageMarkers {
			if strings.HasPrefix(line, m.prefix) && !reported[m.stage] {
				reported[m.stage] = true
				stage(m.stage)
			}
		}
		if p, ok := missingPackage(line); ok && !slices.Contains(t.missing, p) {
			t.missing = append(t.missing, p)
		}
		if t.fetch == "" && strings.Contains(line, "Failed to fetch") {
			t.fetch = strings.TrimSpace(line)
		}
		t.lines = append(t.lines, line)
		if len(t.lines) > tailLines {
			t.lines = t.lines[1:]
		}
	}
	io.Copy(io.Discard, r)
	return t
}

// missingPackage recognises apt's errors for a package it cannot install
// and returns the package's name.
func missingPackage(line string) (string, bool) {
	if p, ok := strings.CutPrefix(line, "E: Unable to locate package "); ok {
		return strings.TrimSpace(p), true
	}
	if rest, ok := strings.CutPrefix(line, "E: Package '"); ok {
		if p, _, ok := strings.Cut(rest, "' has no installation candidate"); ok {
			return p, true
		}
	}
	return "", false
}

// err returns the error of a failed mmdebstrap run.
func (t *outputTail) err(r *Recipe, runErr error) error {
	switch {
	case len(t.missing) > 0:
		return fmt.Errorf("%w: %s not found in %s %s (%s)", ErrUnknownPackage, strings.Join(t.missing, ", "), r.Mirror, r.Suite, runErr)
	case t.fetch != "":
		return fmt.Errorf("%w: %s (suite %s): %s", ErrMirrorUnreachable, r.Mirror, r.Suite, t.fetch)
	}
	return fmt.Errorf("%w: mmdebstrap: %v; its output ends:\n%s", ErrBuildFailed, runErr, strings.Join(t.lines, "\n"))
}

// removeGlobs deletes what the globs (absolute, in path.Match syntax) match
// in the tree at rootfs, never following a symbolic link out of it.
func removeGlobs(rootfs string, globs []string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, g := range globs {
		matches, err := fs.Glob(root.FS(), strings.TrimPrefix(g, "/"))
		if err != nil {
			return fmt.Errorf("%s: %w", g, err)
		}
		for _, m := range matches {
			if err := root.RemoveAll(m); err != nil {
				return fmt.Errorf("%s: %w", g, err)
			}
		}
	}
	return nil
}

// secretFiles stay unreadable to others in makeReadable.
var secretFiles = []string{"etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-"}

// makeReadable makes the tree usable by any user with a read-only root:
// directories searchable and every file readable by others, executables
// executable by others. Symbolic links and device nodes are left alone.
func makeReadable(rootfs string) error {
	return filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		t := d.Type()
		if t != 0 && !t.IsDir() {
			return nil // not a directory nor a regular file
		}
		if rel, _ := filepath.Rel(rootfs, p); slices.Contains(secretFiles, rel) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := fi.Mode()
		want := mode | 0o004
		if t.IsDir() || mode&0o100 != 0 {
			want |= 0o001
		}
		if want == mode {
			return nil
		}
		return os.Chmod(p, want&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	})
}

// treeSize returns the bytes of the regular files under dir, each
// hard-linked file counted once.
func treeSize(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var size int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			id := inode{uint64(st.Dev), st.Ino}
			if seen[id] {
				return nil
			}
			seen[id] = true
		}
		size += fi.Size()
		return nil
	})
	return size, err
}

// removeTree removes dir, first unmounting anything mounted below it (a
// killed mmdebstrap may leave /proc or /sys mounted in the tree) so the
// removal never reaches into another file system.
func removeTree(dir string) error {
	mounts, err := mountsBelow(dir)
	if err != nil {
		return err
	}
	for _, m := range mounts { // deepest first
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting %s: %w", m, err)
		}
	}
	return os.RemoveAll(dir)
}

// mountsBelow returns the mount points under dir, deepest first.
func mountsBelow(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("listing mounts: %w", err)
	}
	prefix := filepath.Clean(dir) + "/"
	var out []string
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if strings.HasPrefix(mp, prefix) || mp == filepath.Clean(dir) {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
