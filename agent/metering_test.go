package agent_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
)

// sink collects usage records; it fails while broken is set.
type sink struct {
	mu      sync.Mutex
	records []datastore.UsageRecord
	broken  error
}

func (s *sink) Append(r *datastore.UsageRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return s.broken
	}
	s.records = append(s.records, *r)
	return nil
}

func (s *sink) last(t *testing.T) datastore.UsageRecord {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.records) == 0 {
		t.Fatal("no usage record")
	}
	return s.records[len(s.records)-1]
}

func newMeteredEnv(t *testing.T) (*env, *sink) {
	t.Helper()
	dir := t.TempDir()
	store, err := datastore.Open(context.Background(), dir+"/kiln.db")
	if err != nil {
		t.Fatal(err)
	}
	sk := &sink{}
	d := fake.New(handler)
	p, err := pool.New(d, shortDir(t))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(context.Background(), store, p, dir,
		agent.WithUsageSink(sk), agent.WithNode("node-1"), agent.WithMaxBodyBytes(1024))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(context.Background()); store.Close() })
	e := &env{agent: a, pool: p, driver: d, store: store, dir: dir}
	e.code = packExe(t, selfExe(t))
	return e, sk
}

func TestEveryCallIsMetered(t *testing.T) {
	e, sk := newMeteredEnv(t)
	ctx := context.Background()
	s := e.spec()
	s.Timeout = durationpb.New(100 * time.Millisecond)
	fn, err := e.agent.Deploy(ctx, "echo", s)
	if err != nil {
		t.Fatal(err)
	}

	key, _, err := e.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Trigger: "http", Key: key, Body: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	r := sk.last(t)
	if r.CallID != res.CallID || r.Function != "echo" || r.Revision != fn.Revision || r.Tenant != "acme" || r.Trigger != "http" ||
		r.Status != 200 || r.ErrorClass != "" || r.Start != "cold" || r.BytesIn != 5 || r.BytesOut != int64(len("echo:hello")) ||
		r.Node != "node-1" || r.ContainerID == "" || r.MemoryLimitBytes != 128<<20 || r.RunTime <= 0 || r.TotalTime < r.RunTime ||
		r.ReceivedAt.IsZero() || r.InitTime <= 0 {
		t.Errorf("record = %+v", r)
	}
	if r.GBSeconds() <= 0 {
		t.Errorf("GB-seconds = %v", r.GBSeconds())
	}

	tests := []struct {
		name   string
		call   *agent.Call
		status int
		class  string
	}{
		{"function error", &agent.Call{Function: "echo", Body: []byte("fail")}, 500, "function_error"},
		{"not found", &agent.Call{Function: "nope"}, 404, "not_found"},
		{"bad name", &agent.Call{Function: "../../etc"}, 400, "invalid_argument"},
		{"too large", &agent.Call{Function: "echo", Body: make([]byte, 2048)}, 413, "payload_too_large"},
		{"timeout", &agent.Call{Function: "echo", Body: []byte("sleep")}, 504, "deadline_exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := len(sk.records)
			res, _ := e.agent.Invoke(ctx, tt.call)
			if len(sk.records) != n+1 {
				t.Fatalf("%d records written, want 1", len(sk.records)-n)
			}
			r := sk.last(t)
			if r.Status != tt.status || r.ErrorClass != tt.class || r.CallID == "" || (res != nil && r.CallID != res.CallID) {
				t.Errorf("record status=%d class=%q id=%q, want %d %q", r.Status, r.ErrorClass, r.CallID, tt.status, tt.class)
			}
		})
	}

	id, err := e.agent.Reject(&agent.Call{Function: "echo", Trigger: "http"}, agent.ErrUnauthenticated)
	if !errors.Is(err, agent.ErrUnauthenticated) || sk.last(t).CallID != id || sk.last(t).Status != 401 {
		t.Errorf("Reject: %v %+v", err, sk.last(t))
	}
}

func TestUnrecordableCallFails(t *testing.T) {
	e, sk := newMeteredEnv(t)
	ctx := context.Background()
	if _, err := e.agent.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}
	sk.broken = errors.New("disk full")
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo"}); !errors.Is(err, agent.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable when the record cannot be written", err)
	}
}

