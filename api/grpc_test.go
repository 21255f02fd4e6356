package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// testMaxBody is the body limit of the test agents.
const testMaxBody = 4096

// grpcEnv is an agent over a real SQLite store and the fake driver, served
// by a GRPCServer on a TCP loopback port.
type grpcEnv struct {
	agent     *agent.Agent
	driver    *fake.Driver
	srv       *GRPCServer
	health    *health.Server
	addr      string
	conn      *grpc.ClientConn
	invoker   kilnv1.InvokerClient
	functions kilnv1.FunctionsClient
	code      []byte // the code archive: the test binary as handler

	// The handler's signals: the call id of a "sleep" or "block" call when
	// it starts and when its ctx ends.
	started, ended chan string
	// gate releases "block" calls.
	gate chan struct{}
	// running and maxRunning count concurrent "block" calls.
	running, maxRunning atomic.Int64
}

// handle is the test function. Its body picks what it does.
func (e *grpcEnv) handle(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	body := string(req.Body)
	switch {
	case body == "sleep":
		signal(e.started, req.ID)
		<-ctx.Done()
		signal(e.ended, req.ID)
		// Answer late: the agent counts an answer that beats its own
		// timer, which fires at the same deadline, as the function's.
		time.Sleep(20 * time.Millisecond)
		return nil, ctx.Err()
	case body == "block":
		n := e.running.Add(1)
		for m := e.maxRunning.Load(); n > m && !e.maxRunning.CompareAndSwap(m, n); m = e.maxRunning.Load() {
		}
		signal(e.started, req.ID)
		select {
		case <-e.gate:
		case <-ctx.Done():
		}
		e.running.Add(-1)
		return &sdk.Response{Body: []byte("unblocked")}, nil
	case strings.HasPrefix(body, "slow:"):
		d, _ := time.ParseDuration(body[len("slow:"):])
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return &sdk.Response{Body: []byte("slept")}, nil
	case body == "fail":
		return &sdk.Response{Status: http.StatusServiceUnavailable}, errors.New("nope")
	case body == "headers":
		h := http.Header{}
		h.Set("X-Out", "out")
		h.Set("X-Kiln-Spoof", "no")
		h.Set("X-Echo", req.Header.Get("X-In"))
		return &sdk.Response{Status: http.StatusCreated, Header: h, Body: []byte(req.Method + " " + req.Path + "?" + req.Query)}, nil
	}
	return &sdk.Response{Body: append([]byte("echo:"), req.Body...)}, nil
}

func signal(ch chan string, id string) {
	select {
	case ch <- id:
	default:
	}
}

// newGRPCEnv starts an agent and its gRPC server, and deploys the function
// "echo" (one container running up to 128 calls, never frozen).
func newGRPCEnv(tb testing.TB, opts ...GRPCOption) *grpcEnv {
	tb.Helper()
	return newGRPCEnvLimit(tb, testMaxBody, opts...)
}

