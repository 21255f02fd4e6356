package containerd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/containerd/daemon"
)

// Integration fixtures, set up by TestMain when containerd can run.
var (
	skipReason string // why integration tests skip; "" when they run
	testDir    string // short temp dir: daemon, runc root, driver state
	daemonAddr string // containerd socket
	rootFS     string // read-only root holding /probe
)

// testNamespace is the containerd namespace the tests use.
const testNamespace = "kilntest"

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ci := os.Getenv("CI") == "true"
	if _, err := exec.LookPath("containerd"); err != nil {
		skipReason = "containerd not installed"
	} else if os.Geteuid() != 0 {
		skipReason = "integration tests need root"
	}
	if skipReason != "" {
		if ci {
			fmt.Fprintf(os.Stderr, "CI=true and %s\n", skipReason)
			return 1
		}
		return m.Run()
	}
	dir, err := os.MkdirTemp("/tmp", "kt")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	testDir = dir
	if err := buildRootFS(filepath.Join(dir, "rootfs")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rootFS = filepath.Join(dir, "rootfs")

	// KILN_TEST_CONTAINERD names the socket of a running containerd to use
	// instead of starting a private one.
	if addr := os.Getenv("KILN_TEST_CONTAINERD"); addr != "" {
		daemonAddr = addr
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := daemon.Start(ctx, filepath.Join(dir, "d"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer d.Stop(ctx)
	daemonAddr = d.Address()
	return m.Run()
}

// buildRootFS builds testdata/probe statically into dir/probe and prepares
// dir as a root filesystem.
func buildRootFS(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := PrepareRootFS(dir); err != nil {
		return err
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build probe: %w", err)
	}
	cmd := exec.Command(gobin, "build", "-trimpath", "-o", filepath.Join(dir, "probe"), "./testdata/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build probe: %v\n%s", err, out)
	}
	return nil
}

// runtimeBinary returns the OCI runtime to pass to WithRuntimeBinary for
// name, skipping tb when it is not installed (failing with CI=true).
func runtimeBinary(tb testing.TB, name string) string {
	tb.Helper()
	if _, err := lookPathBin(name); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatal(err)
		}
		tb.Skip(err)
	}
	return name
}

func lookPathBin(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not on PATH", name)
}

// requireContainerd skips (or, with CI=true, TestMain already failed) when
// the integration fixtures are missing.
func requireContainerd(tb testing.TB) {
	tb.Helper()
	if skipReason != "" {
		tb.Skip(skipReason)
	}
}

// newDriver returns a Driver on the test daemon, closed at the end of tb.
func newDriver(tb testing.TB, opts ...Option) *Driver {
	tb.Helper()
	requireContainerd(tb)
	base := []Option{
		WithNamespace(testNamespace),
		WithRuncRoot(filepath.Join(testDir, "runc")),
		WithStateDir(filepath.Join(testDir, "state")),
	}
	d, err := New(context.Background(), daemonAddr, append(base, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// agentSocket is the host side of a container's SocketDir: a listener on
// agent.sock that the probe dials; lines holds the first line of each
// connection.
type agentSocket struct {
	dir   string
	l     net.Listener
	lines chan string
}

func newAgentSocket(tb testing.TB) *agentSocket {
	tb.Helper()
	dir, err := os.MkdirTemp("/tmp", "ks")
	if err != nil {
		tb.Fatal(err)
	}
	// The container user (65534) must reach and connect to the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		tb.Fatal(err)
	}
	a := &agentSocket{dir: dir, l: l, lines: make(chan string, 16)}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				line, _ := bufio.NewReader(c).ReadString('\n')
				a.lines <- strings.TrimSpace(line)
			}()
		}
	}()
	tb.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		os.RemoveAll(dir)
	})
	return a
}

// next returns the next line a container sent, or fails after timeout.
func (a *agentSocket) next(tb testing.TB, timeout time.Duration) string {
	tb.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line := <-a.lines:
		return line
	case <-t.C:
		tb.Fatalf("no connection on %s within %v", a.dir, timeout)
		return ""
	}
}

// outBuffer is a concurrency-safe writer that signals when marker appears.
type outBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	marker string
	seen   chan struct{}
	once   sync.Once
}

func newOutBuffer(marker string) *outBuffer {
	return &outBuffer{marker: marker, seen: make(chan struct{})}
}

func (o *outBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(p)
	if o.marker != "" && bytes.Contains(o.b.Bytes(), []byte(o.marker)) {
		o.once.Do(func() { close(o.seen) })
	}
	return len(p), nil
}

func (o *outBuffer) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// wait waits for the marker, failing after timeout.
func (o *outBuffer) wait(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-o.seen:
	case <-t.C:
		tb.Fatalf("output lacks %q after %v; got:\n%s", o.marker, timeout, o.String())
	}
}

// probeSpec returns a spec running the probe in mode.
func probeSpec(id string, a *agentSocket, mode string) pool.ContainerSpec {
	return pool.ContainerSpec{ID: id, Function: "probe", RootFS: rootFS, Args: []string{"/probe", mode}, SocketDir: a.dir}
}
