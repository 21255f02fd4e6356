package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/mem"
)

// fakeListener returns the errors of errs in turn from Accept, then
// repeat (when set), then conns, then waits to be closed; once closed, it
// returns net.ErrClosed.
type fakeListener struct {
	mu      sync.Mutex
	errs    []error // guarded by mu
	repeat  error   // guarded by mu: returned after errs until closed, when set
	conns   []net.Conn
	accepts int // guarded by mu
	closed  chan struct{}
}

func newFakeListener(errs ...error) *fakeListener {
	return &fakeListener{errs: errs, closed: make(chan struct{})}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	closedErr := &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
	f.mu.Lock()
	f.accepts++
	select {
	case <-f.closed:
		f.mu.Unlock()
		return nil, closedErr
	default:
	}
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	if f.repeat != nil {
		f.mu.Unlock()
		return nil, f.repeat
	}
	if len(f.conns) > 0 {
		c := f.conns[0]
		f.conns = f.conns[1:]
		f.mu.Unlock()
		return c, nil
	}
	f.mu.Unlock()
	<-f.closed
	return nil, closedErr
}

func (f *fakeListener) acceptCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepts
}

func (f *fakeListener) Close() error {
	select {
	case <-f.closed:
	default:
		close(f.closed)
	}
	return nil
}

func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// acceptErr is the error accept4 failing with errno gives through net.
func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

// logBuffer is a slog handler's output, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLogger() (*slog.Logger, *logBuffer) {
	var buf logBuffer
	return slog.New(slog.NewTextHandler(&buf, nil)), &buf
}

func TestLimitListenerRetriesEMFILE(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	fake := newFakeListener(acceptErr(syscall.EMFILE), acceptErr(syscall.EMFILE), acceptErr(syscall.ENFILE))
	fake.conns = []net.Conn{server}
	log, logs := newTestLogger()
	l := newLimitListener(fake, newConnLimiter(0, 0), log, "test", true, nil)

	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept = %v, want the connection after the descriptors came back", err)
	}
	defer c.Close()
	if tc, ok := c.(*trackedConn); !ok || tc.Conn != server {
		t.Errorf("Accept = %T, want the fake's connection, tracked", c)
	}
	if n := fake.acceptCount(); n != 4 {
		t.Errorf("the listener was asked %d times, want 4 (3 failures, then the connection)", n)
	}
	out := logs.String()
	if n := strings.Count(out, "accept failed; retrying"); n != 1 {
		t.Errorf("%d log lines about failed accepts, want 1 (the rest held back):\n%s", n, out)
	}
	if !strings.Contains(out, "too many open files") || !strings.Contains(out, "retry_in=5ms") {
		t.Errorf("log does not name the error and the wait:\n%s", out)
	}
}

func TestLimitListenerCloseCutsBackoff(t *testing.T) {
	fake := newFakeListener()
	fake.repeat = acceptErr(syscall.EMFILE)
	log, _ := newTestLogger()
	l := newLimitListener(fake, newConnLimiter(0, 0), log, "test", false, nil)
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	// Let the backoff grow past its first steps, then close.
	for deadline := time.Now().Add(5 * time.Second); fake.acceptCount() < 4; {
		if time.Now().After(deadline) {
			t.Fatal("Accept stopped retrying")
		}
		time.Sleep(time.Millisecond)
	}
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting after Close")
	}
}

func TestLimitListenerReturnsPermanentErrors(t *testing.T) {
	boom := errors.New("boom")
	log, _ := newTestLogger()
	l := newLimitListener(newFakeListener(boom), newConnLimiter(0, 0), log, "test", false, nil)
	if _, err := l.Accept(); err != boom {
		t.Errorf("Accept = %v, want %v", err, boom)
	}
}

func TestRetryAccept(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{acceptErr(syscall.EMFILE), true},
		{acceptErr(syscall.ENFILE), true},
		{acceptErr(syscall.ENOBUFS), true},
		{acceptErr(syscall.ENOMEM), true},
		{acceptErr(syscall.ECONNABORTED), true},
		{&net.OpError{Op: "accept", Err: os.ErrDeadlineExceeded}, true},
		{&net.OpError{Op: "accept", Err: net.ErrClosed}, false},
		{acceptErr(syscall.EBADF), false},
		{io.EOF, false},
	} {
		if got := retryAccept(tt.err); got != tt.want {
			t.Errorf("retryAccept(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestNextBackoff(t *testing.T) {
	var got []time.Duration
	for d := time.Duration(0); len(got) < 10; {
		d = nextBackoff(d)
		got = append(got, d)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoffs = %v, want %v ms", got, want)
		}
	}
}

func TestThrottle(t *testing.T) {
	th := throttle{every: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for _, tt := range []struct {
		at      time.Duration
		ok      bool
		skipped int
	}{{0, true, 0}, {time.Second, false, 0}, {9 * time.Second, false, 0}, {10 * time.Second, true, 2}, {11 * time.Second, false, 0}, {time.Minute, true, 1}} {
		ok, skipped := th.allow(t0.Add(tt.at))
		if ok != tt.ok || skipped != tt.skipped {
			t.Errorf("allow(+%v) = %v, %d; want %v, %d", tt.at, ok, skipped, tt.ok, tt.skipped)
		}
	}
}

// limitEnv is a limitListener on loopback TCP whose accepted connections
// arrive on accepted.
type limitEnv struct {
	l        *limitListener
	accepted chan net.Conn
}

func newLimitEnv(t *testing.T, total, perIP int, track bool) *limitEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newTestLogger()
	e := &limitEnv{accepted: make(chan net.Conn, 16)}
	e.l = newLimitListener(ln, newConnLimiter(total, perIP), log, "test", track, func(c net.Conn, why refusal) {
		fmt.Fprintf(c, "refused: %v\n", why)
	})
	go func() {
		for {
			c, err := e.l.Accept()
			if err != nil {
				return
			}
			e.accepted <- c
		}
	}()
	t.Cleanup(func() {
		e.l.Close()
		for {
			select {
			case c := <-e.accepted:
				c.Close()
			default:
				return
			}
		}
	})
	return e
}

// dial connects from the loopback address from and returns the connection
// and what the listener did with it: "" when it was admitted (the server's
// side is then returned too), else the refusal it wrote.
func (e *limitEnv) dial(t *testing.T, from string) (client, server net.Conn, refused string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", e.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	select {
	case s := <-e.accepted:
		return c, s, ""
	case r := <-got:
		return c, nil, r
	case <-time.After(10 * time.Second):
		t.Fatalf("connection from %s neither admitted nor refused", from)
		return nil, nil, ""
	}
}