// newGRPCEnvLimit is newGRPCEnv with a body limit of maxBody bytes.
func newGRPCEnvLimit(tb testing.TB, maxBody int, opts ...GRPCOption) *grpcEnv {
	tb.Helper()
	dir, err := os.MkdirTemp("/tmp", "kg")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	e := &grpcEnv{
		code:    selfArchive(tb),
		started: make(chan string, 1024),
		ended:   make(chan string, 1024),
		gate:    make(chan struct{}),
	}
	e.driver = fake.New(e.handle)
	ctx := context.Background()
	store, err := datastore.Open(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		tb.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	p, err := pool.New(e.driver, filepath.Join(dir, "run"), pool.WithLogger(quiet))
	if err != nil {
		tb.Fatal(err)
	}
	a, err := agent.New(ctx, store, p, dir, agent.WithMaxBodyBytes(maxBody), agent.WithLogger(quiet))
	if err != nil {
		tb.Fatal(err)
	}
	e.agent = a
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	e.addr = ln.Addr().String()
	e.srv, e.health = NewGRPCServer(a, append([]GRPCOption{WithGRPCLogger(quiet)}, opts...)...)
	served := make(chan struct{})
	go func() { defer close(served); _ = e.srv.Serve(ln) }()
	e.conn, err = grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	e.invoker = kilnv1.NewInvokerClient(e.conn)
	e.functions = kilnv1.NewFunctionsClient(e.conn)
	tb.Cleanup(func() {
		e.conn.Close()
		e.srv.Stop()
		<-served
		a.Close(context.Background())
		store.Close()
	})
	if _, err := a.Deploy(ctx, "echo", e.spec()); err != nil {
		tb.Fatal(err)
	}
	return e
}

func (e *grpcEnv) spec() *kilnv1.FunctionSpec {
	return &kilnv1.FunctionSpec{
		Runtime:       "go",
		Code:          e.code,
		MaxContainers: 1,
		Concurrency:   128,
		FreezeAfter:   durationpb.New(-1),
	}
}

// wait receives from ch or fails the test after a while.
func wait(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case id := <-ch:
		return id
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

func TestGRPCInvoke(t *testing.T) {
	e := newGRPCEnv(t)
	ctx := context.Background()
	resp, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Id: 7, Function: "echo", Body: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Body) != "echo:hi" || resp.Status != 200 || resp.Id != 7 || resp.CallId == "" ||
		resp.Start != kilnv1.Start_START_COLD || resp.FunctionError != "" || resp.Error != nil || resp.Exec == nil {
		t.Errorf("first call: %v", resp)
	}
	resp, err = e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{
		Function: "echo",
		Body:     []byte("headers"),
		Headers:  []*kilnv1.Header{{Key: "X-In", Value: "in"}},
		Method:   "PUT",
		Path:     "/a/b",
		Query:    "x=1",
		Timeout:  durationpb.New(5 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, h := range resp.Headers {
		got[h.Key] = h.Value
	}
	if resp.Status != http.StatusCreated || string(resp.Body) != "PUT /a/b?x=1" || resp.Start != kilnv1.Start_START_WARM ||
		got["X-Out"] != "out" || got["X-Echo"] != "in" || got["X-Kiln-Spoof"] != "" {
		t.Errorf("second call: %v (headers %v)", resp, got)
	}
	if n := e.driver.Starts(); n != 1 {
		t.Errorf("%d containers started, want 1", n)
	}
}

func TestGRPCInvokeFunctionErrorIsAnAnswer(t *testing.T) {
	e := newGRPCEnv(t)
	resp, err := e.invoker.Invoke(context.Background(), &kilnv1.InvokeRequest{Function: "echo", Body: []byte("fail")})
	if err != nil {
		t.Fatalf("function error became an RPC error: %v", err)
	}
	if resp.FunctionError != "nope" || resp.Status != http.StatusServiceUnavailable || resp.CallId == "" {
		t.Errorf("got %v", resp)
	}
}

func TestGRPCInvokeErrors(t *testing.T) {
	e := newGRPCEnv(t)
	tests := []struct {
		name  string
		req   *kilnv1.InvokeRequest
		code  codes.Code
		class string // "" when grpc-go itself refuses
	}{
		{"unknown function", &kilnv1.InvokeRequest{Function: "nope"}, codes.NotFound, "not_found"},
		{"bad name", &kilnv1.InvokeRequest{Function: "Bad/Name"}, codes.InvalidArgument, "invalid_argument"},
		{"empty name", &kilnv1.InvokeRequest{}, codes.InvalidArgument, "invalid_argument"},
		{"negative timeout", &kilnv1.InvokeRequest{Function: "echo", Timeout: durationpb.New(-time.Second)}, codes.InvalidArgument, "invalid_argument"},
		{"cancel", &kilnv1.InvokeRequest{Function: "echo", Cancel: true}, codes.InvalidArgument, ""},
		{"body over the limit", &kilnv1.InvokeRequest{Function: "echo", Body: make([]byte, testMaxBody+1)}, codes.ResourceExhausted, "payload_too_large"},
		{"message over the limit", &kilnv1.InvokeRequest{Function: "echo", Body: make([]byte, testMaxBody+grpcMsgSlack+1)}, codes.ResourceExhausted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var trailer metadata.MD
			_, err := e.invoker.Invoke(context.Background(), tt.req, grpc.Trailer(&trailer))
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want code %v", err, tt.code)
			}
			if got := trailer.Get(wire.TrailerErrorClass); tt.class != "" && (len(got) != 1 || got[0] != tt.class) {
				t.Errorf("class trailer %v, want %s", got, tt.class)
			}
		})
	}
}

func TestGRPCInvokeDeadline(t *testing.T) {
	e := newGRPCEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("sleep")})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	wait(t, e.ended, "the handler to see its ctx end")

	// The request's own timeout, shorter than the RPC's deadline.
	var trailer metadata.MD
	_, err = e.invoker.Invoke(context.Background(), &kilnv1.InvokeRequest{Function: "echo", Body: []byte("sleep"), Timeout: durationpb.New(50 * time.Millisecond)}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.DeadlineExceeded || len(trailer.Get(wire.TrailerCallID)) != 1 {
		t.Fatalf("got %v (trailer %v), want DEADLINE_EXCEEDED with a call id", err, trailer)
	}
}

