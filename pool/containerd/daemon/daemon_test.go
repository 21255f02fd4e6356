package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireContainerd skips the test when containerd is not installed or the
// test does not run as root, unless CI=true, where it fails instead.
func requireContainerd(t *testing.T) {
	t.Helper()
	reason := ""
	if _, err := exec.LookPath("containerd"); err != nil {
		reason = "containerd not installed"
	} else if os.Geteuid() != 0 {
		reason = "containerd tests need root"
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(reason + " (CI=true)")
	}
	t.Skip(reason)
}

// shortDir returns a temp dir with a short path, so sockets fit.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestSocketPathTooLong(t *testing.T) {
	dir := "/tmp/" + strings.Repeat("d", 100)
	_, err := Start(t.Context(), dir)
	if !errors.Is(err, ErrSocketPathTooLong) {
		t.Fatalf("Start(%d-byte dir) = %v, want ErrSocketPathTooLong", len(dir), err)
	}
	if _, statErr := os.Stat(dir); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("Start created %s despite the error", dir)
	}
}

func TestMissingBinary(t *testing.T) {
	_, err := Start(t.Context(), shortDir(t), WithBinary("/nonexistent/containerd"))
	if err == nil {
		t.Fatal("Start with a missing binary succeeded")
	}
}

func TestConfig(t *testing.T) {
	c := config("/tmp/kd1", "info")
	for _, want := range []string{
		`root = "/tmp/kd1/root"`,
		`state = "/tmp/kd1/state"`,
		`address = "/tmp/kd1/ctd.sock"`,
		`address = "/tmp/kd1/ctd.sock.ttrpc"`,
		`address = "/tmp/kd1/debug.sock"`,
		`disabled_plugins = ["io.containerd.grpc.v1.cri"]`,
		"[metrics]\n  address = \"\"",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("config lacks %q:\n%s", want, c)
		}
	}
}

// TestStartStop: Start, the address dials, Stop, Stop again; then a daemon
// killed with SIGKILL (stale sockets and pid file left behind) does not
// prevent a second Start in the same dir.
func TestStartStop(t *testing.T) {
	requireContainerd(t)
	dir := shortDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	c, err := Start(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Address(), filepath.Join(dir, grpcName); got != want {
		t.Errorf("Address() = %q, want %q", got, want)
	}
	conn, err := net.Dial("unix", c.Address())
	if err != nil {
		t.Fatalf("dial %s: %v", c.Address(), err)
	}
	conn.Close()
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-c.Exited():
	default:
		t.Fatal("Exited not closed after Stop")
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	// A daemon that dies by SIGKILL leaves its sockets behind.
	c2, err := Start(ctx, dir)
	if err != nil {
		t.Fatalf("restart after Stop: %v", err)
	}
	if err := syscall.Kill(c2.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c2.Exited():
	case <-ctx.Done():
		t.Fatal("Exited not closed after SIGKILL")
	}
	if c2.Err() == nil {
		t.Error("Err() = nil after SIGKILL")
	}
	if _, err := os.Stat(c2.Address()); err != nil {
		t.Logf("note: socket gone after SIGKILL: %v", err)
	}
	c3, err := Start(ctx, dir)
	if err != nil {
		t.Fatalf("Start after SIGKILL: %v", err)
	}
	defer c3.Stop(ctx)
	conn, err = net.Dial("unix", c3.Address())
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	conn.Close()
}

// TestStaleDaemon: an earlier kilnd died without stopping its daemon; the
// next Start in the same dir stops the old daemon and starts a new one.
func TestStaleDaemon(t *testing.T) {
	requireContainerd(t)
	dir := shortDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	old, err := Start(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Stop(ctx) // in case the test fails early
	c, err := Start(ctx, dir)
	if err != nil {
		t.Fatalf("Start over a running stale daemon: %v", err)
	}
	defer c.Stop(ctx)
	select {
	case <-old.Exited():
	case <-ctx.Done():
		t.Fatal("stale daemon still running")
	}
	if c.Pid() == old.Pid() {
		t.Fatal("same pid")
	}
}

// TestInUse: a foreign listener on the socket is not taken over.
func TestInUse(t *testing.T) {
	requireContainerd(t)
	dir := shortDir(t)
	l, err := net.Listen("unix", filepath.Join(dir, grpcName))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Start(t.Context(), dir)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("Start = %v, want ErrInUse", err)
	}
}

// TestStartFailureQuotesLog: a daemon that exits at once yields an error with
// the tail of its log, promptly.
func TestStartFailureQuotesLog(t *testing.T) {
	dir := shortDir(t)
	fake := filepath.Join(dir, "fake-containerd")
	script := "#!/bin/sh\necho 'fake daemon: boom' >&2\nexit 3\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := Start(t.Context(), dir, WithBinary(fake))
	if err == nil {
		t.Fatal("Start of a failing daemon succeeded")
	}
	if !strings.Contains(err.Error(), "fake daemon: boom") {
		t.Errorf("error lacks the log tail: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Start took %v to notice the daemon exited", d)
	}
}

func TestStartHonoursContext(t *testing.T) {
	dir := shortDir(t)
	fake := filepath.Join(dir, "fake-containerd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := Start(ctx, dir, WithBinary(fake), WithKillWait(2*time.Second))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start = %v, want DeadlineExceeded", err)
	}
}

// TestHideCgroup2: on a hybrid cgroup host the daemon's mount namespace has
// no cgroup2 mount by default, the host's still has it, and
// WithHideCgroup2(false) keeps the host's view.
func TestHideCgroup2(t *testing.T) {
	requireContainerd(t)
	if !isHybrid(cgroupRoot) {
		t.Skip("not a hybrid cgroup host")
	}
	unified := filepath.Join(cgroupRoot, "unified")
	for _, hide := range []bool{true, false} {
		t.Run(fmt.Sprintf("hide=%v", hide), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			c, err := Start(ctx, shortDir(t), WithHideCgroup2(hide))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Stop(ctx)
			if got := hasMount(t, c.Pid(), unified); got == hide {
				t.Errorf("daemon sees %s: %v, want %v", unified, got, !hide)
			}
			if !hasMount(t, os.Getpid(), unified) {
				t.Errorf("host lost %s", unified)
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c.Pid()))
			if arg0, _, _ := strings.Cut(string(b), "\x00"); err != nil || filepath.Base(arg0) != "containerd" {
				t.Errorf("daemon cmdline %q, %v", b, err)
			}
		})
	}
}

// hasMount reports whether process pid sees a mount at path.
func hasMount(t *testing.T, pid int, path string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
