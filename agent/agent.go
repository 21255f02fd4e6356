// Package agent is kiln's call lifecycle: it keeps the registry of deployed
// functions (persisted in the datastore, cached in memory), and runs each
// call by acquiring a container from the pool, dispatching the call over the
// container's executor session, and releasing the container.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/agent/bundle"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/pool"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	"github.com/kilnfx/kiln/runtimes/rootfs"
)

// DefaultMaxBodyBytes is the default request body limit.
const DefaultMaxBodyBytes = 6 << 20

// Agent runs calls and manages functions. It is safe for concurrent use.
type Agent struct {
	store        *datastore.Store
	pool         *pool.Pool
	dataDir      string
	functionsDir string
	log          *slog.Logger
	maxBody      int
	codeLimits   bundle.Limits

	deployMu sync.Mutex // serialises Deploy and Delete

	usage   UsageSink
	node    string
	metrics *Metrics

	bases  *rootfs.Store // runtimes' root filesystems; nil: go only
	binDir string        // holds the generic executor (InstallExecutor)

	keysMu sync.RWMutex
	keys   map[[32]byte]string // SHA-256 of valid API keys → tenant

	mu        sync.RWMutex
	functions map[string]*function
}

// function is the cached, ready-to-run form of a deployed function.
type function struct {
	record     *kilnv1.Function
	timeout    time.Duration
	requireKey bool
	pool       *pool.Function
	// unavailable, when set, is the error every call gets: the function's
	// runtime root filesystem is missing and being built again.
	unavailable error
}

// Option configures an Agent; New validates the result.
type Option func(*options)

type options struct {
	log        *slog.Logger
	maxBody    int
	codeLimits bundle.Limits
	usage      UsageSink
	node       string
	metrics    *Metrics
	bases      *rootfs.Store
	binDir     string
}

// WithRuntimes lets the agent serve the runtimes other than go: their root
// filesystems are built in and found in bases, and binDir holds the
// generic executor (see InstallExecutor). Without it only go functions
// deploy.
func WithRuntimes(bases *rootfs.Store, binDir string) Option {
	return func(o *options) { o.bases, o.binDir = bases, binDir }
}

// WithLogger sets the agent's logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithMaxBodyBytes sets the request body limit (default DefaultMaxBodyBytes).
func WithMaxBodyBytes(n int) Option { return func(o *options) { o.maxBody = n } }

// WithCodeLimits bounds the code archives Deploy accepts (default
// bundle.DefaultLimits); every limit must be positive.
func WithCodeLimits(l bundle.Limits) Option { return func(o *options) { o.codeLimits = l } }

// WithUsageSink makes the agent write every call's usage record to s
// (default: none, metering off).
func WithUsageSink(s UsageSink) Option { return func(o *options) { o.usage = s } }

// WithNode names the node in usage records (default: the host name).
func WithNode(name string) Option { return func(o *options) { o.node = name } }

// WithMetrics sets where the agent counts calls (default: a private,
// unexported set).
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

// New returns an Agent storing functions in store, running them in p, and
// keeping their code under dataDir/functions. It loads the functions store
// already holds. Options that make no sense (a body limit or code limit
// that is not positive) are errors.
func New(ctx context.Context, store *datastore.Store, p *pool.Pool, dataDir string, opts ...Option) (*Agent, error) {
	if store == nil || p == nil {
		return nil, errors.New("agent: store and pool are required")
	}
	if dataDir == "" {
		return nil, errors.New("agent: dataDir is required")
	}
	o := options{log: slog.Default(), maxBody: DefaultMaxBodyBytes, codeLimits: bundle.DefaultLimits}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.log == nil:
		return nil, errors.New("agent: nil logger")
	case o.maxBody <= 0:
		return nil, fmt.Errorf("agent: body limit %d: must be positive", o.maxBody)
	case o.codeLimits.ArchiveBytes <= 0 || o.codeLimits.FileBytes <= 0 || o.codeLimits.Entries <= 0:
		return nil, fmt.Errorf("agent: code limits %+v: each must be positive", o.codeLimits)
	case (o.bases == nil) != (o.binDir == ""):
		return nil, errors.New("agent: runtimes need both a root filesystem store and the executor's directory")
	}
	a := &Agent{
		store:        store,
		pool:         p,
		dataDir:      dataDir,
		functionsDir: filepath.Join(dataDir, "functions"),
		codeLimits:   o.codeLimits,
		log:          o.log,
		maxBody:      o.maxBody,
		usage:        o.usage,
		node:         o.node,
		metrics:      o.metrics,
		bases:        o.bases,
		binDir:       o.binDir,
		functions:    make(map[string]*function),
	}
	if a.node == "" {
		a.node, _ = os.Hostname()
	}
	if a.metrics == nil {
		a.metrics = NewMetrics(nil)
	}
	if err := os.MkdirAll(a.functionsDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	records, err := store.ListFunctions(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: load functions: %w", err)
	}
	for _, r := range records {
		fn, err := a.load(r)
		if err != nil {
			a.log.Error("cannot load function; redeploy it", "function", r.Name, "err", err)
			continue
		}
		a.functions[r.Name] = fn
	}
	if err := a.loadKeys(ctx); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.removeStaleCode()
	for _, fn := range a.functions {
		if fn.unavailable != nil {
			go a.rebuild(fn.record)
			continue
		}
		p.Configure(fn.pool)
	}
	return a, nil
}