func TestGRPCInvokeClientCancel(t *testing.T) {
	e := newGRPCEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("sleep")})
		errc <- err
	}()
	id := wait(t, e.started, "the call to start")
	cancel()
	if got := wait(t, e.ended, "the handler to see the cancel"); got != id {
		t.Errorf("ended %s, want %s", got, id)
	}
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Errorf("got %v, want CANCELED", err)
	}
}

// TestGRPCStreamManyCalls sends 10,000 calls on one stream with 64 in flight
// and checks each is answered exactly once, with its own body.
func TestGRPCStreamManyCalls(t *testing.T) {
	e := newGRPCEnv(t)
	const calls, inFlight = 10000, 64
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := e.invoker.InvokeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slots := make(chan struct{}, inFlight)
	sendErr := make(chan error, 1)
	go func() {
		defer close(sendErr)
		for i := range calls {
			slots <- struct{}{}
			id := uint64(i) + 1000 // ids need not start at 0 or 1
			if err := stream.Send(&kilnv1.InvokeRequest{Id: id, Function: "echo", Body: []byte(strconv.FormatUint(id, 10))}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- stream.CloseSend()
	}()
	seen := make([]int, calls)
	var outOfOrder bool
	last := uint64(0)
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		<-slots
		i := int(resp.Id) - 1000
		if i < 0 || i >= calls {
			t.Fatalf("answer for unknown id %d", resp.Id)
		}
		seen[i]++
		if want := "echo:" + strconv.FormatUint(resp.Id, 10); string(resp.Body) != want || resp.Error != nil {
			t.Fatalf("id %d: got %q %v, want %q", resp.Id, resp.Body, resp.Error, want)
		}
		if resp.Id < last {
			outOfOrder = true
		}
		last = resp.Id
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("id %d answered %d times", i+1000, n)
		}
	}
	t.Logf("answers out of request order: %v", outOfOrder)
}

// streamCall sends req on stream and returns the next answer.
func streamCall(t *testing.T, stream kilnv1.Invoker_InvokeStreamClient, req *kilnv1.InvokeRequest) *kilnv1.InvokeResponse {
	t.Helper()
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Id != req.Id {
		t.Fatalf("answer for id %d, want %d", resp.Id, req.Id)
	}
	return resp
}

