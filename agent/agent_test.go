package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func handler(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	switch string(req.Body) {
	case "sleep":
		<-ctx.Done()
		return nil, ctx.Err()
	case "fail":
		return nil, errors.New("nope")
	case "big":
		return &sdk.Response{Body: make([]byte, sdk.MaxResponseBytes+1)}, nil
	}
	return &sdk.Response{Body: append([]byte("echo:"), req.Body...)}, nil
}

type env struct {
	agent  *agent.Agent
	pool   *pool.Pool
	driver *fake.Driver
	store  *datastore.Store
	dir    string
	code   []byte // the code archive
}

// newEnv builds an agent over a real SQLite store and the fake driver. The
// test binary itself serves as the function's code: it is an ELF file.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{driver: fake.New(handler), dir: shortDir(t), code: packExe(t, selfExe(t))}
	e.open(t)
	return e
}

// shortDir returns a temporary directory with a path short enough for the
// unix sockets under it.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "ka")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

var (
	packOnce sync.Once
	packed   []byte
	packErr  error
)

// packExe returns a code archive holding exe as the handler; the test
// binary is packed once.
func packExe(t *testing.T, exe string) []byte {
	t.Helper()
	// Uncompressed: gunzipping the race-built test binary at every deploy
	// would cost seconds.
	packOnce.Do(func() {
		var b []byte
		if b, packErr = os.ReadFile(exe); packErr == nil {
			packed = tarOf(t, "handler", string(b), 0o755)
		}
	})
	if packErr != nil {
		t.Fatal(packErr)
	}
	return packed
}

