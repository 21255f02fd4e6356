package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/agent/bundle"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// fakeAgent is an in-memory kiln HTTP API.
type fakeAgent struct {
	mu       sync.Mutex
	fns      map[string]*kilnv1.Function
	requests int
	// The last invocation seen.
	invokeHeader http.Header
	invokeBody   []byte
}

func newFakeAgent(t *testing.T, fns ...*kilnv1.Function) (*fakeAgent, string) {
	t.Helper()
	f := &fakeAgent{fns: map[string]*kilnv1.Function{}}
	for _, fn := range fns {
		f.fns[fn.Name] = fn
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true}

func writeMsg(w http.ResponseWriter, status int, m proto.Message) {
	b, _ := jsonOpts.Marshal(m)
	w.Header().Set("Content-Type", "application/json")
	if e, ok := m.(*kilnv1.Error); ok {
		w.Header().Set("X-Kiln-Error", e.Class)
	}
	w.WriteHeader(status)
	w.Write(b)
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	body, _ := io.ReadAll(r.Body)
	notFound := func(name string) {
		writeMsg(w, http.StatusNotFound, &kilnv1.Error{Error: "function " + name + " not found", Class: "not_found"})
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/functions":
		list := &kilnv1.FunctionList{}
		for _, fn := range f.fns {
			list.Functions = append(list.Functions, fn)
		}
		writeMsg(w, http.StatusOK, list)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/functions/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/functions/")
		spec := new(kilnv1.FunctionSpec)
		if err := protojson.Unmarshal(body, spec); err != nil {
			writeMsg(w, http.StatusBadRequest, &kilnv1.Error{Error: err.Error(), Class: "invalid_argument"})
			return
		}
		fn := &kilnv1.Function{Name: name, Spec: spec, Revision: "rev-1", Updated: timestamppb.Now()}
		f.fns[name] = fn
		writeMsg(w, http.StatusOK, fn)
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v1/functions/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/functions/")
		if _, ok := f.fns[name]; !ok {
			notFound(name)
			return
		}
		delete(f.fns, name)
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/invoke/"):
		name := strings.TrimPrefix(r.URL.Path, "/invoke/")
		f.invokeHeader, f.invokeBody = r.Header.Clone(), body
		switch name {
		case "hello":
			w.Header().Set("X-Handler", "hello")
			w.Write(append([]byte("Hello, "), body...))
		case "fails":
			w.Header().Set("X-Kiln-Error", "function_error")
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte("handler error: boom"))
		case "teapot":
			w.WriteHeader(http.StatusTeapot)
			w.Write([]byte("I'm a teapot"))
		case "busy":
			writeMsg(w, http.StatusServiceUnavailable, &kilnv1.Error{Error: "no container available", Class: "unavailable"})
		default:
			notFound(name)
		}
	default:
		http.NotFound(w, r)
	}
}

type result struct {
	code           int
	stdout, stderr string
}

// kiln runs the command line with env as the whole environment.
func kiln(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := &cli{
		stdin:  strings.NewReader(stdin),
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return env[k] },
	}
	code := run(t.Context(), args, c)
	return result{code, stdout.String(), stderr.String()}
}

func agentEnv(url string) map[string]string { return map[string]string{envAgent: url} }

func TestList(t *testing.T) {
	updated := timestamppb.New(time.Date(2026, 11, 2, 10, 30, 0, 0, time.UTC))
	_, url := newFakeAgent(t,
		&kilnv1.Function{Name: "world", Revision: "r2", Updated: updated,
			Spec: &kilnv1.FunctionSpec{Runtime: "go", MemoryMb: 256, Timeout: durationpb.New(90 * time.Second)}},
		&kilnv1.Function{Name: "hello", Revision: "r1", Updated: updated,
			Spec: &kilnv1.FunctionSpec{Runtime: "go", MemoryMb: 128, Timeout: durationpb.New(30 * time.Second)}},
		&kilnv1.Function{Name: "bare"},
	)
	r := kiln(t, agentEnv(url), "", "list")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	want := `NAME   RUNTIME  REVISION  MEMORY  TIMEOUT  UPDATED
bare   -        -         -       -        -
hello  go       r1        128MiB  30s      2026-11-02T10:30:00Z
world  go       r2        256MiB  1m30s    2026-11-02T10:30:00Z
`
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
}