func TestGRPCStreamDeadlineThenNextCall(t *testing.T) {
	e := newGRPCEnv(t)
	stream, err := e.invoker.InvokeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	resp := streamCall(t, stream, &kilnv1.InvokeRequest{Id: 1, Function: "echo", Body: []byte("sleep"), Timeout: durationpb.New(50 * time.Millisecond)})
	if resp.Error == nil || codes.Code(resp.Error.Code) != codes.DeadlineExceeded || resp.Error.Class != "deadline_exceeded" || resp.CallId == "" {
		t.Fatalf("got %v, want a DEADLINE_EXCEEDED answer with a call id", resp)
	}
	wait(t, e.ended, "the handler to see its deadline")
	resp = streamCall(t, stream, &kilnv1.InvokeRequest{Id: 2, Function: "echo", Body: []byte("after")})
	if resp.Error != nil || string(resp.Body) != "echo:after" {
		t.Fatalf("next call: %v", resp)
	}
	// A deadline the caller chose cancels the call, not the container.
	if n := e.driver.Starts(); n != 1 || (resp.Start != kilnv1.Start_START_WARM && resp.Start != kilnv1.Start_START_THAWED) {
		t.Errorf("the timed-out call's container was not reused: %d started, the next call was %v", n, resp.Start)
	}
}

func TestGRPCStreamBadRequestsDoNotEndIt(t *testing.T) {
	e := newGRPCEnv(t)
	stream, err := e.invoker.InvokeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		req   *kilnv1.InvokeRequest
		code  codes.Code
		class string
	}{
		{"empty name", &kilnv1.InvokeRequest{Id: 1}, codes.InvalidArgument, "invalid_argument"},
		{"bad name", &kilnv1.InvokeRequest{Id: 2, Function: "../x"}, codes.InvalidArgument, "invalid_argument"},
		{"unknown function", &kilnv1.InvokeRequest{Id: 3, Function: "nope"}, codes.NotFound, "not_found"},
		{"negative timeout", &kilnv1.InvokeRequest{Id: 4, Function: "echo", Timeout: durationpb.New(-time.Second)}, codes.InvalidArgument, "invalid_argument"},
		{"body over the limit", &kilnv1.InvokeRequest{Id: 5, Function: "echo", Body: make([]byte, testMaxBody+1)}, codes.ResourceExhausted, "payload_too_large"},
	}
	for _, tt := range tests {
		resp := streamCall(t, stream, tt.req)
		if resp.Error == nil || codes.Code(resp.Error.Code) != tt.code || resp.Error.Class != tt.class {
			t.Errorf("%s: got %v, want %v (%s)", tt.name, resp, tt.code, tt.class)
		}
	}

	// A duplicate id in flight is refused; the first request is unharmed,
	// and cancelling it answers it with CANCELLED.
	if err := stream.Send(&kilnv1.InvokeRequest{Id: 9, Function: "echo", Body: []byte("sleep")}); err != nil {
		t.Fatal(err)
	}
	wait(t, e.started, "the first request to start")
	resp := streamCall(t, stream, &kilnv1.InvokeRequest{Id: 9, Function: "echo", Body: []byte("dup")})
	if resp.Error == nil || codes.Code(resp.Error.Code) != codes.InvalidArgument {
		t.Errorf("duplicate id: got %v, want INVALID_ARGUMENT", resp)
	}
	resp = streamCall(t, stream, &kilnv1.InvokeRequest{Id: 9, Cancel: true})
	if resp.Error == nil || codes.Code(resp.Error.Code) != codes.Canceled {
		t.Errorf("cancelled request: got %v, want CANCELLED", resp)
	}
	wait(t, e.ended, "the handler to see the cancel")

	// The id is free again, and the stream still works.
	resp = streamCall(t, stream, &kilnv1.InvokeRequest{Id: 9, Function: "echo", Body: []byte("ok")})
	if resp.Error != nil || string(resp.Body) != "echo:ok" {
		t.Errorf("after the errors: %v", resp)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("end of stream: %v, want io.EOF", err)
	}
}

