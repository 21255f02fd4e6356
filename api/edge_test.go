package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kilnfx/kiln/agent"
)

// The edge's defences against slow and numerous clients: connection
// limits, header, body and handshake timeouts, per-route body limits, and
// listeners that outlive running out of descriptors.

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

func TestHTTPHeaderAndBodyTimeouts(t *testing.T) {
	e := newGRPCEnv(t)
	_, addr := startHTTP(t, e.agent, WithHeaderTimeout(200*time.Millisecond), WithBodyTimeout(1500*time.Millisecond))

	// Headers that never end, and no request at all: 408, closed.
	partial := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(partial, "GET /healthz HTTP/1.1\r\nHost: ki")
	silent := dialFrom(t, "127.0.0.1", addr)
	for name, c := range map[string]*rawConn{"partial headers": partial, "nothing sent": silent} {
		if out := c.closedWith(t); !strings.HasPrefix(out, "HTTP/1.1 408 ") || !strings.Contains(out, "request_timeout") {
			t.Errorf("%s: server sent %q, want 408 request_timeout", name, out)
		}
	}

	// A large body has its own, longer, time: one sent after the header
	// timeout is still read; a small one must come within it.
	big := strings.Repeat("b", smallBody+1)
	late := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(late, "POST /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", len(big))
	lateSmall := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(lateSmall, "POST /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nContent-Length: 4\r\n\r\n")
	time.Sleep(500 * time.Millisecond)
	fmt.Fprint(late, big)
	fmt.Fprint(lateSmall, "body")
	if out := late.closedWith(t); !strings.HasPrefix(out, "HTTP/1.1 200 ") {
		t.Errorf("large body after the header timeout, within the body timeout: %.100q, want 200", out)
	}
	if out := lateSmall.closedWith(t); !strings.HasPrefix(out, "HTTP/1.1 408 ") {
		t.Errorf("small body after the header timeout: %.100q, want 408", out)
	}

	// A large body that never comes: 408 once the body timeout passed.
	never := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(never, "POST /healthz HTTP/1.1\r\nHost: kiln\r\nContent-Length: %d\r\n\r\nbo", len(big))
	if out := never.closedWith(t); !strings.HasPrefix(out, "HTTP/1.1 408 ") {
		t.Errorf("body that never ends: %q, want 408", out)
	}

	// A kept-alive connection waits for its next request longer than the
	// header timeout.
	idle := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
	time.Sleep(500 * time.Millisecond)
	if !idle.open() {
		t.Errorf("idle kept-alive connection closed after the header timeout: %q", <-idle.got)
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

func TestHTTPDeployBodyLimit(t *testing.T) {
	e := newGRPCEnv(t)
	const deployLimit = 10 << 20
	const imageLimit = 12 << 20
	_, addr := startHTTP(t, e.agent, WithAdminToken("admintoken", true), WithMaxDeployBytes(deployLimit), WithMaxImageBytes(imageLimit))
	usual := testMaxBody + bodySlack

	send := func(method, path, token string, length int, body bool) string {
		t.Helper()
		c := dialFrom(t, "127.0.0.1", addr)
		w := bufio.NewWriter(c)
		fmt.Fprintf(w, "%s %s HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nContent-Length: %d\r\n", method, path, length)
		if token != "" {
			fmt.Fprintf(w, "Authorization: Bearer %s\r\n", token)
		}
		fmt.Fprintf(w, "\r\n")
		if body {
			w.Write(make([]byte, length))
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return c.closedWith(t)
	}
	for _, tt := range []struct {
		name, method, path, token string
		length                    int
		body                      bool
		want, wantText            string
	}{
		// The admin's deploy is read past the usual limit (then refused as
		// no spec).
		{"admin deploy over the usual limit", "PUT", "/v1/functions/big", "admintoken", usual + 1<<20, true, "400", "spec"},
		{"admin deploy over the deploy limit", "PUT", "/v1/functions/big", "admintoken", deployLimit + 1, false, "413", "deploy"},
		{"deploy without the token", "PUT", "/v1/functions/big", "", usual + 1, false, "401", "unauthenticated"},
		{"deploy with a wrong token", "PUT", "/v1/functions/big", "nope", usual + 1, false, "401", "unauthenticated"},
		{"invoke over the usual limit", "POST", "/invoke/echo", "admintoken", usual + 1, false, "413", "payload_too_large"},
		// The admin's image import is read past the usual limit (then
		// refused: the fake driver keeps no images).
		{"admin image import over the usual limit", "POST", "/v1/images", "admintoken", usual + 1<<20, true, "400", "keeps no images"},
		{"admin image import over the image limit", "POST", "/v1/images", "admintoken", imageLimit + 1, false, "413", "--max-image-bytes"},
		{"image import without the token", "POST", "/v1/images", "", usual + 1, false, "401", "unauthenticated"},
		{"POST below /v1/images", "POST", "/v1/images/x", "admintoken", usual + 1, false, "413", "payload_too_large"},
		{"PUT elsewhere under /v1/functions", "PUT", "/v1/functions/big/logs", "admintoken", usual + 1, false, "413", "payload_too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := send(tt.method, tt.path, tt.token, tt.length, tt.body)
			if !strings.HasPrefix(out, "HTTP/1.1 "+tt.want+" ") || !strings.Contains(out, tt.wantText) {
				t.Errorf("answer %.300q, want %s mentioning %q", out, tt.want, tt.wantText)
			}
		})
	}
}

func TestRequestConfig(t *testing.T) {
	e := newGRPCEnv(t)
	s := NewHTTPServer(e.agent, WithAdminToken("admintoken", true), WithBodyTimeout(time.Minute), WithMaxDeployBytes(1<<30))
	body := fasthttp.RequestConfig{ReadTimeout: time.Minute}
	deploy := fasthttp.RequestConfig{ReadTimeout: deployBodyTimeout, MaxRequestBodySize: 1 << 30}
	image := fasthttp.RequestConfig{ReadTimeout: deployBodyTimeout, MaxRequestBodySize: DefaultMaxImageBytes}
	for _, tt := range []struct {
		name, head string
		want       fasthttp.RequestConfig
	}{
		{"no body", "GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n", fasthttp.RequestConfig{}},
		{"small invoke", "POST /invoke/echo HTTP/1.1\r\nHost: k\r\nContent-Length: 65536\r\n\r\n", fasthttp.RequestConfig{}},
		{"large invoke", "POST /invoke/echo HTTP/1.1\r\nHost: k\r\nContent-Length: 65537\r\n\r\n", body},
		{"chunked invoke", "POST /invoke/echo HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n", body},
		{"deploy by the admin", "PUT /v1/functions/f HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 5\r\n\r\n", deploy},
		{"deploy with a query", "PUT /v1/functions/f?x=1 HTTP/1.1\r\nHost: k\r\nAuthorization: bearer admintoken\r\nContent-Length: 5\r\n\r\n", deploy},
		{"deploy by someone else", "PUT /v1/functions/f HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer tenantkey\r\nContent-Length: 100000\r\n\r\n", body},
		{"deploy without credentials", "PUT /v1/functions/f HTTP/1.1\r\nHost: k\r\nContent-Length: 100000\r\n\r\n", body},
		{"no function named", "PUT /v1/functions/ HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 100000\r\n\r\n", body},
		{"a function's sub-resource", "PUT /v1/functions/f/logs HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 100000\r\n\r\n", body},
		{"POST to the deploy path", "POST /v1/functions/f HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 100000\r\n\r\n", body},
		{"image import by the admin", "POST /v1/images HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 5\r\n\r\n", image},
		{"image import by someone else", "POST /v1/images HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer tenantkey\r\nContent-Length: 100000\r\n\r\n", body},
		{"PUT to the images path", "PUT /v1/images HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 100000\r\n\r\n", body},
		{"POST below the images path", "POST /v1/images/x HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer admintoken\r\nContent-Length: 100000\r\n\r\n", body},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.RequestHeader
			if err := h.Read(bufio.NewReader(strings.NewReader(tt.head))); err != nil {
				t.Fatal(err)
			}
			if got := s.requestConfig(&h); got != tt.want {
				t.Errorf("requestConfig = %+v, want %+v", got, tt.want)
			}
			// It runs on every request: no allocation, whatever the route.
			if n := testing.AllocsPerRun(100, func() { s.requestConfig(&h) }); n != 0 {
				t.Errorf("requestConfig allocates %v times", n)
			}
		})
	}
	open := NewHTTPServer(e.agent, WithAdminToken("admintoken", false))
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader("PUT /v1/functions/f HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\n"))); err != nil {
		t.Fatal(err)
	}
	if got := open.requestConfig(&h); got.MaxRequestBodySize != DefaultMaxDeployBytes {
		t.Errorf("deploy without credentials where none are required: %+v, want the deploy limit", got)
	}
}

