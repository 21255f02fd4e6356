package pool_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// crashInCall runs a blocking call in a container of fn, crashes the
// container while the call is in flight and returns the call's error.
func (e *env) crashInCall(fn *pool.Function) error {
	e.t.Helper()
	ctx := context.Background()
	c, _, err := e.pool.Acquire(ctx, fn)
	if err != nil {
		e.t.Fatal(err)
	}
	defer e.pool.Release(c)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Invoke(ctx, &pb.Invoke{CallId: e.id(), Body: []byte("block")})
		errc <- err
	}()
	e.driver.Crash(c.ID())
	select {
	case err := <-errc:
		return err
	case <-time.After(10 * time.Second):
		e.t.Fatal("the call did not end when its container crashed")
		return nil
	}
}

func TestExitIsDiagnosed(t *testing.T) {
	for _, tt := range []struct {
		name    string
		diag    pool.Diagnosis
		cause   pool.Cause
		message string
	}{
		{"oom", pool.Diagnosis{ExitCode: -1, Signal: 9, OOMKills: 1, MemoryLimitBytes: 32 << 20}, pool.CauseOOM,
			"function echo was killed at its memory limit (32 MiB)"},
		{"pids", pool.Diagnosis{ExitCode: 2, PidsMaxEvents: 40, PidsLimit: 256}, pool.CausePidsExhausted,
			"function echo could not fork: its pids limit of 256 was reached"},
		{"exit status", pool.Diagnosis{ExitCode: 3}, pool.CauseExited, "function echo exited with status 3"},
		{"signal", pool.Diagnosis{ExitCode: -1, Signal: 9}, pool.CauseExited, "function echo was killed by signal 9 (killed)"},
		{"unknown", pool.Diagnosis{ExitCode: -1}, pool.CauseUnknown, "the process of function echo ended"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.driver.SetDiagnosis(tt.diag)
			fn := newFn("echo")
			err := e.crashInCall(fn)
			var f *pool.Fault
			if !errors.As(err, &f) || !errors.Is(err, pool.ErrExecutorFailed) {
				t.Fatalf("err = %v, want a *pool.Fault wrapping ErrExecutorFailed", err)
			}
			if f.Cause != tt.cause || !f.Exited || !strings.HasPrefix(f.Error(), tt.message) {
				t.Errorf("fault = %v %q (exited %v), want %v %q", f.Cause, f.Error(), f.Exited, tt.cause, tt.message)
			}
			// The next call gets a fresh container.
			e.driver.SetDiagnosis(pool.Diagnosis{ExitCode: -1})
			e.pool.Settle()
			e.mustCall(fn, pool.StartCold)
		})
	}
}

// TestCallWaitsForDiagnosis checks that a call failed by its container's
// exit waits for the diagnosis, and no longer than DiagnoseWait.
func TestCallWaitsForDiagnosis(t *testing.T) {
	e := newEnv(t)
	e.driver.SetDiagnosis(pool.Diagnosis{ExitCode: 3})
	release := make(chan struct{})
	var once sync.Once
	e.driver.SetHook(func(op, id string) error {
		if op == "diagnose" {
			<-release
		}
		return nil
	})
	defer once.Do(func() { close(release) })
	fn := newFn("echo")
	ctx := context.Background()
	c, _, err := e.pool.Acquire(ctx, fn)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Invoke(ctx, &pb.Invoke{CallId: "held", Body: []byte("block")})
		errc <- err
	}()
	e.driver.Crash(c.ID())
	select {
	case err := <-errc:
		t.Fatalf("the call returned %v before the diagnosis", err)
	case <-time.After(100 * time.Millisecond):
	}
	once.Do(func() { close(release) })
	if err := <-errc; !strings.Contains(err.Error(), "exited with status 3") {
		t.Errorf("err = %v, want the diagnosis", err)
	}
	e.pool.Release(c)

	// A diagnosis that does not come: the call gives up after DiagnoseWait.
	stuck := make(chan struct{})
	defer close(stuck)
	e.driver.SetHook(func(op, id string) error {
		if op == "diagnose" {
			<-stuck
		}
		return nil
	})
	t0 := time.Now()
	err = e.crashInCall(fn)
	took := time.Since(t0)
	var f *pool.Fault
	if errors.As(err, &f) || !errors.Is(err, pool.ErrExecutorFailed) {
		t.Errorf("err = %v, want the bare session error", err)
	}
	if took < pool.DiagnoseWait-100*time.Millisecond || took > pool.DiagnoseWait+2*time.Second {
		t.Errorf("the call waited %v for the diagnosis, want about %v", took, pool.DiagnoseWait)
	}
}

// TestHandlerFailureAtPidsLimit checks that a handler error in a container
// whose pids limit refused a fork during the call is a pids fault, and
// that the container keeps serving.
func TestHandlerFailureAtPidsLimit(t *testing.T) {
	var d *fake.Driver
	var mu sync.Mutex
	events := int64(0)
	d = fake.New(func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		switch string(req.Body) {
		case "fork":
			mu.Lock()
			events++
			d.SetDiagnosis(pool.Diagnosis{ExitCode: -1, PidsMaxEvents: events, PidsLimit: 64})
			mu.Unlock()
			return nil, errors.New("fork/exec: resource temporarily unavailable")
		case "fail":
			return nil, errors.New("failed on purpose")
		}
		return &sdk.Response{Body: req.Body}, nil
	})
	e := newEnvWith(t, d)
	fn := newFn("echo")
	_, res, err := e.call(fn, "fork")
	var f *pool.Fault
	if !errors.As(err, &f) || f.Cause != pool.CausePidsExhausted || f.Exited || res == nil || res.ExecNs <= 0 {
		t.Fatalf("fork: res %v err %v, want the Result and a pids fault", res, err)
	}
	if want := "function echo could not fork: its pids limit of 64 was reached"; f.Error() != want {
		t.Errorf("message %q, want %q", f.Error(), want)
	}
	// A handler error with no new refused fork is the function's own.
	if _, res, err := e.call(fn, "fail"); err != nil || res.Error != "failed on purpose" {
		t.Errorf("fail: res %v err %v, want a plain function error", res, err)
	}
	e.mustCall(fn, pool.StartWarm)
}

func TestFailedCallUsage(t *testing.T) {
	e := newEnv(t)
	e.driver.SetMemoryUse(5 << 20)
	fn := newFn("echo")
	c, _, err := e.pool.Acquire(context.Background(), fn)
	if err != nil {
		t.Fatal(err)
	}
	defer e.pool.Release(c)
	st, ok := e.pool.FailedCallUsage(context.Background(), c, errors.New("timed out"))
	if !ok || st.MemoryPeakBytes != 5<<20 || st.CPUUser != 0 || st.CPUSystem != 0 {
		t.Errorf("usage = %+v %v, want a peak of 5 MiB and no CPU", st, ok)
	}
}