// A body over the limit, in a message the server still reads (its limit is
// that of a deploy's code archive), fails that request and not the stream.
func TestGRPCStreamTooLargeBodyFailsTheRequest(t *testing.T) {
	e := newGRPCEnv(t)
	stream, err := e.invoker.InvokeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	resp := streamCall(t, stream, &kilnv1.InvokeRequest{Id: 1, Function: "echo", Body: make([]byte, testMaxBody+grpcMsgSlack+1)})
	if resp.Error == nil || resp.Error.Class != "payload_too_large" || codes.Code(resp.Error.Code) != codes.ResourceExhausted {
		t.Fatalf("got %v, want a payload_too_large error", resp)
	}
	resp = streamCall(t, stream, &kilnv1.InvokeRequest{Id: 2, Function: "echo", Body: []byte("ok")})
	if resp.Error != nil || string(resp.Body) != "echo:ok" {
		t.Errorf("after the large body: %v", resp)
	}
}

func TestGRPCStreamClientCancelReachesHandlers(t *testing.T) {
	e := newGRPCEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.invoker.InvokeStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := range n {
		if err := stream.Send(&kilnv1.InvokeRequest{Id: uint64(i), Function: "echo", Body: []byte("sleep")}); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]bool{}
	for range n {
		ids[wait(t, e.started, "the calls to start")] = true
	}
	cancel()
	for range n {
		id := wait(t, e.ended, "every handler to see the cancel")
		if !ids[id] {
			t.Errorf("unexpected call %s ended", id)
		}
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("stream: got %v, want CANCELED", err)
	}
}

// TestGRPCStreamBoundsInFlight checks that the server runs at most its bound
// of a stream's requests at once, however many the client sends, and
// answers all of them.
func TestGRPCStreamBoundsInFlight(t *testing.T) {
	const bound, sent = 4, 40
	e := newGRPCEnv(t, WithStreamMaxInFlight(bound))
	stream, err := e.invoker.InvokeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range sent {
		if err := stream.Send(&kilnv1.InvokeRequest{Id: uint64(i), Function: "echo", Body: []byte("block")}); err != nil {
			t.Fatal(err)
		}
	}
	for range bound {
		wait(t, e.started, "the first calls to start")
	}
	time.Sleep(100 * time.Millisecond) // time for more to start, were the bound broken
	if n := e.running.Load(); n != bound {
		t.Fatalf("%d calls running, want %d", n, bound)
	}
	close(e.gate)
	for range sent {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Error != nil || string(resp.Body) != "unblocked" {
			t.Fatalf("got %v", resp)
		}
	}
	if m := e.maxRunning.Load(); m > bound {
		t.Errorf("%d calls ran at once, want at most %d", m, bound)
	}
}

func TestGRPCGracefulStopDrainsStreams(t *testing.T) {
	e := newGRPCEnv(t)
	stream, err := e.invoker.InvokeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&kilnv1.InvokeRequest{Id: 1, Function: "echo", Body: []byte("slow:200ms")}); err != nil {
		t.Fatal(err)
	}
	// Make sure the server read the request before it drains.
	resp := streamCall(t, stream, &kilnv1.InvokeRequest{Id: 2, Function: "echo", Body: []byte("x")})
	if resp.Error != nil {
		t.Fatal(resp)
	}
	stopped := make(chan struct{})
	go func() { e.srv.GracefulStop(); close(stopped) }()
	resp, err = stream.Recv()
	if err != nil || resp.Id != 1 || string(resp.Body) != "slept" {
		t.Fatalf("call in flight at shutdown: %v %v, want its answer", resp, err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("end of stream: %v, want UNAVAILABLE", err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("GracefulStop did not return")
	}
}

func TestGRPCReflectionAndHealth(t *testing.T) {
	e := newGRPCEnv(t)
	ctx := context.Background()
	h, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v %v, want SERVING", h, err)
	}

	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	rs, err := reflectionpb.NewServerReflectionClient(e.conn).ServerReflectionInfo(rctx)
	if err != nil {
		t.Fatal(err)
	}
	err = rs.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	services := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		services[s.Name] = true
	}
	for _, want := range []string{"kiln.v1.Invoker", "kiln.v1.Functions", "grpc.health.v1.Health"} {
		if !services[want] {
			t.Errorf("reflection lists %v, missing %s", services, want)
		}
	}
	// The descriptors resolve too, as grpcurl needs.
	err = rs.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "kiln.v1.Invoker"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := rs.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file containing kiln.v1.Invoker: %v %v", resp, err)
	}

	rcancel() // GracefulStop waits for every stream
	e.srv.GracefulStop()
	if h, err := e.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after GracefulStop: %v %v, want NOT_SERVING", h, err)
	}
}