func TestListEmpty(t *testing.T) {
	_, url := newFakeAgent(t)
	r := kiln(t, agentEnv(url), "", "ls")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "NAME  RUNTIME  REVISION  MEMORY  TIMEOUT  UPDATED" {
		t.Fatalf("%+v", r)
	}
}

func TestRm(t *testing.T) {
	agent, url := newFakeAgent(t, &kilnv1.Function{Name: "hello"}, &kilnv1.Function{Name: "world"})
	env := agentEnv(url)

	r := kiln(t, env, "", "rm", "hello")
	if r.code != 0 || r.stdout != "hello\n" || r.stderr != "" {
		t.Fatalf("rm hello: %+v", r)
	}
	agent.mu.Lock()
	_, ok := agent.fns["hello"]
	agent.mu.Unlock()
	if ok {
		t.Error("hello not deleted")
	}

	r = kiln(t, env, "", "rm", "hello")
	if r.code != 1 || !strings.Contains(r.stderr, "rm hello: function hello not found (not_found, HTTP 404)") {
		t.Fatalf("rm of a missing function: %+v", r)
	}

	// One failure does not stop the others, but fails the command.
	r = kiln(t, env, "", "rm", "nope", "world")
	if r.code != 1 || r.stdout != "world\n" || !strings.Contains(r.stderr, "rm nope:") {
		t.Fatalf("rm nope world: %+v", r)
	}

	r = kiln(t, env, "", "rm", "Bad_Name")
	if r.code != 1 || !strings.Contains(r.stderr, "invalid function name") {
		t.Fatalf("rm of an invalid name: %+v", r)
	}
}