// CodeLimits returns the limits of a deploy's code archive.
func (a *Agent) CodeLimits() bundle.Limits { return a.codeLimits }

// AdminTokenPath returns the file that holds the admin token.
func (a *Agent) AdminTokenPath() string { return filepath.Join(a.dataDir, AdminTokenFile) }

// checkLimits refuses a spec whose containers the driver could never start
// (a CPU quota below the kernel's smallest, an environment over the exec
// limit), naming the spec's field.
func (a *Agent) checkLimits(spec *kilnv1.FunctionSpec) error {
	return a.checkFunction(a.newFunction(&kilnv1.Function{Name: "check", Spec: spec}, "/", "/"))
}

// checkFunction is checkLimits of fn, the cached form of a spec.
func (a *Agent) checkFunction(fn *function) error {
	err := a.pool.CheckFunction(fn.pool)
	if err == nil {
		return nil
	}
	var se *pool.SpecError
	if !errors.As(err, &se) {
		return fmt.Errorf("%w: spec: %v", ErrInvalidArgument, err)
	}
	field := map[string]string{"CPUMillis": "cpu_millis", "Env": "env", "MemoryBytes": "memory_mb", "Args": "handler", "Cwd": "image"}[se.Field]
	if field == "" {
		field = "spec"
	}
	return fmt.Errorf("%w: %s: %s", ErrInvalidArgument, field, se.Reason)
}

// MaxBodyBytes returns the request body limit.
func (a *Agent) MaxBodyBytes() int { return a.maxBody }

// load turns a stored record into a runnable function.
func (a *Agent) load(r datastore.Function) (*function, error) {
	spec := &kilnv1.FunctionSpec{}
	if err := protojson.Unmarshal(r.Spec, spec); err != nil {
		return nil, fmt.Errorf("decode spec: %w", err)
	}
	rec := &kilnv1.Function{
		Name:     r.Name,
		Spec:     spec,
		Revision: r.Revision,
		Created:  timestamppb.New(r.Created),
		Updated:  timestamppb.New(r.Updated),
	}
	if spec.Runtime == RuntimeImage {
		img, err := a.imageRootFS(context.Background(), spec.Image)
		if err != nil {
			return nil, err
		}
		if rev := imageRevision(img); rev != r.Revision {
			return nil, fmt.Errorf("image %s is now %s, not the deployed revision %s", spec.Image, rev, r.Revision)
		}
		return a.newImageFunction(rec, img), nil
	}
	codeDir := filepath.Join(a.functionsDir, r.Name, r.Revision, "rootfs")
	if _, err := os.Stat(filepath.Join(codeDir, spec.Handler)); err != nil {
		return nil, fmt.Errorf("code of revision %s: %w", r.Revision, err)
	}
	if spec.Runtime == "go" {
		return a.newFunction(rec, codeDir, ""), nil
	}
	b, err := a.base(context.Background(), spec, false)
	if err == nil {
		return a.newFunction(rec, codeDir, b.RootFS), nil
	}
	if !errors.Is(err, ErrUnavailable) {
		return nil, err
	}
	// The root filesystem is gone (removed by hand, or kiln's recipe
	// changed): the function answers 503 until it is built again.
	fn := a.newFunction(rec, codeDir, "/")
	fn.unavailable = fmt.Errorf("%w: function %s: its runtime %s is being built again", ErrUnavailable, r.Name, spec.Runtime)
	return fn, nil
}

