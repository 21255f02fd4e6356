package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

func echo(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	switch string(req.Body) {
	case "panic":
		panic("boom")
	case "fail":
		return nil, errors.New("failed on purpose")
	case "block":
		<-ctx.Done()
		return &sdk.Response{Body: []byte("cancelled")}, nil
	}
	return &sdk.Response{Status: 201, Header: http.Header{"X-Echo": {"1"}}, Body: append([]byte("echo:"), req.Body...)}, nil
}

func newPool(t *testing.T, d pool.Driver, opts ...pool.Option) *pool.Pool {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p, err := pool.New(d, dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

var fnEcho = &pool.Function{Name: "echo", Revision: "r1"}

func call(t *testing.T, p *pool.Pool, fn *pool.Function, body string) (*pb.Result, pool.StartKind, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, kind, err := p.Acquire(ctx, fn)
	if err != nil {
		return nil, kind, err
	}
	defer p.Release(c)
	res, err := c.Invoke(ctx, &pb.Invoke{CallId: body + "-id", Body: []byte(body)})
	return res, kind, err
}

func TestColdThenWarm(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	res, kind, err := call(t, p, fnEcho, "a")
	if err != nil {
		t.Fatal(err)
	}
	if kind != pool.StartCold {
		t.Errorf("first call start = %v, want cold", kind)
	}
	if string(res.Body) != "echo:a" || res.Status != 201 || res.CallId != "a-id" {
		t.Errorf("result = %v", res)
	}
	if len(res.Headers) != 1 || res.Headers[0].Key != "X-Echo" {
		t.Errorf("headers = %v", res.Headers)
	}
	_, kind, err = call(t, p, fnEcho, "b")
	if err != nil {
		t.Fatal(err)
	}
	if kind != pool.StartWarm {
		t.Errorf("second call start = %v, want warm", kind)
	}
	if d.Starts() != 1 {
		t.Errorf("starts = %d, want 1", d.Starts())
	}
}

func TestHandlerErrorsKeepContainer(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	res, _, err := call(t, p, fnEcho, "panic")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 500 || !strings.Contains(res.Error, "boom") {
		t.Errorf("panic result = %v", res)
	}
	res, _, err = call(t, p, fnEcho, "fail")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 500 || res.Error != "failed on purpose" {
		t.Errorf("error result = %v", res)
	}
	if _, kind, err := call(t, p, fnEcho, "ok"); err != nil || kind != pool.StartWarm {
		t.Errorf("after errors: kind=%v err=%v", kind, err)
	}
	if d.Starts() != 1 {
		t.Errorf("starts = %d, want 1", d.Starts())
	}
}

func TestCrashGivesFreshContainer(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	ctx := context.Background()
	c, _, err := p.Acquire(ctx, fnEcho)
	if err != nil {
		t.Fatal(err)
	}
	d.Crash(c.ID())
	<-c.Done()
	_, err = c.Invoke(ctx, &pb.Invoke{CallId: "x"})
	if !errors.Is(err, pool.ErrExecutorFailed) {
		t.Errorf("invoke on crashed container: %v, want ErrExecutorFailed", err)
	}
	p.Release(c)
	_, kind, err := call(t, p, fnEcho, "again")
	if err != nil {
		t.Fatal(err)
	}
	if kind != pool.StartCold {
		t.Errorf("after crash start = %v, want cold", kind)
	}
}

func TestCrashDuringCall(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	ctx := context.Background()
	c, _, err := p.Acquire(ctx, fnEcho)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Invoke(ctx, &pb.Invoke{CallId: "blocked", Body: []byte("block")})
		errc <- err
	}()
	for c.InFlight() == 0 {
		time.Sleep(time.Millisecond)
	}
	d.Crash(c.ID())
	if err := <-errc; !errors.Is(err, pool.ErrExecutorFailed) {
		t.Errorf("call during crash: %v, want ErrExecutorFailed", err)
	}
}

func TestCancelReachesHandler(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	c, _, err := p.Acquire(context.Background(), fnEcho)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Invoke(ctx, &pb.Invoke{CallId: "slow", Body: []byte("block")})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	// The handler saw the cancel and returned; the container still serves.
	if _, kind, err := call(t, p, fnEcho, "next"); err != nil || kind != pool.StartWarm {
		t.Errorf("next call: kind=%v err=%v", kind, err)
	}
}

func TestConcurrentAcquireStartsOne(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := call(t, p, fnEcho, fmt.Sprint("x", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if d.Starts() != 1 {
		t.Errorf("starts = %d, want 1", d.Starts())
	}
}

func TestStartTimeoutIncludesOutput(t *testing.T) {
	d := fake.New(echo)
	d.NoDial = true
	p := newPool(t, d, pool.WithStartTimeout(100*time.Millisecond))
	_, _, err := call(t, p, fnEcho, "x")
	if !errors.Is(err, pool.ErrExecutorFailed) || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("err = %v, want not-ready ErrExecutorFailed", err)
	}
	ids, _ := d.List(context.Background())
	if len(ids) != 0 {
		t.Errorf("containers left after failed start: %v", ids)
	}
}

func TestStartFailure(t *testing.T) {
	d := fake.New(echo)
	d.FailStart = errors.New("no runtime")
	p := newPool(t, d)
	if _, _, err := call(t, p, fnEcho, "x"); err == nil || !strings.Contains(err.Error(), "no runtime") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewRevisionReplacesContainer(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	if _, _, err := call(t, p, fnEcho, "x"); err != nil {
		t.Fatal(err)
	}
	_, kind, err := call(t, p, &pool.Function{Name: "echo", Revision: "r2"}, "y")
	if err != nil || kind != pool.StartCold {
		t.Fatalf("new revision: kind=%v err=%v", kind, err)
	}
}

func TestRemoveFunctionAndOrphans(t *testing.T) {
	d := fake.New(echo)
	p := newPool(t, d)
	if _, _, err := call(t, p, fnEcho, "x"); err != nil {
		t.Fatal(err)
	}
	d.Adopt("old.000000000000")
	n, err := p.RemoveOrphans(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("RemoveOrphans = %d, %v; want 1", n, err)
	}
	if ids, _ := d.List(context.Background()); len(ids) != 1 {
		t.Fatalf("containers = %v, want only the live one", ids)
	}
	if err := p.RemoveFunction(context.Background(), "echo"); err != nil {
		t.Fatal(err)
	}
	if ids, _ := d.List(context.Background()); len(ids) != 0 {
		t.Fatalf("containers after RemoveFunction = %v", ids)
	}
}

func TestClosedPoolRefuses(t *testing.T) {
	p := newPool(t, fake.New(echo))
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Acquire(context.Background(), fnEcho); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestTailBuffer(t *testing.T) {
	b := pool.NewTailBuffer(10)
	b.Write([]byte("0123456789abc"))
	if got := string(b.Bytes()); got != "3456789abc" {
		t.Errorf("Bytes = %q", got)
	}
	b = pool.NewTailBuffer(100)
	b.Write([]byte("one\ntwo\nthree\n"))
	if got := b.Tail(2); got != "two\nthree" {
		t.Errorf("Tail(2) = %q", got)
	}
	b.Write([]byte("x"))
	if got := b.Tail(1); got != "threex" && got != "x" {
		t.Errorf("Tail(1) = %q", got)
	}
}