func TestInvoke(t *testing.T) {
	agent, url := newFakeAgent(t)
	env := agentEnv(url)

	tests := []struct {
		name       string
		stdin      string
		args       []string
		code       int
		stdout     string
		stderr     string // substring
		wantBody   string
		wantHeader map[string]string
	}{
		{name: "data", args: []string{"invoke", "hello", "-d", "world"}, stdout: "Hello, world", wantBody: "world"},
		{name: "stdin", stdin: "from stdin\n", args: []string{"invoke", "hello"}, stdout: "Hello, from stdin\n", wantBody: "from stdin\n"},
		{name: "data wins over stdin", stdin: "ignored", args: []string{"invoke", "hello", "--data", ""}, stdout: "Hello, ", wantBody: ""},
		{
			name:       "headers",
			args:       []string{"invoke", "hello", "-d", "x", "-H", "Content-Type: text/plain", "-H", "X-Trace:a:b"},
			stdout:     "Hello, x",
			wantBody:   "x",
			wantHeader: map[string]string{"Content-Type": "text/plain", "X-Trace": "a:b"},
		},
		{name: "function error", args: []string{"invoke", "fails"}, code: 1, stdout: "handler error: boom", stderr: "invoke fails: the function failed (HTTP 500)"},
		{name: "error status", args: []string{"invoke", "teapot"}, code: 1, stdout: "I'm a teapot", stderr: "HTTP 418"},
		{name: "kiln error", args: []string{"invoke", "missing"}, code: 1, stderr: "kiln: invoke missing: function missing not found (not_found, HTTP 404)"},
		{name: "kiln unavailable", args: []string{"invoke", "busy"}, code: 1, stderr: "no container available (unavailable, HTTP 503)"},
		{name: "bad header", args: []string{"invoke", "hello", "-H", "nocolon"}, code: 1, stderr: "want KEY:VALUE"},
		{name: "no name", args: []string{"invoke"}, code: 1, stderr: "Run 'kiln invoke --help' for usage."},
		{name: "invalid name", args: []string{"invoke", "../x"}, code: 1, stderr: "invalid function name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent.mu.Lock()
			agent.invokeBody, agent.invokeHeader = nil, nil
			agent.mu.Unlock()
			r := kiln(t, env, tt.stdin, tt.args...)
			if r.code != tt.code || r.stdout != tt.stdout || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("got exit %d stdout %q stderr %q; want exit %d stdout %q stderr containing %q",
					r.code, r.stdout, r.stderr, tt.code, tt.stdout, tt.stderr)
			}
			if tt.code == 0 && r.stderr != "" {
				t.Errorf("stderr %q on success", r.stderr)
			}
			agent.mu.Lock()
			defer agent.mu.Unlock()
			if tt.code == 0 && string(agent.invokeBody) != tt.wantBody {
				t.Errorf("body sent %q, want %q", agent.invokeBody, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := agent.invokeHeader.Get(k); got != v {
					t.Errorf("header %s sent as %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestAgentSelection(t *testing.T) {
	agent, url := newFakeAgent(t)
	// A port nothing listens on.
	dead := func() string {
		srv := httptest.NewServer(http.NotFoundHandler())
		u := srv.URL
		srv.Close()
		return u
	}()

	// KILN_AGENT is used when --agent is not given.
	if r := kiln(t, agentEnv(url), "", "list"); r.code != 0 {
		t.Fatalf("KILN_AGENT: %+v", r)
	}
	// --agent wins over KILN_AGENT.
	if r := kiln(t, agentEnv(dead), "", "--agent", url, "list"); r.code != 0 {
		t.Fatalf("--agent over KILN_AGENT: %+v", r)
	}
	if r := kiln(t, nil, "", "list", "--agent="+url); r.code != 0 {
		t.Fatalf("--agent after the command: %+v", r)
	}
	agent.mu.Lock()
	if agent.requests != 3 {
		t.Errorf("agent saw %d requests, want 3", agent.requests)
	}
	agent.mu.Unlock()

	r := kiln(t, agentEnv(dead), "", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot reach the kiln agent at "+dead) {
		t.Fatalf("dead agent: %+v", r)
	}
	r = kiln(t, agentEnv("127.0.0.1:8080"), "", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "KILN_AGENT") {
		t.Fatalf("bad KILN_AGENT: %+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"lst"}, `unknown command "lst" (did you mean list?)`},
		{[]string{"list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"list", "extra"}, "Run 'kiln list --help' for usage."},
		{[]string{"rm"}, "Run 'kiln rm --help' for usage."},
		{[]string{"init"}, "Run 'kiln init --help' for usage."},
		{[]string{"init", "--runtime", "cobol", "x"}, `unknown runtime "cobol"`},
		{[]string{"init", "Hello"}, "invalid function name"},
		{[]string{"deploy", "a", "b"}, "Run 'kiln deploy --help' for usage."},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := kiln(t, nil, "", tt.args...)
			if r.code != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("got %+v, want exit 1 and stderr containing %q", r, tt.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{nil, {"--help"}, {"invoke", "--help"}, {"help", "deploy"}} {
		r := kiln(t, nil, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("kiln %v: %+v", args, r)
		}
	}
}

func TestInit(t *testing.T) {
	t.Chdir(t.TempDir())
	r := kiln(t, nil, "", "init", "--runtime", "go", "hello")
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	for _, f := range []string{"handler.go", "go.mod", "kiln.yaml", ".gitignore"} {
		if _, err := os.Stat(filepath.Join("hello", f)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(r.stdout, "kiln deploy") {
		t.Errorf("stdout %q does not say what to do next", r.stdout)
	}

	r = kiln(t, nil, "", "init", "hello")
	if r.code != 1 || !strings.Contains(r.stderr, "not empty") {
		t.Fatalf("init into a non-empty dir: %+v", r)
	}

	r = kiln(t, nil, "", "init", "--dir", "elsewhere/fn", "world")
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if b, err := os.ReadFile(filepath.Join("elsewhere", "fn", "kiln.yaml")); err != nil || !strings.Contains(string(b), "name: world") {
		t.Errorf("kiln.yaml: %q, %v", b, err)
	}
}

func TestDeployNoConfig(t *testing.T) {
	_, url := newFakeAgent(t)
	r := kiln(t, agentEnv(url), "", "deploy", t.TempDir())
	if r.code != 1 || !strings.Contains(r.stderr, "no kiln.yaml") {
		t.Fatalf("%+v", r)
	}
}

func TestDeployBadConfig(t *testing.T) {
	_, url := newFakeAgent(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "kiln.yaml"), []byte("name: x\nmemroy: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := kiln(t, agentEnv(url), "", "deploy", dir)
	if r.code != 1 || !strings.Contains(r.stderr, `unknown key "memroy"`) {
		t.Fatalf("%+v", r)
	}
}

// TestDeploy builds the init template, so it needs the go command and the
// module cache (or a module proxy) holding kiln's dependencies.
func TestDeploy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("go command not in PATH")
		}
		t.Skip("go command not in PATH")
	}
	agent, url := newFakeAgent(t)
	dir := filepath.Join(t.TempDir(), "hello")
	if r := kiln(t, nil, "", "init", "--dir", dir, "hello"); r.code != 0 {
		t.Fatalf("init: %+v", r)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"deploy", dir, "--agent", url}, &cli{
		stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" },
	})
	if code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, stderr.String())
	}
	if want := "Deployed hello revision rev-1\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	agent.mu.Lock()
	fn := agent.fns["hello"]
	agent.mu.Unlock()
	if fn == nil {
		t.Fatal("hello not deployed")
	}
	want := &kilnv1.FunctionSpec{
		Runtime:  "go",
		MemoryMb: 128,
		Timeout:  durationpb.New(30 * time.Second),
	}
	archive := fn.Spec.Code
	fn.Spec.Code = nil
	if !proto.Equal(fn.Spec, want) {
		t.Errorf("deployed spec %v, want %v", fn.Spec, want)
	}
	// The archive holds the built binary, and only it, as the handler.
	unpacked := t.TempDir()
	if _, err := bundle.Unpack(bytes.NewReader(archive), unpacked, bundle.DefaultLimits); err != nil {
		t.Fatalf("code archive: %v", err)
	}
	built, _ := os.ReadFile(filepath.Join(dir, ".kiln", "build", "handler"))
	got, err := os.ReadFile(filepath.Join(unpacked, "handler"))
	if err != nil || len(built) == 0 || !bytes.Equal(got, built) {
		t.Errorf("archive's handler (%d bytes, %v) is not the built binary (%d bytes)", len(got), err, len(built))
	}
	if ents, _ := os.ReadDir(unpacked); len(ents) != 1 {
		t.Errorf("archive holds %d entries, want 1", len(ents))
	}
}

func TestAgentFromDataDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, agentInfoFile), []byte(`{"http":"http://127.0.0.1:18080","grpc":"127.0.0.1:19090"}`), 0o600)
	c := &cli{getenv: func(string) string { return "" }}
	root := c.rootCmd()
	root.SetArgs([]string{"--data-dir", dir, "list"})
	root.ParseFlags([]string{"--data-dir", dir})
	if got := c.agentURL(root); got != "http://127.0.0.1:18080" {
		t.Errorf("agentURL = %q, want the data dir's agent", got)
	}
	if path, why := c.tokenFileFor(root, "http://127.0.0.1:18080"); path != filepath.Join(dir, adminTokenFile) {
		t.Errorf("token file = %q (%s)", path, why)
	}

	// The default data dir's token goes only to the agent it belongs to.
	c = &cli{getenv: func(string) string { return "" }}
	root = c.rootCmd()
	root.ParseFlags(nil)
	c.dataDir = dir
	if path, why := c.tokenFileFor(root, "http://127.0.0.1:8080"); path != "" || !strings.Contains(why, "belongs to the agent at http://127.0.0.1:18080, not http://127.0.0.1:8080") {
		t.Errorf("another agent's token file: %q (%s)", path, why)
	}
	if path, _ := c.tokenFileFor(root, "http://localhost:18080"); path != filepath.Join(dir, adminTokenFile) {
		t.Errorf("own agent's token file: %q", path)
	}
	empty := t.TempDir()
	c.dataDir = empty
	if path, _ := c.tokenFileFor(root, defaultAgent); path != filepath.Join(empty, adminTokenFile) {
		t.Errorf("no agent.json, default agent: %q", path)
	}
	if path, why := c.tokenFileFor(root, "http://127.0.0.1:9999"); path != "" || why == "" {
		t.Errorf("no agent.json, other agent: %q", path)
	}
}

func TestSameAgent(t *testing.T) {
	for _, tt := range []struct {
		recorded, target string
		want             bool
	}{
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080", true},
		{"http://127.0.0.1:8080", "http://localhost:8080/", true},
		{"http://0.0.0.0:8080", "http://127.0.0.1:8080", true},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8081", false},
		{"http://10.0.0.1:8080", "http://127.0.0.1:8080", false},
		{"http://[::]:8080", "http://[::1]:8080", true},
	} {
		if got := sameAgent(tt.recorded, tt.target); got != tt.want {
			t.Errorf("sameAgent(%q, %q) = %v", tt.recorded, tt.target, got)
		}
	}
}
