package main

// Slow and numerous clients against a real kilnd whose descriptor limit is
// far below the connections they open: slowloris (headers sent a byte at a
// time, handshakes never finished) and connection exhaustion (idle
// kept-alive connections). kilnd must keep serving others, cut the slow
// connections at the header timeout, and never exit.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

const (
	// slowNofile is kilnd's descriptor limit, soft and hard.
	slowNofile = 1024
	// slowMaxConns is what kilnd makes of --max-conns 4096 under it.
	slowMaxConns = slowNofile / 4
	slowPerIP    = 64
	// slowHeaderTimeout is kilnd's --header-timeout.
	slowHeaderTimeout = 2 * time.Second
	// slowAttackers is how many connections the attacker tries to hold at
	// once: more than kilnd has descriptors.
	slowAttackers = slowNofile + 100
	// slowSlack is how long past the header timeout a slow connection may
	// take to be seen closed.
	slowSlack = 3 * time.Second
)

// startLimitedKilnd starts kilnd with a descriptor limit of slowNofile
// (lowered with prlimit before kilnd starts: Go raises the soft limit to
// the hard one), asking for more connections than that allows.
func startLimitedKilnd(t *testing.T) *kilnd {
	t.Helper()
	requireIntegration(t)
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Fatalf("these tests need prlimit (util-linux): %v", err)
	}
	// The attackers' ends of the connections are this process's.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if need := uint64(4 * slowAttackers); rl.Cur < need {
		rl.Cur, rl.Max = need, max(rl.Max, need)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatalf("raise the test's descriptor limit to %d: %v", need, err)
		}
	}
	n := strconv.Itoa(slowNofile)
	k := startKilndWrapped(t, []string{"prlimit", "--nofile=" + n + ":" + n, "--"}, shortTempDir(t),
		"--max-conns", "4096", "--max-conns-per-ip", strconv.Itoa(slowPerIP), "--header-timeout", slowHeaderTimeout.String())
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", k.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`Max open files\s+(\d+)\s+(\d+)`).FindSubmatch(limits); m == nil || string(m[1]) != n || string(m[2]) != n {
		t.Fatalf("kilnd's descriptor limit is not %s:\n%s", n, limits)
	}
	if want := fmt.Sprintf(`"max_conns":%d`, slowMaxConns); !strings.Contains(k.logs.String(), want) {
		t.Fatalf("--max-conns 4096 under %d descriptors: want %s in the ready line\n%s", slowNofile, want, k.logs)
	}
	return k
}

// attack is a slowloris attacker: workers that each keep a connection open
// from one source address by sending the start of a request and then,
// every 500 ms, one more byte of it, never finishing; when the server
// closes the connection, a worker waits 500 ms and dials again, until
// stopped.
type attack struct {
	addr, src   string
	hello, more []byte // sent at once, and every 500 ms (nil: nothing)
	stop        chan struct{}
	wg          sync.WaitGroup

	mu     sync.Mutex
	closed []slowConn // guarded by mu: connections the server closed
}

// slowConn is one connection the server closed.
type slowConn struct {
	opened, closed time.Time
	got            string // what the server sent
}

func startAttack(addr, src string, workers int, hello, more string) *attack {
	a := &attack{addr: addr, src: src, hello: []byte(hello), stop: make(chan struct{})}
	if more != "" {
		a.more = []byte(more)
	}
	a.wg.Add(workers)
	for range workers {
		go a.worker()
	}
	return a
}

func (a *attack) worker() {
	defer a.wg.Done()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(a.src)}, Timeout: 10 * time.Second}
	for {
		select {
		case <-a.stop:
			return
		default:
		}
		if c, err := d.Dial("tcp", a.addr); err == nil {
			a.hold(c)
		}
		select {
		case <-a.stop:
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// hold keeps c going until the server closes it, and records it.
func (a *attack) hold(c net.Conn) {
	defer c.Close()
	sc := slowConn{opened: time.Now()}
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	c.Write(a.hello)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case sc.got = <-got:
			sc.closed = time.Now()
			a.mu.Lock()
			a.closed = append(a.closed, sc)
			a.mu.Unlock()
			return
		case <-tick.C:
			if a.more != nil {
				c.Write(a.more)
			}
		}
	}
}

// closedCount returns how many connections the server has closed.
func (a *attack) closedCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.closed)
}

// end stops the workers dialing and waits until the server closed every
// connection they hold, which it must do within the header timeout; it
// returns every connection the server closed.
func (a *attack) end(t *testing.T) []slowConn {
	t.Helper()
	close(a.stop)
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(slowHeaderTimeout + slowSlack + 5*time.Second):
		t.Fatalf("slow connections still open %v after the attack ended (header timeout %v)", slowHeaderTimeout+slowSlack+5*time.Second, slowHeaderTimeout)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// alive fails the test if kilnd has exited.
func alive(t *testing.T, k *kilnd) {
	t.Helper()
	select {
	case <-k.exited:
		t.Fatalf("kilnd exited: %v\n%s", k.err, k.logs)
	default:
	}
}

// freshClient makes every request on a new connection from 127.0.0.1.
var freshClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}

// fresh sends method path with body on a new connection and returns the
// status and body.
func (k *kilnd) fresh(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	status, b, err := k.tryFresh(method, path, body)
	if err != nil {
		t.Fatalf("%s %s on a fresh connection: %v", method, path, err)
	}
	return status, b
}