func TestGRPCFunctions(t *testing.T) {
	e := newGRPCEnv(t)
	ctx := context.Background()
	fn, err := e.functions.Deploy(ctx, &kilnv1.DeployRequest{Name: "second", Spec: &kilnv1.FunctionSpec{Runtime: "go", Code: e.code}})
	if err != nil {
		t.Fatal(err)
	}
	if fn.Name != "second" || fn.Revision == "" || fn.Spec.MemoryMb == 0 {
		t.Errorf("deploy: %v", fn)
	}
	got, err := e.functions.Get(ctx, &kilnv1.GetFunctionRequest{Name: "second"})
	if err != nil || got.Revision != fn.Revision {
		t.Errorf("get: %v %v", got, err)
	}
	list, err := e.functions.List(ctx, &kilnv1.ListFunctionsRequest{})
	if err != nil || len(list.Functions) != 2 || list.Functions[0].Name != "echo" || list.Functions[1].Name != "second" {
		t.Errorf("list: %v %v", list, err)
	}
	if _, err := e.functions.Delete(ctx, &kilnv1.DeleteFunctionRequest{Name: "second"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"get deleted", func() error {
			_, err := e.functions.Get(ctx, &kilnv1.GetFunctionRequest{Name: "second"})
			return err
		}, codes.NotFound},
		{"delete deleted", func() error {
			_, err := e.functions.Delete(ctx, &kilnv1.DeleteFunctionRequest{Name: "second"})
			return err
		}, codes.NotFound},
		{"get bad name", func() error {
			_, err := e.functions.Get(ctx, &kilnv1.GetFunctionRequest{Name: "A B"})
			return err
		}, codes.InvalidArgument},
		{"deploy bad spec", func() error {
			_, err := e.functions.Deploy(ctx, &kilnv1.DeployRequest{Name: "third", Spec: &kilnv1.FunctionSpec{Runtime: "perl", Code: e.code}})
			return err
		}, codes.InvalidArgument},
		{"deploy no spec", func() error {
			_, err := e.functions.Deploy(ctx, &kilnv1.DeployRequest{Name: "third"})
			return err
		}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		if err := tt.call(); status.Code(err) != tt.code {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.code)
		}
	}
}