// selfExe returns the test binary's path: an ELF file to deploy as code.
func selfExe(t *testing.T) string {
	t.Helper()
	code, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func (e *env) open(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	store, err := datastore.Open(ctx, filepath.Join(e.dir, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(e.driver, filepath.Join(e.dir, "run"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(ctx, store, p, e.dir, agent.WithMaxBodyBytes(1024))
	if err != nil {
		t.Fatal(err)
	}
	e.agent, e.store, e.pool = a, store, p
	t.Cleanup(func() {
		a.Close(context.Background())
		store.Close()
	})
}

func (e *env) spec() *kilnv1.FunctionSpec {
	return &kilnv1.FunctionSpec{Runtime: "go", Code: e.code}
}

func TestDeployDefaultsAndPersistence(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	fn, err := e.agent.Deploy(ctx, "echo", e.spec())
	if err != nil {
		t.Fatal(err)
	}
	s := fn.Spec
	if fn.Revision == "" || s.MemoryMb != agent.DefaultMemoryMB || s.Timeout.AsDuration() != agent.DefaultTimeout ||
		s.MaxContainers != agent.DefaultMaxContainers || s.Concurrency != 1 || s.Handler != "handler" ||
		s.FreezeAfter.AsDuration() != agent.DefaultFreezeAfter || s.IdleTimeout.AsDuration() != agent.DefaultIdleTimeout {
		t.Errorf("defaults not filled: %v", fn)
	}
	again, err := e.agent.Deploy(ctx, "echo", e.spec())
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision != fn.Revision {
		t.Errorf("same code, revision %s -> %s", fn.Revision, again.Revision)
	}
	// A new agent on the same store and data dir knows the function.
	e.agent.Close(ctx)
	e.store.Close()
	e.open(t)
	got, err := e.agent.Get(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != fn.Revision || !got.Created.AsTime().Equal(fn.Created.AsTime()) {
		t.Errorf("reloaded %v, want %v", got, fn)
	}
	res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("x")})
	if err != nil || string(res.Body) != "echo:x" {
		t.Fatalf("invoke after reload: %v %v", res, err)
	}
}

// tarOf returns a tar archive of one file.
func tarOf(t *testing.T, name, body string, mode int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(body))
	tw.Close()
	return buf.Bytes()
}

func TestDeployRejectsBadSpecs(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name  string
		fname string
		mod   func(*kilnv1.FunctionSpec)
		field string
	}{
		{"bad name", "Bad", func(*kilnv1.FunctionSpec) {}, "name"},
		{"no runtime", "f", func(s *kilnv1.FunctionSpec) { s.Runtime = "" }, "runtime"},
		{"unknown runtime", "f", func(s *kilnv1.FunctionSpec) { s.Runtime = "perl" }, "runtime"},
		{"no code for a new function", "f", func(s *kilnv1.FunctionSpec) { s.Code = nil }, "code"},
		{"a path, not an archive", "f", func(s *kilnv1.FunctionSpec) { s.Code = []byte("/etc") }, "code"},
		{"escaping archive", "f", func(s *kilnv1.FunctionSpec) { s.Code = tarOf(t, "../../etc/x", "x", 0o755) }, "code"},
		{"not executable", "f", func(s *kilnv1.FunctionSpec) { s.Code = tarOf(t, "handler", "x", 0o644) }, "handler"},
		{"not ELF", "f", func(s *kilnv1.FunctionSpec) { s.Code = tarOf(t, "handler", "#!/bin/sh", 0o755) }, "ELF"},
		{"no handler", "f", func(s *kilnv1.FunctionSpec) { s.Code = tarOf(t, "other", "x", 0o755) }, "handler"},
		{"escaping handler", "f", func(s *kilnv1.FunctionSpec) { s.Handler = "../x" }, "handler"},
		{"memory", "f", func(s *kilnv1.FunctionSpec) { s.MemoryMb = 1 }, "memory_mb"},
		{"timeout", "f", func(s *kilnv1.FunctionSpec) { s.Timeout = durationpb.New(-time.Second) }, "timeout"},
		{"env key", "f", func(s *kilnv1.FunctionSpec) { s.Env = map[string]string{"A=B": "1"} }, "env"},
		{"reserved env", "f", func(s *kilnv1.FunctionSpec) { s.Env = map[string]string{"KILN_X": "1"} }, "env"},
		{"min_warm", "f", func(s *kilnv1.FunctionSpec) { s.MinWarm = 11 }, "min_warm"},
		{"max_containers", "f", func(s *kilnv1.FunctionSpec) { s.MaxContainers = -1 }, "max_containers"},
		{"concurrency", "f", func(s *kilnv1.FunctionSpec) { s.Concurrency = 5000 }, "concurrency"},
		{"idle_timeout", "f", func(s *kilnv1.FunctionSpec) { s.IdleTimeout = durationpb.New(-time.Second) }, "idle_timeout"},
		{"cpu", "f", func(s *kilnv1.FunctionSpec) { s.CpuMillis = -1 }, "cpu_millis"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := e.spec()
			tt.mod(s)
			_, err := e.agent.Deploy(context.Background(), tt.fname, s)
			if !errors.Is(err, agent.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err = %v, want ErrInvalidArgument naming %s", err, tt.field)
			}
		})
	}
	if fns, _ := e.agent.List(context.Background()); len(fns) != 0 {
		t.Errorf("bad deploys left functions: %v", fns)
	}
}

func TestInvokeErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec()
	s.Timeout = durationpb.New(100 * time.Millisecond)
	if _, err := e.agent.Deploy(ctx, "echo", s); err != nil {
		t.Fatal(err)
	}
	res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 200 || string(res.Body) != "echo:hi" || res.Start != "cold" || len(res.CallID) != 36 {
		t.Errorf("result = %+v", res)
	}
	res, err = e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("fail")})
	if err != nil || res.Status != 500 || res.FunctionError != "nope" || res.Start != "warm" {
		t.Errorf("function error: %+v %v", res, err)
	}
	tests := []struct {
		name string
		call *agent.Call
		want error
	}{
		{"unknown", &agent.Call{Function: "nope"}, agent.ErrNotFound},
		{"bad name", &agent.Call{Function: "../x"}, agent.ErrInvalidArgument},
		{"too large", &agent.Call{Function: "echo", Body: make([]byte, 1025)}, agent.ErrPayloadTooLarge},
		{"timeout", &agent.Call{Function: "echo", Body: []byte("sleep")}, agent.ErrDeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.agent.Invoke(ctx, tt.call); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCrashIsExecutorFailure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.agent.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); err != nil {
		t.Fatal(err)
	}
	ids, _ := e.driver.List(ctx)
	e.driver.Crash(ids[0])
	// The crash may be seen by this call or only by the pool; either way
	// the call after it gets a fresh container.
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); err != nil && !errors.Is(err, agent.ErrExecutorFailed) {
		t.Fatalf("err = %v, want nil or ErrExecutorFailed", err)
	}
	res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("z")})
	if err != nil || string(res.Body) != "echo:z" {
		t.Fatalf("after crash: %v %v", res, err)
	}
}