// tryFresh is fresh returning a failed request's error.
func (k *kilnd) tryFresh(method, path, body string) (int, string, error) {
	req, err := http.NewRequest(method, k.url+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := freshClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// refusal opens a connection from 127.0.0.1, sends nothing, and returns
// what kilnd sent before closing it: its refusal, when it refuses
// connections.
func refusal(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("kilnd neither refused nor closed a connection: %v (read %q)", err, b)
	}
	return string(b)
}

func TestSlowlorisHTTP(t *testing.T) {
	k := startLimitedKilnd(t)
	k.deploy(t, "probe-slowloris", probeSpec(nil))
	addr := strings.TrimPrefix(k.url, "http://")

	// More slow connections from one address than kilnd has descriptors.
	a := startAttack(addr, "127.0.0.2", slowAttackers,
		"POST /invoke/probe-slowloris HTTP/1.1\r\nHost: kiln\r\nX-Slow: ", "x")
	waitFor(t, "kilnd to refuse the connections over its per-IP bound", func() bool {
		return a.closedCount() >= slowAttackers-slowPerIP
	})

	// Meanwhile others are served, on fresh connections, a cold start
	// included (which needs descriptors: container sockets, cgroup files).
	alive(t, k)
	if status, body := k.fresh(t, "GET", "/healthz", ""); status != 200 || body != "ok\n" {
		t.Fatalf("GET /healthz under attack = %d %q", status, body)
	}
	if status, body := k.fresh(t, "POST", "/invoke/probe-slowloris", "under attack"); status != 202 || body != "probe:under attack" {
		t.Fatalf("invoke under attack = %d %q\n%s", status, body, k.logs)
	}

	// The slow connections kilnd admitted are cut at the header timeout.
	conns := a.end(t)
	alive(t, k)
	var cut, refused int
	for _, c := range conns {
		if !strings.HasPrefix(c.got, "HTTP/1.1 408 ") {
			refused++
			continue
		}
		cut++
		if took := c.closed.Sub(c.opened); took > slowHeaderTimeout+slowSlack {
			t.Errorf("a slow connection was cut after %v, header timeout %v", took, slowHeaderTimeout)
		}
	}
	t.Logf("%d slow connections closed by kilnd: %d cut at the header timeout, %d refused at once", len(conns), cut, refused)
	if cut == 0 || refused == 0 {
		t.Errorf("of %d slow connections, %d cut at the header timeout and %d refused; want some of each", len(conns), cut, refused)
	}
	if logs := k.logs.String(); !strings.Contains(logs, "too many connections from one address") {
		t.Errorf("no log line about refused connections\n%s", logs)
	}

	// Connection exhaustion: idle kept-alive connections from other
	// addresses fill kilnd's total bound; a new connection is then refused
	// at once, and served once one of them closes.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	full := false
	for i := 0; i < slowMaxConns+slowPerIP && !full; i++ {
		src := fmt.Sprintf("127.0.0.%d", 3+i/slowPerIP)
		c, status := keptAlive(t, src, addr)
		switch status {
		case 200:
			idle = append(idle, c)
		case 503:
			full = true
		default:
			t.Fatalf("idle connection %d from %s: status %d", i, src, status)
		}
	}
	if !full || len(idle) < slowMaxConns-2 {
		t.Fatalf("%d idle connections admitted, full=%v; want kilnd to refuse the one past %d", len(idle), full, slowMaxConns)
	}
	if got := refusal(t, addr); !strings.HasPrefix(got, "HTTP/1.1 503 ") || !strings.Contains(got, "too many connections") {
		t.Fatalf("a new connection with every one taken got %q, want 503 at once", got)
	}
	idle[0].Close()
	waitFor(t, "room for a new connection after an idle one closed", func() bool {
		status, _, _ := k.tryFresh("GET", "/healthz", "")
		return status == 200
	})
	alive(t, k)
}

// keptAlive opens a connection from src, sends GET /healthz on it and
// returns it, kept alive, with the answer's status.
func keptAlive(t *testing.T, src, addr string) (net.Conn, int) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET /healthz from %s: %v", src, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Time{})
	return c, resp.StatusCode
}

func TestSlowlorisGRPC(t *testing.T) {
	k := startLimitedKilnd(t)
	k.deploy(t, "probe-slowloris-grpc", probeSpec(nil))
	grpcAddr := k.grpcAddr(t)

	// Connections that start the HTTP/2 preface and never finish it.
	a := startAttack(grpcAddr, "127.0.0.2", slowAttackers, "PRI * HTTP/2.0\r\n", "")
	waitFor(t, "kilnd to refuse the connections over its per-IP bound", func() bool {
		return a.closedCount() >= slowAttackers-slowPerIP
	})

	// A new client is served meanwhile.
	alive(t, k)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := kilnv1.NewInvokerClient(conn).Invoke(ctx, &kilnv1.InvokeRequest{Function: "probe-slowloris-grpc", Body: []byte("under attack")})
	if err != nil || resp.Status != 202 || string(resp.Body) != "probe:under attack" {
		t.Fatalf("gRPC invoke under attack = %v, %v\n%s", resp, err, k.logs)
	}

	// Every handshake left unfinished is cut at the handshake timeout.
	conns := a.end(t)
	alive(t, k)
	t.Logf("%d connections without a handshake closed by kilnd", len(conns))
	for _, c := range conns {
		if took := c.closed.Sub(c.opened); took > slowHeaderTimeout+slowSlack {
			t.Errorf("a connection without a handshake was closed after %v, handshake timeout %v", took, slowHeaderTimeout)
			break
		}
	}
	if logs := k.logs.String(); !strings.Contains(logs, `"listener":"grpc"`) || !strings.Contains(logs, "too many connections from one address") {
		t.Errorf("no log line about refused gRPC connections\n%s", logs)
	}
}
