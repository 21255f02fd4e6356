package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func probeSpec(extra map[string]any) map[string]any {
	spec := map[string]any{"runtime": "go", "code": filepath.Join(binDir, "probe")}
	for k, v := range extra {
		spec[k] = v
	}
	return spec
}

func TestInvokeOverHTTP(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-http", probeSpec(nil))

	r := k.do(t, "POST", "/invoke/probe-http/some/path?q=1", []byte("hello"))
	if r.status != 202 || string(r.body) != "probe:hello" {
		t.Fatalf("invoke = %d %q\n%s", r.status, r.body, k.logs)
	}
	if got := r.header.Get("X-Probe-Method"); got != "POST" {
		t.Errorf("function saw method %q", got)
	}
	if got := r.header.Get("X-Probe-Path"); got != "/some/path" {
		t.Errorf("function saw path %q", got)
	}
	if r.header.Get("X-Kiln-Call-Id") == "" {
		t.Error("no X-Kiln-Call-Id")
	}
	if got := r.header.Get("X-Kiln-Start"); got != "cold" {
		t.Errorf("first call X-Kiln-Start = %q, want cold", got)
	}
	r2 := k.do(t, "POST", "/invoke/probe-http", []byte("again"))
	if r2.status != 202 || r2.header.Get("X-Kiln-Start") != "warm" {
		t.Errorf("second call = %d start=%q, want 202 warm", r2.status, r2.header.Get("X-Kiln-Start"))
	}
	if r2.header.Get("X-Kiln-Call-Id") == r.header.Get("X-Kiln-Call-Id") {
		t.Error("two calls share a call id")
	}
	// The OpenFaaS-style path reaches the same function.
	if r := k.do(t, "POST", "/function/probe-http", []byte("x")); r.status != 202 || string(r.body) != "probe:x" {
		t.Errorf("/function path = %d %q", r.status, r.body)
	}
}

func TestContainerSecurity(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-sec", probeSpec(nil))
	r := k.do(t, "POST", "/invoke/probe-sec", []byte("report"))
	if r.status != 200 {
		t.Fatalf("report = %d %s", r.status, r.body)
	}
	var rep struct {
		UID, GID     int
		RootWritable bool
		TmpWritable  bool
		TmpError     string
		Mounts       string
		Interfaces   []string
		Status       map[string]string
	}
	if err := json.Unmarshal(r.body, &rep); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	if rep.UID == 0 || rep.GID == 0 {
		t.Errorf("function runs as uid %d gid %d, want non-root", rep.UID, rep.GID)
	}
	if rep.RootWritable {
		t.Error("root filesystem is writable")
	}
	if !rep.TmpWritable {
		t.Errorf("/tmp is not writable: %s\nmounts:\n%s", rep.TmpError, rep.Mounts)
	}
	if !slices.Equal(rep.Interfaces, []string{"lo"}) {
		t.Errorf("interfaces = %v, want only lo", rep.Interfaces)
	}
	if rep.Status["CapEff"] != "0000000000000000" || rep.Status["CapBnd"] != "0000000000000000" {
		t.Errorf("capabilities = %v, want none", rep.Status)
	}
	if rep.Status["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs = %q", rep.Status["NoNewPrivs"])
	}
	if rep.Status["Seccomp"] != "2" {
		t.Errorf("Seccomp = %q, want 2 (filter)", rep.Status["Seccomp"])
	}
}

func TestCrashingFunction(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-crash", probeSpec(nil))
	if r := k.do(t, "POST", "/invoke/probe-crash", []byte("warm up")); r.status != 202 {
		t.Fatalf("warm-up = %d %s", r.status, r.body)
	}
	r := k.do(t, "POST", "/invoke/probe-crash", []byte("exit"))
	if r.status != 502 || r.header.Get("X-Kiln-Error") != "exited" || !bytes.Contains(r.body, []byte("exited with status 3")) {
		t.Fatalf("exiting function = %d %s %q, want 502 exited with status 3", r.status, r.body, r.header.Get("X-Kiln-Error"))
	}
	r = k.do(t, "POST", "/invoke/probe-crash", []byte("after"))
	if r.status != 202 || string(r.body) != "probe:after" {
		t.Fatalf("call after crash = %d %q", r.status, r.body)
	}
	if got := r.header.Get("X-Kiln-Start"); got != "cold" {
		t.Errorf("call after crash start = %q, want cold (a fresh container)", got)
	}
}

func TestPanickingHandler(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-panic", probeSpec(nil))
	r := k.do(t, "POST", "/invoke/probe-panic", []byte("panic"))
	if r.status != 500 || r.header.Get("X-Kiln-Error") != "function_error" || !bytes.Contains(r.body, []byte("probe panicked")) {
		t.Fatalf("panic = %d %q %s", r.status, r.header.Get("X-Kiln-Error"), r.body)
	}
	r = k.do(t, "POST", "/invoke/probe-panic", []byte("fine"))
	if r.status != 202 || r.header.Get("X-Kiln-Start") != "warm" {
		t.Fatalf("after panic = %d start=%q, want 202 warm (same container)", r.status, r.header.Get("X-Kiln-Start"))
	}
}

