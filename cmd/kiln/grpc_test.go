package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// fakeInvoker is an in-memory kiln.v1.Invoker answering as the fake HTTP
// agent does.
type fakeInvoker struct {
	kilnv1.UnimplementedInvokerServer
	mu   sync.Mutex
	last *kilnv1.InvokeRequest
}

func (f *fakeInvoker) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	f.mu.Lock()
	f.last = req
	f.mu.Unlock()
	switch req.Function {
	case "hello":
		return &kilnv1.InvokeResponse{Status: 200, Body: append([]byte("Hello, "), req.Body...),
			Headers: []*kilnv1.Header{{Key: "X-Handler", Value: "hello"}}}, nil
	case "fails":
		return &kilnv1.InvokeResponse{Status: 500, Body: []byte("handler error: boom"), FunctionError: "boom"}, nil
	case "fails-silently":
		return &kilnv1.InvokeResponse{Status: 500, FunctionError: "boom"}, nil
	case "teapot":
		return &kilnv1.InvokeResponse{Status: 418, Body: []byte("I'm a teapot")}, nil
	case "busy":
		grpc.SetTrailer(ctx, metadata.Pairs("kiln-error-class", "unavailable"))
		return nil, status.Error(codes.Unavailable, "no container available")
	}
	grpc.SetTrailer(ctx, metadata.Pairs("kiln-error-class", "not_found"))
	return nil, status.Errorf(codes.NotFound, "function %s not found", req.Function)
}

func newFakeGRPCAgent(t *testing.T) (*fakeInvoker, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeInvoker{}
	srv := grpc.NewServer()
	kilnv1.RegisterInvokerServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

func TestInvokeGRPC(t *testing.T) {
	agent, addr := newFakeGRPCAgent(t)
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stdout string
		stderr string // substring
	}{
		{name: "flag", args: []string{"invoke", "hello", "-d", "world", "--grpc", "--grpc-addr", addr}, stdout: "Hello, world"},
		{name: "env", env: map[string]string{envGRPC: addr}, args: []string{"invoke", "hello", "-d", "env", "--grpc"}, stdout: "Hello, env"},
		{name: "flag wins over env", env: map[string]string{envGRPC: dead}, args: []string{"invoke", "hello", "-d", "x", "--grpc", "--grpc-addr", addr}, stdout: "Hello, x"},
		{name: "function error", args: []string{"invoke", "fails", "--grpc", "--grpc-addr", addr}, code: 1, stdout: "handler error: boom", stderr: "invoke fails: the function failed (HTTP 500)"},
		{name: "function error without body", args: []string{"invoke", "fails-silently", "--grpc", "--grpc-addr", addr}, code: 1, stdout: `"function_error"`, stderr: "the function failed (HTTP 500)"},
		{name: "error status", args: []string{"invoke", "teapot", "--grpc", "--grpc-addr", addr}, code: 1, stdout: "I'm a teapot", stderr: "HTTP 418"},
		{name: "kiln error", args: []string{"invoke", "missing", "--grpc", "--grpc-addr", addr}, code: 1, stderr: "kiln: invoke missing: function missing not found (not_found, gRPC NotFound)"},
		{name: "kiln unavailable", args: []string{"invoke", "busy", "--grpc", "--grpc-addr", addr}, code: 1, stderr: "no container available (unavailable, gRPC Unavailable)"},
		{name: "unreachable", args: []string{"invoke", "hello", "--grpc", "--grpc-addr", dead}, code: 1, stderr: "cannot reach the kiln agent's gRPC API at " + dead},
		{name: "invalid name", args: []string{"invoke", "../x", "--grpc", "--grpc-addr", addr}, code: 1, stderr: "invalid function name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := kiln(t, tt.env, "", tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("got exit %d stdout %q stderr %q; want exit %d stdout %q stderr containing %q",
					r.code, r.stdout, r.stderr, tt.code, tt.stdout, tt.stderr)
			}
			if tt.code == 0 && (r.stderr != "" || r.stdout != tt.stdout) {
				t.Errorf("stdout %q stderr %q on success", r.stdout, r.stderr)
			}
		})
	}

	r := kiln(t, nil, "", "invoke", "hello", "-d", "h", "-H", "X-A: 1", "--grpc", "--grpc-addr", addr)
	if r.code != 0 {
		t.Fatal(r)
	}
	agent.mu.Lock()
	defer agent.mu.Unlock()
	if h := agent.last.GetHeaders(); len(h) != 1 || h[0].Key != "X-A" || h[0].Value != "1" {
		t.Errorf("headers sent: %v", h)
	}
}