func TestKeys(t *testing.T) {
	e, sk := newMeteredEnv(t)
	ctx := context.Background()
	s := e.spec()
	s.RequireKey = true
	if _, err := e.agent.Deploy(ctx, "private", s); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Deploy(ctx, "public", e.spec()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.agent.CreateKey(ctx, "Bad Tenant"); !errors.Is(err, agent.ErrInvalidArgument) {
		t.Errorf("bad tenant: %v", err)
	}
	key, k, err := e.agent.CreateKey(ctx, "acme")
	if err != nil || k.Tenant != "acme" || k.ID == "" {
		t.Fatalf("CreateKey = %+v, %v", k, err)
	}
	call := func(fn, key string) (datastore.UsageRecord, error) {
		_, err := e.agent.Invoke(ctx, &agent.Call{Function: fn, Key: key})
		return sk.last(t), err
	}
	if r, err := call("private", ""); !errors.Is(err, agent.ErrUnauthenticated) || r.Status != 401 || r.Tenant != "" {
		t.Errorf("no key: %v %+v", err, r)
	}
	if r, err := call("private", "kiln_wrong"); !errors.Is(err, agent.ErrUnauthenticated) || r.Status != 401 {
		t.Errorf("wrong key: %v %+v", err, r)
	}
	if r, err := call("private", key); err != nil || r.Tenant != "acme" || r.Status != 200 {
		t.Errorf("good key: %v %+v", err, r)
	}
	if r, err := call("public", ""); err != nil || r.Tenant != "" {
		t.Errorf("public without key: %v %+v", err, r)
	}
	if r, err := call("public", key); err != nil || r.Tenant != "acme" {
		t.Errorf("public with key: %v %+v", err, r)
	}
	if err := e.agent.RevokeKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if r, err := call("private", key); !errors.Is(err, agent.ErrUnauthenticated) || r.Tenant != "" {
		t.Errorf("revoked key: %v %+v", err, r)
	}
	if err := e.agent.RevokeKey(ctx, "key-nope"); !errors.Is(err, agent.ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	keys, err := e.agent.ListKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Revoked.IsZero() {
		t.Errorf("ListKeys = %+v, %v", keys, err)
	}
}

func TestAdminToken(t *testing.T) {
	dir := t.TempDir()
	tok, err := agent.LoadOrCreateAdminToken(dir)
	if err != nil || len(tok) < 32 {
		t.Fatalf("token %q, %v", tok, err)
	}
	again, err := agent.LoadOrCreateAdminToken(dir)
	if err != nil || again != tok {
		t.Errorf("second load = %q, %v", again, err)
	}
	if !agent.TokenEqual(tok, again) || agent.TokenEqual(tok, tok+"x") {
		t.Error("TokenEqual")
	}
}

// TestFailedCallsSayWhyAndAreBilled checks that a call whose container's
// process died is answered and recorded under the cause the pool found,
// that an answer over the limit is response_too_large in a container that
// keeps serving, and that failed calls carry run time and memory.
func TestFailedCallsSayWhyAndAreBilled(t *testing.T) {
	e, sk := newMeteredEnv(t)
	ctx := context.Background()
	s := e.spec()
	s.Timeout = durationpb.New(300 * time.Millisecond)
	if _, err := e.agent.Deploy(ctx, "echo", s); err != nil {
		t.Fatal(err)
	}

	// A timeout holds its container for the whole timeout.
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("sleep")}); !errors.Is(err, agent.ErrDeadlineExceeded) {
		t.Fatalf("sleep: %v, want ErrDeadlineExceeded", err)
	}
	if r := sk.last(t); r.ErrorClass != "deadline_exceeded" || r.Status != 504 || r.RunTime < 250*time.Millisecond || r.MemoryPeakBytes <= 0 || r.GBSeconds() <= 0 {
		t.Errorf("timed out call's record: %+v", r)
	}

	// An answer over the limit.
	_, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("big")})
	if !errors.Is(err, agent.ErrResponseTooLarge) || errors.Is(err, agent.ErrExecutorFailed) {
		t.Fatalf("big: %v, want ErrResponseTooLarge", err)
	}
	if r := sk.last(t); r.ErrorClass != "response_too_large" || r.Status != 502 || r.RunTime <= 0 || r.BytesOut != 0 {
		t.Errorf("too large answer's record: %+v", r)
	}
	if res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("x")}); err != nil || res.Start != "warm" {
		t.Fatalf("after a too large answer: %v %v, want a warm call", res, err)
	}

	// The process killed at its memory limit during a call.
	e.driver.SetDiagnosis(pool.Diagnosis{ExitCode: -1, Signal: 9, OOMKills: 1, MemoryLimitBytes: 128 << 20})
	s.Timeout = durationpb.New(10 * time.Second)
	if _, err := e.agent.Deploy(ctx, "echo", s); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("sleep")})
		errc <- err
	}()
	var id string
	for deadline := time.Now().Add(5 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, c := range e.pool.Containers("echo") {
			if c.Active == 1 {
				id = c.ID
			}
		}
	}
	if id == "" {
		t.Fatal("the call never got a container")
	}
	e.driver.Crash(id)
	err = <-errc
	if !errors.Is(err, agent.ErrOOM) || !errors.Is(err, agent.ErrExecutorFailed) || err.Error() != "out of memory: function echo was killed at its memory limit (128 MiB)" {
		t.Fatalf("killed call: %v", err)
	}
	if r := sk.last(t); r.ErrorClass != "oom" || r.Status != 502 || r.RunTime <= 0 || r.MemoryPeakBytes <= 0 {
		t.Errorf("killed call's record: %+v", r)
	}
	e.driver.SetDiagnosis(pool.Diagnosis{ExitCode: -1})
	if res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("x")}); err != nil || res.Start != "cold" {
		t.Fatalf("after the kill: %v %v, want a cold call", res, err)
	}
}