func TestFunctionTimeout(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-slow", probeSpec(map[string]any{"timeout": "1s"}))
	r := k.do(t, "POST", "/invoke/probe-slow", []byte("sleep"))
	if r.status != 504 {
		t.Fatalf("slow call = %d %s, want 504", r.status, r.body)
	}
	if r := k.do(t, "POST", "/invoke/probe-slow", []byte("quick")); r.status != 202 {
		t.Fatalf("next call = %d %s", r.status, r.body)
	}
}

func TestBadInput(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-bad", probeSpec(nil))
	tests := []struct {
		name, method, path string
		body               []byte
		status             int
		class, mention     string
	}{
		{"bad name", "PUT", "/v1/functions/Bad_Name", []byte(`{"runtime":"go"}`), 400, "invalid_argument", "name"},
		{"long name", "GET", "/v1/functions/" + strings.Repeat("a", 64), nil, 400, "invalid_argument", "name"},
		{"unknown function", "POST", "/invoke/nope", nil, 404, "not_found", "nope"},
		{"unknown function get", "GET", "/v1/functions/nope", nil, 404, "not_found", "nope"},
		{"unknown route", "GET", "/nowhere", nil, 404, "not_found", ""},
		{"spec not json", "PUT", "/v1/functions/x", []byte(`{`), 400, "invalid_argument", "spec"},
		{"spec bad type", "PUT", "/v1/functions/x", []byte(`{"runtime":"go","memory_mb":"lots"}`), 400, "invalid_argument", "memory_mb"},
		{"spec unknown field", "PUT", "/v1/functions/x", []byte(`{"runtime":"go","colour":"red"}`), 400, "invalid_argument", "colour"},
		{"unknown runtime", "PUT", "/v1/functions/x", []byte(`{"runtime":"cobol","code":"AAAA"}`), 400, "invalid_argument", "runtime"},
		{"no code", "PUT", "/v1/functions/x", []byte(`{"runtime":"go"}`), 400, "invalid_argument", "code"},
		{"code as a host path", "PUT", "/v1/functions/x", []byte(`{"runtime":"go","code":"/etc","handler":"init.d/procps"}`), 400, "invalid_argument", "code"},
		{"code not base64", "PUT", "/v1/functions/x", []byte(`{"runtime":"go","code":"/no/such/file"}`), 400, "invalid_argument", "code"},
		{"memory out of range", "PUT", "/v1/functions/x", []byte(`{"runtime":"go","code":"AAAA","memory_mb":1}`), 400, "invalid_argument", "memory_mb"},
		{"body too large", "POST", "/invoke/probe-bad", bytes.Repeat([]byte("x"), 6<<20+1), 413, "payload_too_large", "limit"},
		{"delete unknown", "DELETE", "/v1/functions/nope", nil, 404, "not_found", "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := k.do(t, tt.method, tt.path, tt.body)
			if r.status != tt.status {
				t.Fatalf("status = %d (%s), want %d", r.status, r.body, tt.status)
			}
			var e struct{ Error, Class string }
			if err := json.Unmarshal(r.body, &e); err != nil {
				t.Fatalf("error body is not JSON: %q", r.body)
			}
			if e.Class != tt.class || !strings.Contains(e.Error, tt.mention) {
				t.Errorf("error = %+v, want class %s mentioning %q", e, tt.class, tt.mention)
			}
		})
	}
	// Specs no container could ever start from are refused at deploy,
	// naming the field, rather than failing every call.
	script := filepath.Join(t.TempDir(), "script")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755)
	for _, tt := range []struct {
		name    string
		spec    map[string]any
		mention string
	}{
		{"cpu below the smallest quota", probeSpec(map[string]any{"cpu_millis": 5}), "cpu_millis"},
		{"cpu of 1", probeSpec(map[string]any{"cpu_millis": 1}), "cpu_millis"},
		{"env over the exec limit", probeSpec(map[string]any{"env": map[string]string{"BIG": strings.Repeat("x", 200<<10)}}), "env"},
		{"env over the total exec limit", probeSpec(map[string]any{"env": manyVars(12, 100<<10)}), "env"},
		{"not an ELF binary", map[string]any{"runtime": "go", "code": script}, "ELF"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := k.tryDeploy(t, "probe-bad-spec", tt.spec)
			if r.status != 400 || !bytes.Contains(r.body, []byte(tt.mention)) {
				t.Fatalf("deploy = %d %s, want 400 naming %s", r.status, r.body, tt.mention)
			}
		})
	}
	if r := k.do(t, "GET", "/v1/functions/probe-bad-spec", nil); r.status != 404 {
		t.Errorf("a refused spec was stored: %d %s", r.status, r.body)
	}
	// Nothing above broke the function.
	if r := k.do(t, "POST", "/invoke/probe-bad", []byte("ok")); r.status != 202 {
		t.Fatalf("after bad input = %d %s", r.status, r.body)
	}
}

