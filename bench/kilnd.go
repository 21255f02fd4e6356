package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/api/client"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Kilnd is a kilnd process the harness started, with its own data dir and
// its own containerd.
type Kilnd struct {
	cmd     *exec.Cmd
	DataDir string
	Addr    string // HTTP host:port
	Client  *client.Client
	exited  chan struct{}
	logPath string
}

// StartKilnd starts the kilnd binary at bin with a fresh data dir under /tmp
// and waits for it to be ready.
func StartKilnd(ctx context.Context, bin string, args ...string) (*Kilnd, error) {
	dir, err := os.MkdirTemp("/tmp", "kb")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	logPath := filepath.Join(dir, "kilnd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args = append([]string{"--data-dir", dir, "--http", addr, "--grpc", "127.0.0.1:0"}, args...)
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(pw, logf)
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kilnd: %w", err)
	}
	k := &Kilnd{cmd: cmd, DataDir: dir, Addr: addr, exited: make(chan struct{}), logPath: logPath}
	go func() { _ = cmd.Wait(); pw.Close(); logf.Close(); close(k.exited) }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), `"msg":"kilnd ready"`) {
				close(ready)
				once = true
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case <-ready:
	case <-k.exited:
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("kilnd exited before ready:\n%s", b)
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("kilnd not ready after 90s (log: %s)", logPath)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return nil, ctx.Err()
	}
	k.Client, err = client.New("http://" + addr)
	if err != nil {
		k.Stop()
		return nil, err
	}
	return k, nil
}

// Deploy deploys the built function binary code as name.
func (k *Kilnd) Deploy(ctx context.Context, name, code string, spec *kilnv1.FunctionSpec) error {
	if spec == nil {
		spec = &kilnv1.FunctionSpec{}
	}
	spec.Runtime, spec.Code = "go", code
	_, err := k.Client.Deploy(ctx, name, spec)
	return err
}

// Stop stops kilnd with SIGTERM and removes its data dir.
func (k *Kilnd) Stop() {
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(60 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
	_ = os.RemoveAll(k.DataDir)
}

// BuildFunction builds the Go function in the package directory pkg (a
// path inside this module, such as ./bench/functions/echo) as a static
// binary in dir and returns its path.
func BuildFunction(ctx context.Context, pkg, dir string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", pkg, err, b)
	}
	return filepath.Abs(out)
}