// rebuild builds the missing root filesystem of the loaded function rec
// and then lets it serve, unless it was redeployed or deleted meanwhile.
func (a *Agent) rebuild(rec *kilnv1.Function) {
	codeDir := filepath.Join(a.functionsDir, rec.Name, rec.Revision, "rootfs")
	b, err := a.base(context.Background(), rec.Spec, true)
	if err != nil {
		a.log.Error("cannot rebuild a function's runtime; redeploy it", "function", rec.Name, "runtime", rec.Spec.Runtime, "err", err)
		return
	}
	fn := a.newFunction(rec, codeDir, b.RootFS)
	a.deployMu.Lock()
	defer a.deployMu.Unlock()
	a.mu.Lock()
	cur := a.functions[rec.Name]
	replace := cur != nil && cur.record == rec
	if replace {
		a.functions[rec.Name] = fn
	}
	a.mu.Unlock()
	if replace {
		a.pool.Configure(fn.pool)
	}
}

// base returns the root filesystem a function of spec's runtime (not go)
// runs on, building it when build is set and it is missing.
func (a *Agent) base(ctx context.Context, spec *kilnv1.FunctionSpec, build bool) (rootfs.Base, error) {
	if a.bases == nil {
		return rootfs.Base{}, fmt.Errorf("%w: runtime: this kilnd serves go functions only (it found no executor binary)", ErrInvalidArgument)
	}
	return a.runtimeBase(ctx, spec.Runtime, spec.Packages, build)
}

// newFunction makes the cached form of rec, whose code is in codeDir: for
// the go runtime codeDir is the container's whole root filesystem; for
// the others base is, with the code mounted over it.
func (a *Agent) newFunction(rec *kilnv1.Function, codeDir, base string) *function {
	s := rec.Spec
	env := make([]string, 0, len(s.Env)+1)
	for k, v := range s.Env {
		env = append(env, k+"="+v)
	}
	if _, set := s.Env["GOMAXPROCS"]; !set {
		// One P per CPU of quota (one without a quota): a function runs
		// concurrency calls at a time, and a single P spares the thread
		// wake-ups that dominate a warm call's latency (measured in
		// docs/BENCHMARKS.md). A function may set its own. The executor
		// of every other runtime is a Go program too.
		env = append(env, "GOMAXPROCS="+strconv.Itoa(max(1, int(s.CpuMillis)/1000)))
	}
	sort.Strings(env)
	f := &function{
		record:     rec,
		timeout:    s.Timeout.AsDuration(),
		requireKey: s.RequireKey,
		pool: &pool.Function{
			Name:          rec.Name,
			Revision:      containerKey(rec.Revision, s),
			Runtime:       s.Runtime,
			RootFS:        codeDir,
			Args:          []string{"/" + s.Handler},
			Env:           env,
			Code:          filepath.Join(codeDir, s.Handler),
			MemoryBytes:   int64(s.MemoryMb) << 20,
			CPUMillis:     int64(s.CpuMillis),
			MinWarm:       int(s.MinWarm),
			MaxContainers: int(s.MaxContainers),
			Concurrency:   int(s.Concurrency),
			FreezeAfter:   s.FreezeAfter.AsDuration(),
			IdleTimeout:   s.IdleTimeout.AsDuration(),
		},
	}
	if s.Runtime != "go" && s.Runtime != RuntimeImage {
		a.runtimeFunction(f.pool, s, codeDir, base)
	}
	return f
}

