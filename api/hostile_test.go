package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Requests a hostile or broken client sends the HTTP edge: headers too
// large or too many, methods that are no HTTP token, bodies that trickle.
// Each is answered with a status and kiln's JSON error, never a panic or a
// hang, and the server goes on serving.

// rawAnswer sends req as it is on a new connection and returns the
// server's answer, read once the server closed the connection.
func rawAnswer(t *testing.T, addr, req string) (*http.Response, []byte) {
	t.Helper()
	c := dialFrom(t, "127.0.0.1", addr)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	out := c.closedWith(t)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("no HTTP answer (%v): %.200q", err, out)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestHTTPHostileRequests(t *testing.T) {
	e := newGRPCEnv(t)
	_, addr := startHTTP(t, e.agent)
	const closeConn = "Connection: close\r\n"
	pad := strings.Repeat("a", MaxHeaderBytes)
	for _, tt := range []struct {
		name, req string
		status    int
		class     string // "" for the function's own answer
		mention   string // in the error or the body
	}{
		{"one header over the limit", "GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Big: " + pad + "\r\n\r\n",
			431, wire.ClassHeadersTooLarge, "4096 bytes"},
		{"many small headers", "GET /healthz HTTP/1.1\r\nHost: kiln\r\n" + strings.Repeat("X-A: b\r\n", 2000) + "\r\n",
			431, wire.ClassHeadersTooLarge, "headers"},
		{"a request line over the limit", "GET /healthz?" + pad + " HTTP/1.1\r\nHost: kiln\r\n\r\n",
			431, wire.ClassHeadersTooLarge, "request line"},
		{"an invocation with headers over the limit", "POST /invoke/echo HTTP/1.1\r\nHost: kiln\r\nX-Big: " + pad + "\r\nContent-Length: 2\r\n\r\nhi",
			431, wire.ClassHeadersTooLarge, "headers"},
		{"a method with a bracket", "GE(T /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			400, wire.ClassInvalidArgument, "method"},
		{"a method with a control byte", "G\x01T /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			400, wire.ClassInvalidArgument, "method"},
		{"no method", " /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			400, wire.ClassInvalidArgument, "method"},
		{"bytes that are no request", "\x00\x01\x02\r\n\r\n",
			400, wire.ClassInvalidArgument, "cannot read request"},
		{"an HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			400, wire.ClassInvalidArgument, "cannot read request"},
		{"an unknown method on a management route", "BREW /v1/functions HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			405, wire.ClassInvalidArgument, "method not allowed"},
		// An invocation's method is the function's business: any token
		// reaches it.
		{"an unknown method on an invocation", "BREW /invoke/echo HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			200, "", "echo:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawAnswer(t, addr, tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
			if tt.class == "" {
				if !strings.Contains(string(body), tt.mention) {
					t.Errorf("body %q does not hold %q", body, tt.mention)
				}
				return
			}
			var kerr kilnv1.Error
			if err := protojson.Unmarshal(body, &kerr); err != nil {
				t.Fatalf("body is no kiln.v1.Error: %v: %q", err, body)
			}
			if kerr.Class != tt.class || resp.Header.Get(wire.HeaderError) != tt.class || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("class %q, %s %q, Content-Type %q; want %s, JSON", kerr.Class, wire.HeaderError,
					resp.Header.Get(wire.HeaderError), resp.Header.Get("Content-Type"), tt.class)
			}
			if !strings.Contains(kerr.Error, tt.mention) {
				t.Errorf("error %q does not mention %q", kerr.Error, tt.mention)
			}
		})
	}

	// The answer to a request the server cannot read does not quote it:
	// whatever the client sent, credentials included, stays out of the
	// answer (and of whatever logs it on the way back).
	const secret = "Bearer kiln_secret-that-must-not-come-back"
	for _, req := range []string{
		"GE(T /healthz HTTP/1.1\r\nAuthorization: " + secret + "\r\n" + closeConn + "\r\n",
		"GET /healthz HTTP/1.1\r\nAuthorization: " + secret + "\r\nX-Big: " + pad + "\r\n\r\n",
	} {
		if resp, body := rawAnswer(t, addr, req); strings.Contains(string(body), "kiln_secret") {
			t.Errorf("answer %d quotes the request: %q", resp.StatusCode, body)
		}
	}

	// A header block just under the limit is served.
	under := "GET /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "X-Pad: "
	under += strings.Repeat("a", MaxHeaderBytes-len(under)-len("\r\n\r\n")-1) + "\r\n\r\n"
	if resp, body := rawAnswer(t, addr, under); resp.StatusCode != 200 {
		t.Errorf("a header block of %d bytes: %d %s", len(under), resp.StatusCode, body)
	}
	if status, _ := get(t, "127.0.0.1", addr, "/healthz"); status != 200 {
		t.Errorf("after the hostile requests: %d", status)
	}
}

// TestHTTPTricklingBody checks that a body sent a byte at a time gets its
// 408 once the body timeout has passed since its headers, however steadily
// it keeps coming: the timeout bounds the whole body, not each read.
func TestHTTPTricklingBody(t *testing.T) {
	e := newGRPCEnv(t)
	const bodyTimeout = 500 * time.Millisecond
	_, addr := startHTTP(t, e.agent, WithHeaderTimeout(200*time.Millisecond), WithBodyTimeout(bodyTimeout))
	c := dialFrom(t, "127.0.0.1", addr)
	sent := time.Now()
	fmt.Fprintf(c, "POST /invoke/echo HTTP/1.1\r\nHost: kiln\r\nContent-Length: %d\r\n\r\n", smallBody+1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	out := c.closedWith(t)
	took := time.Since(sent)
	if !strings.HasPrefix(out, "HTTP/1.1 408 ") || !strings.Contains(out, wire.ClassRequestTimeout) {
		t.Errorf("trickling body: %.200q, want 408 request_timeout", out)
	}
	if took < bodyTimeout || took > bodyTimeout+2*time.Second {
		t.Errorf("answered after %v, want soon after the body timeout (%v)", took, bodyTimeout)
	}
	if status, _ := get(t, "127.0.0.1", addr, "/healthz"); status != 200 {
		t.Errorf("after the trickling body: %d", status)
	}
}

// TestGRPCOversizedMessage sends a message over the server's receive
// limit: grpc-go refuses it before reading it, RESOURCE_EXHAUSTED naming
// both sizes, and the connection goes on serving. (kilnd's limit is the
// larger of the body and code archive limits plus 64 KiB; the test lowers
// it to keep the message small.)
func TestGRPCOversizedMessage(t *testing.T) {
	const limit = 64 << 10
	e := newGRPCEnv(t, WithGRPCServerOptions(grpc.MaxRecvMsgSize(limit)))
	ctx := context.Background()
	_, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: make([]byte, limit+1)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "larger than max") ||
		!strings.Contains(status.Convert(err).Message(), strconv.Itoa(limit)) {
		t.Fatalf("message over the limit: %v, want RESOURCE_EXHAUSTED naming the limit", err)
	}
	stream, err := e.invoker.InvokeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&kilnv1.InvokeRequest{Id: 1, Function: "echo", Body: make([]byte, limit+1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("stream message over the limit: %v, want RESOURCE_EXHAUSTED", err)
	}
	if resp, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("after")}); err != nil || string(resp.Body) != "echo:after" {
		t.Errorf("the connection after the refusal: %v %v", resp, err)
	}
}

// TestGRPCStreamsPerConnectionAreBounded opens more RPCs on one connection
// than the server's bound on concurrent streams (kilnd's is 1024; the test
// lowers it): the extra ones wait on the client, never reaching the agent,
// another connection is served meanwhile, and all are answered once the
// first end.
func TestGRPCStreamsPerConnectionAreBounded(t *testing.T) {
	const bound, opened = 4, 12
	e := newGRPCEnv(t, WithGRPCServerOptions(grpc.MaxConcurrentStreams(bound)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, opened)
	for range opened {
		go func() {
			_, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("block")})
			errc <- err
		}()
	}
	for range bound {
		wait(t, e.started, "the first calls to start")
	}
	time.Sleep(200 * time.Millisecond) // time for more to start, were the bound broken
	if n := e.running.Load(); n != bound {
		t.Fatalf("%d calls running on one connection, want %d", n, bound)
	}
	other, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if resp, err := kilnv1.NewInvokerClient(other).Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("x")}); err != nil || string(resp.Body) != "echo:x" {
		t.Fatalf("another connection while one is at its bound: %v %v", resp, err)
	}
	close(e.gate)
	for range opened {
		if err := <-errc; err != nil {
			t.Errorf("a waiting call: %v", err)
		}
	}
	if m := e.maxRunning.Load(); m > bound {
		t.Errorf("%d calls ran at once on one connection, want at most %d", m, bound)
	}
}

// TestGRPCStreamNeverRead sends calls on an InvokeStream whose answers the
// client never reads. Flow control stops it: the server stops reading the
// stream once its answers cannot be sent, so the client's sends block
// long before it has sent them all; kilnd's goroutines and heap stay
// bounded, another client is served meanwhile, and cancelling the stream
// gives everything back.
func TestGRPCStreamNeverRead(t *testing.T) {
	e := newGRPCEnv(t)
	settle := func() (goroutines int, heap uint64) {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapAlloc
	}
	// The function's container is started first: its goroutines are no
	// stream's.
	if _, err := e.invoker.Invoke(context.Background(), &kilnv1.InvokeRequest{Function: "echo"}); err != nil {
		t.Fatal(err)
	}
	g0, h0 := settle()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.invoker.InvokeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const calls = 20000 // 80 MB of answers, were they all made
	body := make([]byte, testMaxBody-len("echo:"))
	var sent atomic.Int64
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		for i := range calls {
			if err := stream.Send(&kilnv1.InvokeRequest{Id: uint64(i), Function: "echo", Body: body}); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	// Wait until the sender is stuck.
	for last := int64(-1); ; {
		time.Sleep(300 * time.Millisecond)
		n := sent.Load()
		if n == last {
			break
		}
		last = n
	}
	n := sent.Load()
	if n >= calls {
		t.Fatalf("the client sent all %d calls without reading an answer: nothing stopped it", n)
	}
	g1, h1 := settle()
	t.Logf("stuck after %d calls sent: %d goroutines (from %d), heap %d MiB (from %d MiB)", n, g1, g0, h1>>20, h0>>20)
	if g1-g0 > DefaultStreamMaxInFlight+64 {
		t.Errorf("%d goroutines more than before the stream, want at most the stream's %d in flight and a few", g1-g0, DefaultStreamMaxInFlight)
	}
	if h1 > h0+64<<20 {
		t.Errorf("heap grew from %d to %d MiB", h0>>20, h1>>20)
	}

	other, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	octx, ocancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ocancel()
	if resp, err := kilnv1.NewInvokerClient(other).Invoke(octx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("x")}); err != nil || string(resp.Body) != "echo:x" {
		t.Fatalf("another client while a stream is unread: %v %v", resp, err)
	}
	cancel()
	<-sendDone
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		g, _ := settle()
		if g <= g0+8 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after the stream was cancelled, %d before it:\n%s", g, g0, buf[:runtime.Stack(buf, true)])
		}
	}
}