func TestGateAdmitsAdmin(t *testing.T) {
	e := newGRPCEnv(t)
	key, _, err := e.agent.CreateKey(context.Background(), "tenant")
	if err != nil {
		t.Fatal(err)
	}
	for _, required := range []bool{false, true} {
		for _, adminToken := range []string{"", "admintoken"} {
			g := gate{agent: e.agent, adminToken: adminToken, required: required}
			for _, auth := range []string{"", "Bearer admintoken", "bearer  admintoken ", "Bearer ", "Basic admintoken", "Bearer admintokens", "Bearer " + key} {
				c, err := g.identify(bearerString(auth))
				want := err == nil && c.admin
				if got := g.admitsAdmin([]byte(auth)); got != want {
					t.Errorf("required=%v token=%q Authorization %q: admitsAdmin = %v, identify admits the admin: %v", required, adminToken, auth, got, want)
				}
			}
		}
	}
}

// bearerString is bearer on an Authorization header value.
func bearerString(auth string) string { return string(bearerBytes([]byte(auth))) }

func TestGRPCHandshakeTimeoutAndConnLimits(t *testing.T) {
	e := newGRPCEnv(t, WithGRPCHandshakeTimeout(300*time.Millisecond), WithGRPCConnLimits(0, 2))
	// Two connections from one address that never start HTTP/2, and a
	// third, refused at once while the two are held.
	a := dialFrom(t, "127.0.0.2", e.addr)
	b := dialFrom(t, "127.0.0.2", e.addr)
	fmt.Fprintf(b, "PRI * HTTP/2.0\r\n")
	waitUntil(t, "both connections counted", func() bool {
		_, n := e.srv.conns.counts(netip.MustParseAddr("127.0.0.2"))
		return n == 2
	})
	c := dialFrom(t, "127.0.0.2", e.addr)
	if out := c.closedWith(t); out != "" {
		t.Errorf("refused connection got %q", out)
	}
	if !a.open() || !b.open() {
		t.Fatal("the refused connection was not the one closed first")
	}
	// Another client is served meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health while one address is at its bound: %v", err)
	}
	// The handshake timeout cuts the two, which frees their room.
	a.closedWith(t)
	b.closedWith(t)
	waitUntil(t, "the two released", func() bool {
		_, n := e.srv.conns.counts(netip.MustParseAddr("127.0.0.2"))
		return n == 0
	})
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

// BenchmarkRequestConfig measures the HeaderReceived hook on an invocation
// with a small body: what it adds to such a request.
func BenchmarkRequestConfig(b *testing.B) {
	e := newGRPCEnv(b)
	s := NewHTTPServer(e.agent, WithAdminToken("admintoken", true))
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader("POST /invoke/echo HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\n"))); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.requestConfig(&h)
	}
}