// Deploy validates spec, installs its code (spec.Code, a tar archive), and
// stores the function under name, replacing an earlier deployment. A spec
// without code keeps the function's current code. Containers of an earlier
// revision or with other limits are stopped. Errors wrap ErrInvalidArgument
// for a bad name, spec or archive, and ErrInsufficientStorage when the disk
// is full. A spec of the image runtime (spec.Image set) takes no code: its
// image's root filesystem is made ready (once per image) and its
// revision is the image's digest.
func (a *Agent) Deploy(ctx context.Context, name string, spec *kilnv1.FunctionSpec) (*kilnv1.Function, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	spec, err := normalizeSpec(spec)
	if err != nil {
		return nil, err
	}
	if spec.Runtime == RuntimeImage {
		return a.deployImage(ctx, name, spec)
	}
	if err := a.checkLimits(spec); err != nil {
		return nil, err
	}
	archive := spec.Code
	spec.Code = nil // write-only: never stored nor returned
	var base string
	if spec.Runtime != "go" {
		// Built before the deploy lock is taken: the first deploy of a
		// runtime builds its root filesystem (a minute or so), once
		// however many deploys wait for it.
		b, err := a.base(ctx, spec, true)
		if err != nil {
			return nil, err
		}
		base = b.RootFS
	}
	a.deployMu.Lock()
	defer a.deployMu.Unlock()
	var revision, codeDir string
	if len(archive) > 0 {
		prepare := a.pool.PrepareRootFS
		if spec.Runtime != "go" {
			prepare = func(string) error { return nil } // code only, mounted over the base
		}
		revision, codeDir, err = installCode(a.functionsDir, name, archive, spec.Runtime, spec.Handler, a.codeLimits, prepare)
		if err != nil {
			return nil, err
		}
	} else {
		a.mu.RLock()
		cur := a.functions[name]
		a.mu.RUnlock()
		if cur == nil {
			return nil, fmt.Errorf("%w: code: required for a new function (a tar archive of its files)", ErrInvalidArgument)
		}
		if cur.record.Spec.Runtime != spec.Runtime || cur.record.Spec.Handler != spec.Handler {
			return nil, fmt.Errorf("%w: code: required when runtime or handler change", ErrInvalidArgument)
		}
		revision = cur.record.Revision
		codeDir = filepath.Join(a.functionsDir, name, revision, "rootfs")
	}
	return a.install(ctx, name, spec, revision, func(rec *kilnv1.Function) *function {
		return a.newFunction(rec, codeDir, base)
	})
}

// deployImage is Deploy of spec, of the image runtime.
func (a *Agent) deployImage(ctx context.Context, name string, spec *kilnv1.FunctionSpec) (*kilnv1.Function, error) {
	// Made before the deploy lock is taken: the first deploy of an image
	// applies its layers.
	img, err := a.imageRootFS(ctx, spec.Image)
	if err != nil {
		return nil, err
	}
	spec.Image = img.Name
	revision := imageRevision(img)
	check := a.newImageFunction(&kilnv1.Function{Name: "check", Spec: spec, Revision: revision}, img)
	if len(check.pool.Args) == 0 {
		return nil, fmt.Errorf("%w: handler: image %s has no entrypoint nor command: set handler to the command that serves calls", ErrInvalidArgument, img.Name)
	}
	if err := a.checkFunction(check); err != nil {
		return nil, err
	}
	a.deployMu.Lock()
	defer a.deployMu.Unlock()
	return a.install(ctx, name, spec, revision, func(rec *kilnv1.Function) *function {
		return a.newImageFunction(rec, img)
	})
}

// install stores the function name of spec at revision, caches the
// function newFn makes of its record, and has the pool run it. It runs
// under deployMu.
func (a *Agent) install(ctx context.Context, name string, spec *kilnv1.FunctionSpec, revision string, newFn func(*kilnv1.Function) *function) (*kilnv1.Function, error) {
	specJSON, err := protojson.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	stored, err := a.store.PutFunction(ctx, datastore.Function{
		Name:     name,
		Runtime:  spec.Runtime,
		Revision: revision,
		Spec:     specJSON,
	})
	if err != nil {
		return nil, fmt.Errorf("store function: %w", err)
	}
	fn := newFn(&kilnv1.Function{
		Name:     name,
		Spec:     spec,
		Revision: revision,
		Created:  timestamppb.New(stored.Created),
		Updated:  timestamppb.New(stored.Updated),
	})
	a.mu.Lock()
	a.functions[name] = fn
	a.mu.Unlock()
	// Containers of an earlier revision stop (busy ones when their calls
	// end); settings that need no new container apply to the running ones.
	a.pool.Configure(fn.pool)
	a.log.Info("function deployed", "function", name, "revision", revision)
	return proto.Clone(fn.record).(*kilnv1.Function), nil
}

