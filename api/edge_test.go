package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kilnfx/kiln/agent"
)

// The edge's defences against slow and numerous clients: connection
// limits, and listeners that outlive running out of descriptors.

// startHTTP serves a's HTTP API with opts on loopback TCP and returns its
// address.
func startHTTP(t *testing.T, a *agent.Agent, opts ...HTTPOption) (*HTTPServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewHTTPServer(a, append([]HTTPOption{WithHTTPLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		if err := <-served; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return s, ln.Addr().String()
}

// rawConn is a client connection that writes raw bytes and reads whatever
// the server sends until it closes the connection.
type rawConn struct {
	net.Conn
	got chan string // everything read, once the server closed the connection
}

// dialFrom connects to addr from the loopback address from.
func dialFrom(t *testing.T, from, addr string) *rawConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{Conn: c, got: make(chan string, 1)}
	go func() {
		b, _ := io.ReadAll(c)
		rc.got <- string(b)
	}()
	return rc
}

// closedWith waits for the server to close the connection and returns what
// it sent.
func (c *rawConn) closedWith(t *testing.T) string {
	t.Helper()
	select {
	case s := <-c.got:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not close the connection")
		return ""
	}
}

// open reports whether the server has not closed the connection.
func (c *rawConn) open() bool {
	select {
	case s := <-c.got:
		c.got <- s
		return false
	default:
		return true
	}
}

// get sends GET path on a new connection from the loopback address from
// and returns the status, or 0 when the connection was refused.
func get(t *testing.T, from, addr, path string) (int, string) {
	t.Helper()
	c := dialFrom(t, from, addr)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n", path)
	out := c.closedWith(t)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		return 0, out
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPServeSurvivesRunningOutOfDescriptors(t *testing.T) {
	e := newGRPCEnv(t)
	server, client := net.Pipe()
	defer client.Close()
	fake := newFakeListener(acceptErr(syscall.EMFILE), acceptErr(syscall.ENFILE), acceptErr(syscall.ENOBUFS))
	fake.conns = []net.Conn{server}
	s := NewHTTPServer(e.agent, WithHTTPLogger(slog.New(slog.DiscardHandler)))
	served := make(chan error, 1)
	go func() { served <- s.Serve(fake) }()
	defer func() {
		s.Shutdown(context.Background())
		if err := <-served; err != nil {
			t.Errorf("Serve after Shutdown = %v", err)
		}
	}()
	fmt.Fprintf(client, "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatalf("no answer after the listener ran out of descriptors: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "ok\n" {
		t.Errorf("GET /healthz = %d %q", resp.StatusCode, b)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v", err)
	default:
	}
}

func TestGRPCServeSurvivesRunningOutOfDescriptors(t *testing.T) {
	e := newGRPCEnv(t)
	server, client := net.Pipe()
	// ENOBUFS is no temporary error to grpc-go: its Serve would return.
	fake := newFakeListener(acceptErr(syscall.ENOBUFS), acceptErr(syscall.EMFILE))
	fake.conns = []net.Conn{server}
	s, _ := NewGRPCServer(e.agent, WithGRPCLogger(slog.New(slog.DiscardHandler)))
	served := make(chan error, 1)
	go func() { served <- s.Serve(fake) }()
	defer func() {
		s.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve after Stop = %v", err)
		}
	}()
	conn, err := grpc.NewClient("passthrough:///pipe", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return client, nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the listener ran out of descriptors = %v, %v", resp, err)
	}
}

func TestHTTPConnLimits(t *testing.T) {
	e := newGRPCEnv(t)
	_, addr := startHTTP(t, e.agent, WithConnLimits(2, 1))

	held := dialFrom(t, "127.0.0.2", addr)
	// Wait until the server holds it, so that the next is the second.
	waitUntil(t, "the first connection counted", func() bool { return get2(t, addr) == 429 })
	over := dialFrom(t, "127.0.0.2", addr)
	if out := over.closedWith(t); !strings.HasPrefix(out, "HTTP/1.1 429 ") || !strings.Contains(out, "Retry-After: 1") {
		t.Errorf("second connection from one address: %q, want 429 with Retry-After", out)
	}
	// Others still get in, up to the total.
	kept := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(kept, "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
	if status, out := get(t, "127.0.0.3", addr, "/healthz"); status != 503 || !strings.Contains(out, "too many connections") {
		t.Errorf("third connection in all: %d %q, want 503", status, out)
	}
	if !held.open() || !kept.open() {
		t.Fatal("refusing a connection closed an admitted one")
	}
	// A closed connection gives its room back.
	held.Close()
	waitUntil(t, "room after a close", func() bool {
		status, _ := get(t, "127.0.0.3", addr, "/healthz")
		return status == 200
	})
}

// get2 returns the status a second connection from 127.0.0.2 gets.
func get2(t *testing.T, addr string) int {
	status, _ := get(t, "127.0.0.2", addr, "/healthz")
	return status
}

// waitUntil polls cond until it holds, failing the test after a while.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGRPCListenerSetsTCPUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(ln, newConnLimiter(0, 0), slog.New(slog.DiscardHandler), "test", true, nil)
	l.tcpUserTimeout = grpcKeepaliveTimeout
	defer l.Close()
	c := dialFrom(t, "127.0.0.1", ln.Addr().String())
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	raw, err := sc.(*trackedConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	raw.Control(func(fd uintptr) {
		got, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	if gerr != nil || got != int(grpcKeepaliveTimeout/time.Millisecond) {
		t.Errorf("TCP_USER_TIMEOUT = %d, %v; want %d", got, gerr, grpcKeepaliveTimeout/time.Millisecond)
	}
}
