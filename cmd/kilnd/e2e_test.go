package main

// End-to-end tests: real kilnd and kiln binaries, a real containerd (started
// by kilnd itself), real containers. They skip only when containerd is
// truly absent or the tests do not run as root, and never when CI=true.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfx/kiln/agent/bundle"
)

var (
	binDir  string // kilnd, kiln and the probe function
	skipWhy string // non-empty: integration tests cannot run here
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if _, err := exec.LookPath("containerd"); err != nil {
		skipWhy = "containerd is not installed (make setup)"
	} else if os.Geteuid() != 0 {
		skipWhy = "integration tests need root"
	} else if os.Getenv("KILN_UNIT_ONLY") != "" {
		skipWhy = "KILN_UNIT_ONLY is set"
	}
	if skipWhy != "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "CI=true but integration tests cannot run:", skipWhy)
		return 1
	}
	if skipWhy == "" {
		dir, err := os.MkdirTemp("", "kiln-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		builds := [][]string{
			{"build", "-race", "-o", filepath.Join(dir, "kilnd"), "."},
			{"build", "-o", filepath.Join(dir, "kiln"), "../kiln"},
			{"build", "-o", filepath.Join(dir, "probe"), "./testdata/probe"},
			{"build", "-o", filepath.Join(dir, "kiln-executor"), "../kiln-executor"},
		}
		for _, args := range builds {
			cmd := exec.Command("go", args...)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
			if pkg := args[len(args)-1]; strings.Contains(pkg, "probe") || strings.Contains(pkg, "executor") {
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go %v: %v\n%s", args, err, out)
				return 1
			}
		}
	}
	code := m.Run()
	if shared != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
		os.RemoveAll(shared.dataDir)
	}
	return code
}

func requireIntegration(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// kilnd is a running kilnd process.
type kilnd struct {
	cmd     *exec.Cmd
	dataDir string
	url     string
	logs    *syncBuffer
	exited  chan struct{}
	err     error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortTempDir returns a temporary directory with a short path, so that the
// unix sockets under it fit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "ke")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// launch starts kilnd on dataDir and waits for its ready log line.
func launch(dataDir string, args ...string) (*kilnd, error) {
	return launchWrapped(nil, dataDir, args...)
}

// launchWrapped is launch with kilnd's command line appended to wrapper, a
// command that ends by exec'ing it (prlimit, for example), so that signals
// still reach kilnd.
func launchWrapped(wrapper []string, dataDir string, args ...string) (*kilnd, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	httpAddr := l.Addr().String()
	l.Close()
	args = append([]string{"--data-dir", dataDir, "--http", httpAddr, "--grpc", "127.0.0.1:0", "--log-level", "debug"}, args...)
	argv := append(append(append([]string(nil), wrapper...), filepath.Join(binDir, "kilnd")), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	pr, pw := io.Pipe()
	k := &kilnd{cmd: cmd, dataDir: dataDir, url: "http://" + httpAddr, logs: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = io.MultiWriter(pw, k.logs)
	cmd.Stdout = k.logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		k.err = cmd.Wait()
		pw.Close()
		close(k.exited)
	}()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		closed := false
		for sc.Scan() {
			if !closed && strings.Contains(sc.Text(), `"msg":"kilnd ready"`) {
				close(ready)
				closed = true
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case <-ready:
		return k, nil
	case <-k.exited:
		return nil, fmt.Errorf("kilnd exited before ready: %v\n%s", k.err, k.logs)
	case <-time.After(90 * time.Second):
		k.cmd.Process.Kill()
		return nil, fmt.Errorf("kilnd not ready after 90s\n%s", k.logs)
	}
}

// startKilnd starts a kilnd for one test; it is stopped with SIGTERM (and
// must exit 0) when the test ends.
func startKilnd(t *testing.T, dataDir string, args ...string) *kilnd {
	t.Helper()
	return startKilndWrapped(t, nil, dataDir, args...)
}

// startKilndWrapped is startKilnd through launchWrapped.
func startKilndWrapped(t *testing.T, wrapper []string, dataDir string, args ...string) *kilnd {
	t.Helper()
	requireIntegration(t)
	k, err := launchWrapped(wrapper, dataDir, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.stop(); err != nil {
			t.Error(err)
		}
	})
	return k
}

// stop sends SIGTERM and waits for kilnd to exit; a non-zero exit is an
// error.
func (k *kilnd) stop() error {
	select {
	case <-k.exited:
		return nil
	default:
	}
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
		if k.err != nil {
			return fmt.Errorf("kilnd exit after SIGTERM: %v\n%s", k.err, k.logs)
		}
		return nil
	case <-time.After(60 * time.Second):
		k.cmd.Process.Kill()
		return fmt.Errorf("kilnd did not exit within 60s of SIGTERM\n%s", k.logs)
	}
}

// kill SIGKILLs kilnd, leaving its containers and containerd behind.
func (k *kilnd) kill() {
	k.cmd.Process.Kill()
	<-k.exited
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request; one to the management API (/v1/) carries the admin
// token.
func (k *kilnd) do(t *testing.T, method, path string, body []byte) response {
	t.Helper()
	tok := ""
	if strings.HasPrefix(path, "/v1/") {
		tok = k.adminToken(t)
	}
	return k.doToken(t, method, path, tok, body)
}

// doToken sends a request with the bearer token tok ("" sends none).
func (k *kilnd) doToken(t *testing.T, method, path, tok string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, k.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

// adminToken returns the admin token kilnd made in its data dir.
func (k *kilnd) adminToken(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k.dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// deploy deploys spec as name. A "code" that is a host path (a string) is
// packed into a code archive with that file as the handler.
func (k *kilnd) deploy(t *testing.T, name string, spec map[string]any) {
	t.Helper()
	if r := k.tryDeploy(t, name, spec); r.status != 200 {
		t.Fatalf("deploy %s: %d %s", name, r.status, r.body)
	}
}

// tryDeploy is deploy that returns the answer, whatever it is.
func (k *kilnd) tryDeploy(t *testing.T, name string, spec map[string]any) response {
	t.Helper()
	if p, ok := spec["code"].(string); ok {
		spec = maps.Clone(spec)
		spec["code"] = packFile(t, p)
	}
	b, _ := json.Marshal(spec)
	return k.do(t, "PUT", "/v1/functions/"+name, b)
}

var packed sync.Map // host path → code archive

// packFile returns a code archive holding the file at path as the handler.
func packFile(t *testing.T, path string) []byte {
	t.Helper()
	if b, ok := packed.Load(path); ok {
		return b.([]byte)
	}
	b, err := bundle.PackBytes("", map[string]string{"handler": path}, 0)
	if err != nil {
		t.Fatal(err)
	}
	packed.Store(path, b)
	return b
}

func (k *kilnd) containers(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ctr", "--address", filepath.Join(k.dataDir, "containerd", "ctd.sock"), "-n", "kiln", "containers", "ls", "-q").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr containers ls: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

var (
	sharedOnce sync.Once
	shared     *kilnd
	sharedErr  error
)

// sharedKilnd returns one kilnd used by the tests that do not restart it; it
// is stopped when the test binary ends.
func sharedKilnd(t *testing.T) *kilnd {
	t.Helper()
	requireIntegration(t)
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("/tmp", "ks")
		if err != nil {
			sharedErr = err
			return
		}
		shared, sharedErr = launch(dir)
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}