// TestGRPCClient runs api/client's GRPCClient against the real server.
func TestGRPCClient(t *testing.T) {
	e := newGRPCEnv(t)
	c, err := client.NewGRPC(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	resp, err := c.Invoke(ctx, "echo", []byte("headers"), http.Header{"X-In": {"v"}})
	if err != nil || resp.Status != http.StatusCreated {
		t.Fatalf("invoke: %v %v", resp, err)
	}
	_, err = c.Invoke(ctx, "missing", nil, nil)
	var ge *client.GRPCError
	if !errors.As(err, &ge) || ge.Class != wire.ClassNotFound || ge.Code != codes.NotFound || status.Code(err) != codes.NotFound {
		t.Errorf("unknown function: %#v", err)
	}
	if _, err := c.Get(ctx, "missing"); !errors.As(err, &ge) || ge.Class != wire.ClassNotFound {
		t.Errorf("get unknown function: %#v", err)
	}
	fns, err := c.List(ctx)
	if err != nil || len(fns) != 1 {
		t.Errorf("list: %v %v", fns, err)
	}
}

// TestGRPCClientStreamConcurrent has many goroutines share one client
// Stream against the real server.
func TestGRPCClientStreamConcurrent(t *testing.T) {
	e := newGRPCEnv(t)
	c, err := client.NewGRPC(e.addr, client.WithGRPCMaxInFlight(32))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const workers, each = 50, 100
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				body := fmt.Sprintf("%d-%d", w, i)
				resp, err := s.Invoke(ctx, "echo", []byte(body))
				if err != nil {
					errc <- err
					return
				}
				if string(resp.Body) != "echo:"+body {
					errc <- fmt.Errorf("sent %q, got %q", body, resp.Body)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}

	// Kiln's refusal of one call is a *GRPCError; the stream goes on.
	_, err = s.Invoke(ctx, "missing", nil)
	var ge *client.GRPCError
	if !errors.As(err, &ge) || ge.Code != codes.NotFound {
		t.Errorf("unknown function: %v", err)
	}
	// A deadline travels with the request and ends the call on the agent.
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = s.Invoke(dctx, "echo", []byte("sleep"))
	cancel()
	if !errors.As(err, &ge) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: %v", err)
	}
	wait(t, e.started, "the call to start")
	wait(t, e.ended, "the handler to see the deadline")
	// Cancelling one caller's ctx cancels its call on the agent.
	cctx, cancel := context.WithCancel(ctx)
	errc2 := make(chan error, 1)
	go func() { _, err := s.Invoke(cctx, "echo", []byte("sleep")); errc2 <- err }()
	wait(t, e.started, "the call to start")
	cancel()
	wait(t, e.ended, "the handler to see the cancel")
	if err := <-errc2; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled call: %v", err)
	}
	if resp, err := s.Invoke(ctx, "echo", []byte("still")); err != nil || string(resp.Body) != "echo:still" {
		t.Errorf("after cancel: %v %v", resp, err)
	}
	// Close fails the calls still waiting.
	go func() {
		select {
		case <-e.started:
		case <-time.After(10 * time.Second):
		}
		s.Close()
	}()
	if _, err := s.Invoke(ctx, "echo", []byte("sleep")); !errors.Is(err, client.ErrStreamClosed) {
		t.Errorf("call at Close: %v", err)
	}
	if _, err := s.Invoke(ctx, "echo", nil); !errors.Is(err, client.ErrStreamClosed) {
		t.Errorf("call after Close: %v", err)
	}
}

func TestGRPCAuth(t *testing.T) {
	const admin = "admin-token"
	e := newGRPCEnv(t, WithGRPCAdminToken(admin, true))
	ctx := context.Background()
	key, _, err := e.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	with := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	list := func(ctx context.Context) error {
		_, err := e.functions.List(ctx, &kilnv1.ListFunctionsRequest{})
		return err
	}
	invoke := func(ctx context.Context) error {
		_, err := e.invoker.Invoke(ctx, &kilnv1.InvokeRequest{Function: "echo", Body: []byte("x")})
		return err
	}
	tests := []struct {
		name string
		ctx  context.Context
		call func(context.Context) error
		code codes.Code
	}{
		{"functions without a token", ctx, list, codes.Unauthenticated},
		{"functions with a wrong token", with("nope"), list, codes.Unauthenticated},
		{"functions with a tenant key", with(key), list, codes.Unauthenticated},
		{"functions with the admin token", with(admin), list, codes.OK},
		{"invoke without a key", ctx, invoke, codes.OK},
		{"invoke with a tenant key", with(key), invoke, codes.OK},
		{"invoke with the admin token", with(admin), invoke, codes.OK},
		{"invoke with a wrong key", with("nope"), invoke, codes.Unauthenticated},
	}
	for _, tt := range tests {
		if err := tt.call(tt.ctx); status.Code(err) != tt.code {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.code)
		}
	}

	// A stream presents its key once, for all its calls.
	stream, err := e.invoker.InvokeStream(with("nope"))
	if err != nil {
		t.Fatal(err)
	}
	if resp := streamCall(t, stream, &kilnv1.InvokeRequest{Id: 1, Function: "echo"}); resp.Error == nil || codes.Code(resp.Error.Code) != codes.Unauthenticated {
		t.Errorf("stream with a wrong key: %v", resp)
	}

	// The client sends its token.
	c, err := client.NewGRPC(e.addr, client.WithGRPCToken(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.List(ctx); err != nil {
		t.Errorf("client with the admin token: %v", err)
	}
}