func TestLimitListenerBounds(t *testing.T) {
	e := newLimitEnv(t, 3, 2, true)
	_, a1, r := e.dial(t, "127.0.0.2")
	if r != "" {
		t.Fatalf("first connection refused: %q", r)
	}
	if _, _, r := e.dial(t, "127.0.0.2"); r != "" {
		t.Fatalf("second connection refused: %q", r)
	}
	if _, _, r := e.dial(t, "127.0.0.2"); r != "refused: too many connections from one address\n" {
		t.Fatalf("third connection from one address: %q, want a per-IP refusal", r)
	}
	if _, _, r := e.dial(t, "127.0.0.3"); r != "" {
		t.Fatalf("connection from another address refused: %q", r)
	}
	if _, _, r := e.dial(t, "127.0.0.4"); r != "refused: too many connections\n" {
		t.Fatalf("fourth connection: %q, want a refusal over the total", r)
	}
	// Closing a connection gives its slot back, once.
	a1.Close()
	a1.Close()
	if _, _, r := e.dial(t, "127.0.0.4"); r != "" {
		t.Fatalf("connection after one closed refused: %q", r)
	}
	if _, _, r := e.dial(t, "127.0.0.4"); r != "refused: too many connections\n" {
		t.Fatalf("one close freed more than one slot: %q", r)
	}
	if total, fromIP := e.l.lim.counts(netip.MustParseAddr("127.0.0.2")); total != 3 || fromIP != 1 {
		t.Errorf("counts = %d total, %d from 127.0.0.2; want 3, 1", total, fromIP)
	}
}

func TestLimitListenerRefusalSurvivesAnEagerClient(t *testing.T) {
	e := newLimitEnv(t, 1, 0, true)
	if _, _, r := e.dial(t, "127.0.0.2"); r != "" {
		t.Fatalf("first connection refused: %q", r)
	}
	// A client that sends its request before it reads: the refusal must
	// still reach it, followed by an orderly close, not a reset.
	for i := range 20 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
		c, err := d.Dial("tcp", e.l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\nHost: kiln\r\n\r\n"))
		time.Sleep(5 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if string(b) != "refused: too many connections\n" || err != nil {
			t.Fatalf("eager client %d read %q, %v; want the refusal, then EOF", i, b, err)
		}
	}
}

func TestLimitListenerUntrackedConnsAreBare(t *testing.T) {
	e := newLimitEnv(t, 1, 0, false)
	_, s, r := e.dial(t, "127.0.0.2")
	if r != "" {
		t.Fatalf("refused: %q", r)
	}
	if _, ok := s.(*net.TCPConn); !ok {
		t.Fatalf("untracked listener returned %T, want the *net.TCPConn itself", s)
	}
	s.Close()
	if _, _, r := e.dial(t, "127.0.0.2"); r == "" {
		t.Fatal("closing an untracked connection released its slot; only release may")
	}
	e.l.lim.release(remoteIP(s))
	if _, _, r := e.dial(t, "127.0.0.2"); r != "" {
		t.Fatalf("refused after release: %q", r)
	}
}

func TestTrackedConnReadOnReady(t *testing.T) {
	e := newLimitEnv(t, 0, 0, true)
	c, s, _ := e.dial(t, "127.0.0.1")
	tc := s.(*trackedConn)
	if _, err := tc.SyscallConn(); err != nil {
		t.Fatalf("SyscallConn: %v", err)
	}
	pool := mem.DefaultBufferPool()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf, n, err := tc.ReadOnReady(64, pool)
	if err != nil || string((*buf)[:n]) != "hello" {
		t.Fatalf("ReadOnReady = %q, %v; want hello", *buf, err)
	}
	pool.Put(buf)
	// The read deadline holds while waiting.
	tc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := tc.ReadOnReady(64, pool); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadOnReady past the deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	tc.SetReadDeadline(time.Time{})
	c.Close()
	if _, _, err := tc.ReadOnReady(64, pool); err != io.EOF {
		t.Fatalf("ReadOnReady after the peer closed = %v, want io.EOF", err)
	}
}