// Get returns the named function, or an error wrapping ErrNotFound.
func (a *Agent) Get(ctx context.Context, name string) (*kilnv1.Function, error) {
	fn, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	return proto.Clone(fn.record).(*kilnv1.Function), nil
}

// List returns every function, ordered by name.
func (a *Agent) List(ctx context.Context) ([]*kilnv1.Function, error) {
	a.mu.RLock()
	out := make([]*kilnv1.Function, 0, len(a.functions))
	for _, fn := range a.functions {
		out = append(out, proto.Clone(fn.record).(*kilnv1.Function))
	}
	a.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete stops the named function's containers and removes it. It returns an
// error wrapping ErrNotFound when there is no such function.
func (a *Agent) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	a.deployMu.Lock()
	defer a.deployMu.Unlock()
	a.mu.Lock()
	_, ok := a.functions[name]
	delete(a.functions, name)
	a.mu.Unlock()
	err := a.store.DeleteFunction(ctx, name)
	if errors.Is(err, datastore.ErrNotFound) {
		if !ok {
			return fmt.Errorf("%w: function %q", ErrNotFound, name)
		}
		err = nil
	}
	if err != nil {
		return fmt.Errorf("delete function: %w", err)
	}
	if err := a.pool.RemoveFunction(ctx, name); err != nil {
		a.log.Warn("stop containers", "function", name, "err", err)
	}
	_ = os.RemoveAll(filepath.Join(a.functionsDir, name))
	a.log.Info("function deleted", "function", name)
	return nil
}

// removeStaleCode deletes installed code that no loaded function uses: what
// redeploys and deletes left behind.
func (a *Agent) removeStaleCode() {
	names, err := os.ReadDir(a.functionsDir)
	if err != nil {
		return
	}
	for _, n := range names {
		fn := a.functions[n.Name()]
		revs, _ := os.ReadDir(filepath.Join(a.functionsDir, n.Name()))
		for _, r := range revs {
			if fn == nil || r.Name() != fn.record.Revision {
				_ = os.RemoveAll(filepath.Join(a.functionsDir, n.Name(), r.Name()))
			}
		}
		if fn == nil {
			_ = os.Remove(filepath.Join(a.functionsDir, n.Name()))
		}
	}
}

func (a *Agent) lookup(name string) (*function, error) {
	a.mu.RLock()
	fn := a.functions[name]
	a.mu.RUnlock()
	if fn == nil {
		if err := ValidateName(name); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: function %q", ErrNotFound, name)
	}
	return fn, nil
}

// Containers lists the live containers of the named function, with their
// current memory use. It returns an error wrapping ErrNotFound for an unknown
// function.
func (a *Agent) Containers(ctx context.Context, name string) ([]*kilnv1.Container, error) {
	if _, err := a.lookup(name); err != nil {
		return nil, err
	}
	infos := a.pool.Containers(name)
	out := make([]*kilnv1.Container, 0, len(infos))
	for _, c := range infos {
		kc := &kilnv1.Container{
			Id:       c.ID,
			State:    c.State.String(),
			Created:  timestamppb.New(c.Created),
			LastUsed: timestamppb.New(c.LastUsed),
			Active:   int32(c.Active),
			Calls:    c.Calls,
		}
		if st, err := a.pool.ContainerStats(ctx, c.ID); err == nil {
			kc.MemoryBytes = st.MemoryBytes
		}
		out = append(out, kc)
	}
	return out, nil
}

// Logs returns the recent output of the named function's containers, or an
// error wrapping ErrNotFound for an unknown function. The ring is empty until
// a container of the function has written something.
func (a *Agent) Logs(name string) (*LogRing, error) {
	if _, err := a.lookup(name); err != nil {
		return nil, err
	}
	return a.pool.Logs(name), nil
}

// LogRing is a function's recent output; see pool.LogRing.
type LogRing = pool.LogRing

// LogLine is one line of a function's output.
type LogLine = pool.LogLine

// Close stops every container. In-flight calls fail with ErrUnavailable.
func (a *Agent) Close(ctx context.Context) error {
	return a.pool.Close(ctx)
}