// manyVars returns n environment variables of size bytes each.
func manyVars(n, size int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("V%d", i)] = strings.Repeat("v", size)
	}
	return m
}

func TestFunctionLifecycle(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-life", probeSpec(map[string]any{"memory_mb": 64, "env": map[string]string{"A": "1"}}))
	r := k.do(t, "GET", "/v1/functions/probe-life", nil)
	var fn struct {
		Name     string
		Revision string
		Spec     struct {
			MemoryMb int32  `json:"memory_mb"`
			Timeout  string `json:"timeout"`
		}
	}
	if err := json.Unmarshal(r.body, &fn); err != nil || r.status != 200 {
		t.Fatalf("get = %d %s (%v)", r.status, r.body, err)
	}
	if fn.Name != "probe-life" || fn.Revision == "" || fn.Spec.MemoryMb != 64 || fn.Spec.Timeout != "30s" {
		t.Errorf("function = %+v", fn)
	}
	r = k.do(t, "GET", "/v1/functions", nil)
	if !bytes.Contains(r.body, []byte(`"probe-life"`)) {
		t.Errorf("list lacks the function: %s", r.body)
	}
	if r := k.do(t, "POST", "/invoke/probe-life", []byte("x")); r.status != 202 {
		t.Fatalf("invoke = %d %s", r.status, r.body)
	}
	before := len(k.containers(t))
	if r := k.do(t, "DELETE", "/v1/functions/probe-life", nil); r.status != 204 {
		t.Fatalf("delete = %d %s", r.status, r.body)
	}
	if after := len(k.containers(t)); after != before-1 {
		t.Errorf("containers %d -> %d after delete, want one fewer", before, after)
	}
	if r := k.do(t, "POST", "/invoke/probe-life", []byte("x")); r.status != 404 {
		t.Errorf("invoke after delete = %d", r.status)
	}
}

// TestRestartLeavesNoOrphans kills kilnd with its containers running and
// checks the next kilnd removes them and keeps the functions.
func TestRestartLeavesNoOrphans(t *testing.T) {
	requireIntegration(t)
	dir := shortTempDir(t)
	k, err := launch(dir)
	if err != nil {
		t.Fatal(err)
	}
	k.deploy(t, "probe-a", probeSpec(nil))
	k.deploy(t, "probe-b", probeSpec(nil))
	for _, fn := range []string{"probe-a", "probe-b"} {
		if r := k.do(t, "POST", "/invoke/"+fn, []byte("x")); r.status != 202 {
			t.Fatalf("invoke %s = %d %s", fn, r.status, r.body)
		}
	}
	if n := len(k.containers(t)); n != 2 {
		t.Fatalf("containers before kill = %d, want 2", n)
	}
	k.kill()

	k2 := startKilnd(t, dir)
	if left := k2.containers(t); len(left) != 0 {
		t.Fatalf("containers left after restart: %v", left)
	}
	r := k2.do(t, "POST", "/invoke/probe-a", []byte("again"))
	if r.status != 202 || r.header.Get("X-Kiln-Start") != "cold" {
		t.Fatalf("after restart = %d %s start=%q", r.status, r.body, r.header.Get("X-Kiln-Start"))
	}
	if err := k2.stop(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM stopped the containers and kiln's containerd.
	if out, _ := exec.Command("pgrep", "-f", filepath.Join(dir, "containerd")).Output(); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("containerd still runs after kilnd stopped: pids %s", out)
	}
}

// TestQuickstart follows the README: kiln init, kiln deploy, kiln invoke.
func TestQuickstart(t *testing.T) {
	k := sharedKilnd(t)
	work := t.TempDir()
	kiln := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kiln"), args...)
		cmd.Dir = work
		// As on the README's machine, where the data dir is the default:
		// the CLI finds the agent and its admin token from the data dir.
		cmd.Env = append(os.Environ(), "KILN_DATA_DIR="+k.dataDir)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := kiln("", "init", "--runtime", "go", "hello"); err != nil {
		t.Fatalf("kiln init: %v\n%s", err, out)
	}
	work = filepath.Join(work, "hello")
	if out, err := kiln("", "deploy"); err != nil {
		t.Fatalf("kiln deploy: %v\n%s", err, out)
	}
	out, err := kiln("hi", "invoke", "hello")
	if err != nil {
		t.Fatalf("kiln invoke: %v\n%s", err, out)
	}
	if !strings.Contains(out, "hi") || !strings.Contains(strings.ToLower(out), "hello") {
		t.Errorf("kiln invoke printed %q", out)
	}
	if out, err := kiln("", "list"); err != nil || !strings.Contains(out, "hello") {
		t.Errorf("kiln list: %v %s", err, out)
	}
	if out, err := kiln("", "invoke", "missing", "-d", "x"); err == nil {
		t.Errorf("invoke of a missing function succeeded: %s", out)
	}
	if out, err := kiln("", "rm", "hello"); err != nil {
		t.Errorf("kiln rm: %v %s", err, out)
	}
}