func TestRedeployReplacesContainers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.agent.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); err != nil {
		t.Fatal(err)
	}
	s := e.spec()
	s.MemoryMb = 256
	if _, err := e.agent.Deploy(ctx, "echo", s); err != nil {
		t.Fatal(err)
	}
	e.pool.Settle()
	if ids, _ := e.driver.List(ctx); len(ids) != 0 {
		t.Errorf("containers with the old memory limit still run: %v", ids)
	}
	res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"})
	if err != nil || res.Start != "cold" {
		t.Fatalf("after redeploy: %+v %v", res, err)
	}
	// A timeout change keeps the container.
	s.Timeout = durationpb.New(time.Minute)
	if _, err := e.agent.Deploy(ctx, "echo", s); err != nil {
		t.Fatal(err)
	}
	if res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); err != nil || res.Start == "cold" {
		t.Fatalf("after timeout change: %+v %v", res, err)
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.agent.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); err != nil {
		t.Fatal(err)
	}
	if err := e.agent.Delete(ctx, "echo"); err != nil {
		t.Fatal(err)
	}
	if ids, _ := e.driver.List(ctx); len(ids) != 0 {
		t.Errorf("containers after delete: %v", ids)
	}
	if err := e.agent.Delete(ctx, "echo"); !errors.Is(err, agent.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := e.agent.Get(ctx, "echo"); !errors.Is(err, agent.ErrNotFound) {
		t.Errorf("get after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "functions", "echo")); !os.IsNotExist(err) {
		t.Errorf("code dir left behind: %v", err)
	}
}

func TestCallerDeadlineKeepsContainer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.agent.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := e.agent.Invoke(short, &agent.Call{Function: "echo", Body: []byte("sleep")}); !errors.Is(err, agent.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"})
	if err != nil || res.Start == "cold" {
		t.Fatalf("after a caller's deadline: %+v %v, want the same container", res, err)
	}
}

func TestGoFunctionsGetOnePByDefault(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec()
	if _, err := e.agent.Deploy(ctx, "one", s); err != nil {
		t.Fatal(err)
	}
	s2 := e.spec()
	s2.CpuMillis = 2000
	if _, err := e.agent.Deploy(ctx, "two", s2); err != nil {
		t.Fatal(err)
	}
	s3 := e.spec()
	s3.Env = map[string]string{"GOMAXPROCS": "4"}
	if _, err := e.agent.Deploy(ctx, "own", s3); err != nil {
		t.Fatal(err)
	}
	for fn, want := range map[string]string{"one": "GOMAXPROCS=1", "two": "GOMAXPROCS=2", "own": "GOMAXPROCS=4"} {
		if _, err := e.agent.Invoke(ctx, &agent.Call{Function: fn}); err != nil {
			t.Fatal(err)
		}
		cs := e.pool.Containers(fn)
		if len(cs) != 1 {
			t.Fatalf("%s: %d containers", fn, len(cs))
		}
		env := strings.Join(e.driver.Env(cs[0].ID), " ")
		if !strings.Contains(env, want) || strings.Count(env, "GOMAXPROCS=") != 1 {
			t.Errorf("%s: env %q, want %s once", fn, env, want)
		}
	}
}

// TestRuntimeUnavailable: a call that needs a new container while the
// container runtime cannot be reached fails as unavailable (503 with
// Retry-After at the edge), not as an executor failure; a warm container
// keeps serving.
func TestRuntimeUnavailable(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, name := range []string{"warm", "cold"} {
		if _, err := e.agent.Deploy(ctx, name, e.spec()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "warm"}); err != nil {
		t.Fatal(err)
	}
	e.driver.FailStart = fmt.Errorf("containerd does not answer: %w", pool.ErrUnavailable)
	_, err := e.agent.Invoke(ctx, &agent.Call{Function: "cold"})
	if !errors.Is(err, agent.ErrUnavailable) || errors.Is(err, agent.ErrExecutorFailed) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if res, err := e.agent.Invoke(ctx, &agent.Call{Function: "warm", Body: []byte("w")}); err != nil || string(res.Body) != "echo:w" {
		t.Fatalf("warm call while unavailable: %v %v", res, err)
	}
}