// TestHTTPTextThatIsNotUTF8 sends invocations whose path, query or a
// header holds bytes that are not UTF-8, which HTTP lets through but the
// executor's protocol cannot carry. Each is refused 400 before it reaches
// a container; the function keeps its container (such a call once failed
// the container's session, killing it and every call it was running).
func TestHTTPTextThatIsNotUTF8(t *testing.T) {
	e := newGRPCEnv(t)
	_, addr := startHTTP(t, e.agent)
	if resp, body := rawAnswer(t, addr, "GET /invoke/echo HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("first call: %d %s", resp.StatusCode, body)
	}
	for what, req := range map[string]string{
		"path":   "GET /invoke/echo/%ff HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
		"query":  "GET /invoke/echo?a=\xff HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
		"header": "GET /invoke/echo HTTP/1.1\r\nHost: k\r\nX-Latin1: caf\xe9\r\nConnection: close\r\n\r\n",
	} {
		resp, body := rawAnswer(t, addr, req)
		if resp.StatusCode != 400 || resp.Header.Get(wire.HeaderError) != wire.ClassInvalidArgument || !strings.Contains(string(body), what) {
			t.Errorf("%s not UTF-8: %d %s, want 400 invalid_argument naming the %s", what, resp.StatusCode, body, what)
		}
	}
	if resp, body := rawAnswer(t, addr, "GET /invoke/echo HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 || resp.Header.Get(wire.HeaderStart) != wire.StartWarm {
		t.Errorf("call after the refusals: %d %s, start %q, want a warm 200", resp.StatusCode, body, resp.Header.Get(wire.HeaderStart))
	}
	if n := e.driver.Starts(); n != 1 {
		t.Errorf("%d containers started, want 1", n)
	}
}
