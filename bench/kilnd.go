package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/agent/bundle"
	"github.com/kilnfx/kiln/api/client"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Kilnd is a kilnd process the harness started, with its own data dir and
// its own containerd.
type Kilnd struct {
	cmd     *exec.Cmd
	DataDir string
	// Addr and GRPCAddr are the HTTP and gRPC API's host:port.
	Addr     string
	GRPCAddr string
	// Client is an HTTP API client of it, for management.
	Client  *client.Client
	mgmt    *fasthttp.HostClient
	token   string // the admin token, for the management API
	exited  chan struct{}
	logPath string
	// KeepLog, when set, is where Stop copies kilnd's log before removing
	// the data dir.
	KeepLog string

	mu     sync.Mutex
	events map[string]int // log messages seen, by msg
	notify chan struct{}  // closed and replaced on every counted message
}

// watched are the log messages Kilnd counts (see WaitLog).
var watched = map[string]bool{
	"kilnd ready":     true,
	"stem cell ready": true,
	"container ready": true,
}

// StartKilnd starts the kilnd binary at bin with a fresh data dir under /tmp
// (and so its own containerd), at log level debug, with args added, and
// waits for it to be ready.
func StartKilnd(ctx context.Context, bin string, args ...string) (*Kilnd, error) {
	dir, err := os.MkdirTemp("/tmp", "kb")
	if err != nil {
		return nil, err
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "kilnd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args = append([]string{"--data-dir", dir, "--http", addr, "--grpc", "127.0.0.1:0", "--log-level", "debug"}, args...)
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(pw, logf)
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kilnd: %w", err)
	}
	k := &Kilnd{
		cmd: cmd, DataDir: dir, Addr: addr, exited: make(chan struct{}), logPath: logPath,
		events: make(map[string]int), notify: make(chan struct{}),
		mgmt: NewHostClient(addr, 4),
	}
	go func() { _ = cmd.Wait(); pw.Close(); logf.Close(); close(k.exited) }()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				GRPC string `json:"grpc"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil || !watched[line.Msg] {
				continue
			}
			if line.Msg == "kilnd ready" {
				ready <- line.GRPC
			}
			k.mu.Lock()
			k.events[line.Msg]++
			close(k.notify)
			k.notify = make(chan struct{})
			k.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case k.GRPCAddr = <-ready:
	case <-k.exited:
		b, _ := os.ReadFile(logPath)
		os.RemoveAll(dir)
		return nil, fmt.Errorf("kilnd exited before ready:\n%s", tail(b, 4096))
	case <-time.After(90 * time.Second):
		k.Stop()
		return nil, fmt.Errorf("kilnd not ready after 90s")
	case <-ctx.Done():
		k.Stop()
		return nil, ctx.Err()
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		k.Stop()
		return nil, fmt.Errorf("admin token: %w", err)
	}
	k.token = strings.TrimSpace(string(tok))
	k.Client, err = client.New("http://"+addr, client.WithToken(k.token))
	if err != nil {
		k.Stop()
		return nil, err
	}
	return k, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Deploy deploys the built function binary code (a host path) as name with
// spec (nil: the defaults). It sets spec's runtime and code archive.
func (k *Kilnd) Deploy(ctx context.Context, name, code string, spec *kilnv1.FunctionSpec) error {
	if spec == nil {
		spec = &kilnv1.FunctionSpec{}
	}
	archive, err := bundle.PackBytes("", map[string]string{"handler": code}, 0)
	if err != nil {
		return err
	}
	spec.Runtime, spec.Code = "go", archive
	_, err = k.Client.Deploy(ctx, name, spec)
	return err
}

// Containers lists the containers of function name with their states.
func (k *Kilnd) Containers(ctx context.Context, name string) ([]*kilnv1.Container, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + k.Addr + "/v1/functions/" + name + "/containers")
	req.Header.Set("Authorization", "Bearer "+k.token)
	if err := k.mgmt.DoTimeout(req, resp, 30*time.Second); err != nil {
		return nil, err
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return nil, fmt.Errorf("containers of %s: status %d: %.200s", name, resp.StatusCode(), resp.Body())
	}
	var list kilnv1.ContainerList
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(resp.Body(), &list); err != nil {
		return nil, fmt.Errorf("containers of %s: %w", name, err)
	}
	return list.Containers, nil
}

// WaitContainers polls the containers of function name, every poll, until
// ok says yes or timeout passes; it returns the last listing.
func (k *Kilnd) WaitContainers(ctx context.Context, name string, poll, timeout time.Duration, ok func([]*kilnv1.Container) bool) ([]*kilnv1.Container, error) {
	deadline := time.Now().Add(timeout)
	for {
		cs, err := k.Containers(ctx, name)
		if err != nil {
			return nil, err
		}
		if ok(cs) {
			return cs, nil
		}
		if time.Now().After(deadline) {
			return cs, fmt.Errorf("containers of %s: still %s after %v", name, states(cs), timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-k.exited:
			return nil, fmt.Errorf("kilnd exited (log %s)", k.logPath)
		case <-time.After(poll):
		}
	}
}

// AllFrozen reports whether there are at least n containers and every one
// is frozen.
func AllFrozen(n int) func([]*kilnv1.Container) bool {
	return func(cs []*kilnv1.Container) bool {
		if len(cs) < n {
			return false
		}
		for _, c := range cs {
			if c.State != "frozen" {
				return false
			}
		}
		return true
	}
}

func states(cs []*kilnv1.Container) string {
	count := map[string]int{}
	for _, c := range cs {
		count[c.State]++
	}
	return fmt.Sprint(count)
}

// Seen returns how many times kilnd logged msg (one of the watched ones).
func (k *Kilnd) Seen(msg string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.events[msg]
}

// WaitLog waits until kilnd logged msg at least n times in all.
func (k *Kilnd) WaitLog(ctx context.Context, msg string, n int, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		k.mu.Lock()
		got, ch := k.events[msg], k.notify
		k.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("kilnd logged %q %d times in %v, want %d", msg, got, timeout, n)
		case <-k.exited:
			return fmt.Errorf("kilnd exited (log %s)", k.logPath)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Stop stops kilnd with SIGTERM, reaps what it left behind (see Reap) and
// removes its data dir. It returns the number of containers reaped: more
// than 0 means kilnd's shutdown did not stop every container.
func (k *Kilnd) Stop() int {
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(90 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
	n := k.Reap()
	if k.KeepLog != "" {
		if b, err := os.ReadFile(k.logPath); err == nil && os.MkdirAll(filepath.Dir(k.KeepLog), 0o755) == nil {
			_ = os.WriteFile(k.KeepLog, b, 0o644)
		}
	}
	_ = os.RemoveAll(k.DataDir)
	return n
}

// RSS returns kilnd's resident memory in bytes (VmRSS), or 0 when it cannot
// be read.
func (k *Kilnd) RSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", k.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// Shims returns how many containerd shims of this kilnd's containerd are
// running: one per container that is not yet fully stopped.
func (k *Kilnd) Shims() int {
	n := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("containerd-shim")) && bytes.Contains(b, []byte(k.DataDir+"/")) {
			n++
		}
	}
	return n
}

// Reap kills what this kilnd left running after it exited: containerd
// shims whose -address is inside its data dir (with the processes left in
// their containers' cgroups, thawed first; those cgroups are removed), and
// any other process naming its data dir (its containerd, when kilnd was
// killed). It returns how many shims it found.
func (k *Kilnd) Reap() int {
	type shim struct {
		pid       int
		namespace string
		id        string
	}
	var (
		shims  []shim
		others []int
	)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(k.DataDir+"/")) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			others = append(others, pid)
			continue
		}
		sh := shim{pid: pid}
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-namespace":
				sh.namespace = args[i+1]
			case "-id":
				sh.id = args[i+1]
			}
		}
		shims = append(shims, sh)
	}
	for _, pid := range others {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, sh := range shims {
		if sh.namespace != "" && sh.id != "" && !strings.ContainsAny(sh.namespace+sh.id, "/") {
			cg := filepath.Join(sh.namespace, sh.id)
			_ = os.WriteFile(filepath.Join("/sys/fs/cgroup/freezer", cg, "freezer.state"), []byte("THAWED"), 0)
			if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/freezer", cg, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
		}
		if sh.pid > 0 {
			_ = syscall.Kill(sh.pid, syscall.SIGKILL)
		}
	}
	if len(shims) > 0 {
		time.Sleep(200 * time.Millisecond)
		for _, sh := range shims {
			if sh.namespace == "" || sh.id == "" || strings.ContainsAny(sh.namespace+sh.id, "/") {
				continue
			}
			dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", sh.namespace, sh.id))
			for _, d := range dirs {
				_ = os.Remove(d)
			}
		}
	}
	return len(shims)
}

// KilndHelp returns the flag help kilnd prints.
func KilndHelp(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	return string(out)
}

// HasFlag reports whether kilnd's help lists the flag name (without dashes).
func HasFlag(help, name string) bool {
	for _, line := range strings.Split(help, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == "-"+name || f[0] == "--"+name) {
			return true
		}
	}
	return false
}

// BuildFunction builds the Go function or program in the package directory
// pkg (a path inside this module, such as ./bench/functions/echo or
// ./bench/cmd/kiln-floor) as a static binary in dir and returns its path.
func BuildFunction(ctx context.Context, pkg, dir string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", pkg, err, b)
	}
	return filepath.Abs(out)
}
