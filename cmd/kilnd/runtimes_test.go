package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/agent/bundle"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// runtimesCache keeps the runtimes' root filesystems between runs of the
// tests, as an operator's --runtimes-dir would: the first run builds them
// from the Debian mirror (a minute or so each), later runs find them.
const runtimesCache = "/var/cache/kiln-test/kilnd-runtimes"

// kilnCLI runs the kiln CLI in dir against k and returns its output.
func kilnCLI(t *testing.T, k *kilnd, dir, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kiln"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KILN_DATA_DIR="+k.dataDir)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// deployDir packs dir as a function's code and deploys it with spec.
func deployDir(t *testing.T, k *kilnd, name, dir string, spec map[string]any) response {
	t.Helper()
	code, err := bundle.PackBytes(dir, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	spec["code"] = code
	b, _ := json.Marshal(spec)
	return k.do(t, "PUT", "/v1/functions/"+name, b)
}

// writeFiles writes files (name → content) into a new directory.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestRuntimes builds the python3, node, ruby, binary, cpp and java runtimes, then follows
// a user of each: kiln init, kiln deploy, kiln invoke; and checks the
// handler conventions, failures, stem cells, extra packages and a flood of
// output.
func TestRuntimes(t *testing.T) {
	requireIntegration(t)
	if err := os.MkdirAll(runtimesCache, 0o700); err != nil {
		t.Fatal(err)
	}
	k := startKilnd(t, shortTempDir(t), "--runtimes-dir", runtimesCache)
	work := t.TempDir()

	for _, rt := range []string{"python3", "node", "ruby", "binary", "cpp", "java"} {
		out, err := kilnCLI(t, k, work, "", "runtime", "build", rt)
		if err != nil {
			t.Fatalf("kiln runtime build %s: %v\n%s", rt, err, out)
		}
		if !strings.Contains(out, "Built "+rt) {
			t.Errorf("kiln runtime build %s printed %q", rt, out)
		}
		t.Logf("%s", strings.TrimSpace(out))
	}
	out, err := kilnCLI(t, k, work, "", "runtime", "list")
	if err != nil {
		t.Fatalf("kiln runtime list: %v\n%s", err, out)
	}
	t.Logf("kiln runtime list:\n%s", out)
	for _, rt := range []string{"python3", "node", "ruby", "binary", "cpp", "java"} {
		if !strings.Contains(out, rt) {
			t.Errorf("kiln runtime list lacks %s", rt)
		}
	}
	out, err = kilnCLI(t, k, work, "", "init", "--list")
	if err != nil || !strings.Contains(out, "python3") || !strings.Contains(out, "node") || !strings.Contains(out, "ruby") || !strings.Contains(out, "binary") {
		t.Errorf("kiln init --list: %v %q", err, out)
	}

	t.Run("templates", func(t *testing.T) {
		for _, rt := range []string{"python3", "node", "ruby", "binary", "cpp", "java"} {
			name := "hello-" + rt
			if out, err := kilnCLI(t, k, work, "", "init", "--runtime", rt, name); err != nil {
				t.Fatalf("kiln init --runtime %s: %v\n%s", rt, err, out)
			}
			dir := filepath.Join(work, name)
			if out, err := kilnCLI(t, k, dir, "", "deploy"); err != nil {
				t.Fatalf("kiln deploy (%s): %v\n%s", rt, err, out)
			}
			out, err := kilnCLI(t, k, dir, "kiln", "invoke", name)
			if err != nil {
				t.Fatalf("kiln invoke (%s): %v\n%s", rt, err, out)
			}
			if !strings.Contains(out, "Hello, kiln!") {
				t.Errorf("%s template answered %q", rt, out)
			}
		}
	})

	t.Run("python3", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"handler.py": `import json, os, sys, time

def handle(req):
    what = req.body.decode()
    if what == "json":
        return {"method": req.method, "path": req.path, "query": req.query, "echo": req.headers.get("X-Echo")}
    if what == "tuple":
        return (201, {"X-Made": "yes"}, b"made")
    if what == "raise":
        raise ValueError("no such thing")
    if what == "crash":
        os._exit(3)
    if what == "burn":
        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
        block = bytearray(48 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return "burnt"
    if what == "flood":
        for i in range(20000):
            print("flood line", i, "x" * 64)
        sys.stdout.flush()
        return "intact"
    return req.body
`,
		})
		if r := deployDir(t, k, "py", dir, map[string]any{"runtime": "python3"}); r.status != 200 {
			t.Fatalf("deploy: %d %s", r.status, r.body)
		}
		r, err := invoke(k.url, "py/some/path?a=1", "echo me")
		if err != nil || r.status != 200 || string(r.body) != "echo me" {
			t.Fatalf("echo: %v %d %q", err, r.status, r.body)
		}
		r, _ = invoke(k.url, "py/p?x=y", "json")
		var got map[string]any
		if r.status != 200 || json.Unmarshal(r.body, &got) != nil || got["method"] != "POST" || got["path"] != "/p" || got["query"] != "x=y" {
			t.Errorf("json: %d %q", r.status, r.body)
		}
		r, _ = invoke(k.url, "py", "tuple")
		if r.status != 201 || r.header.Get("X-Made") != "yes" || string(r.body) != "made" {
			t.Errorf("tuple: %d %v %q", r.status, r.header, r.body)
		}
		r, _ = invoke(k.url, "py", "raise")
		if r.status != 500 || !strings.Contains(string(r.body), "no such thing") {
			t.Errorf("an exception answered %d %q, want 500 with its message", r.status, r.body)
		}
		r, _ = invoke(k.url, "py", "flood")
		if r.status != 200 || string(r.body) != "intact" {
			t.Errorf("a flood of stdout answered %d %q", r.status, r.body)
		}
		// The usage record covers the worker's CPU and memory, not only the
		// executor's.
		r, _ = invoke(k.url, "py", "burn")
		if r.status != 200 {
			t.Fatalf("burn: %d %q", r.status, r.body)
		}
		var rec kilnv1.CallRecord
		eventually(t, 10*time.Second, "the burn call's usage record", func() bool {
			got := k.do(t, "GET", "/v1/calls/"+r.header.Get("X-Kiln-Call-Id"), nil)
			return got.status == 200 && protojson.Unmarshal(got.body, &rec) == nil
		})
		if rec.CpuUserMs+rec.CpuSystemMs < 150 || rec.MemoryPeakBytes < 40<<20 {
			t.Errorf("the usage record of a call that burnt 200 ms of CPU and touched 48 MiB says cpu_user_ms %.1f, cpu_system_ms %.1f, memory_peak_bytes %d", rec.CpuUserMs, rec.CpuSystemMs, rec.MemoryPeakBytes)
		}
		r, _ = invoke(k.url, "py", "crash")
		if r.status != 502 {
			t.Errorf("a worker crash answered %d %q, want 502", r.status, r.body)
		}
		r, _ = invoke(k.url, "py", "after")
		if r.status != 200 || string(r.body) != "after" {
			t.Errorf("the call after a crash: %d %q", r.status, r.body)
		}
	})

	t.Run("node", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"handler.js": `module.exports = async (req) => {
  const what = req.body.toString();
  if (what === "json") return {method: req.method, path: req.path};
  if (what === "raise") throw new Error("node says no");
  if (what === "crash") process.exit(3);
  return req.body;
};
`,
		})
		if r := deployDir(t, k, "js", dir, map[string]any{"runtime": "node"}); r.status != 200 {
			t.Fatalf("deploy: %d %s", r.status, r.body)
		}
		r, err := invoke(k.url, "js", "echo me")
		if err != nil || r.status != 200 || string(r.body) != "echo me" {
			t.Fatalf("echo: %v %d %q", err, r.status, r.body)
		}
		r, _ = invoke(k.url, "js/q", "json")
		if r.status != 200 || !strings.Contains(string(r.body), `"path":"/q"`) {
			t.Errorf("json: %d %q", r.status, r.body)
		}
		r, _ = invoke(k.url, "js", "raise")
		if r.status != 500 || !strings.Contains(string(r.body), "node says no") {
			t.Errorf("a throw answered %d %q, want 500 with its message", r.status, r.body)
		}
		r, _ = invoke(k.url, "js", "crash")
		if r.status != 502 {
			t.Errorf("a worker crash answered %d %q, want 502", r.status, r.body)
		}
		r, _ = invoke(k.url, "js", "after")
		if r.status != 200 || string(r.body) != "after" {
			t.Errorf("the call after a crash: %d %q", r.status, r.body)
		}
	})

	t.Run("cpp", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"kiln.yaml": "name: cc\nruntime: cpp\n",
			"handler.cpp": `#include <cstdlib>
#include <stdexcept>
#include "kiln.hpp"

kiln::Response handle(const kiln::Request& req) {
    if (req.body == "raise") throw std::runtime_error("c++ says no");
    if (req.body == "crash") std::_Exit(3);
    if (req.body == "where") return kiln::Response{200, {{"X-Path", req.path}}, req.method + " " + req.query};
    return kiln::Response{200, {}, req.body};
}

int main() { return kiln::serve(handle); }
`,
		})
		if out, err := kilnCLI(t, k, dir, "", "deploy"); err != nil {
			t.Fatalf("kiln deploy: %v\n%s", err, out)
		}
		r, err := invoke(k.url, "cc", "echo me")
		if err != nil || r.status != 200 || string(r.body) != "echo me" {
			t.Fatalf("echo: %v %d %q", err, r.status, r.body)
		}
		r, _ = invoke(k.url, "cc/p?x=y", "where")
		if r.status != 200 || r.header.Get("X-Path") != "/p" || string(r.body) != "POST x=y" {
			t.Errorf("where: %d %v %q", r.status, r.header, r.body)
		}
		r, _ = invoke(k.url, "cc", "raise")
		if r.status != 500 || !strings.Contains(string(r.body), "c++ says no") {
			t.Errorf("an exception answered %d %q, want 500 with its message", r.status, r.body)
		}
		r, _ = invoke(k.url, "cc", "crash")
		if r.status != 502 {
			t.Errorf("a crash answered %d %q, want 502", r.status, r.body)
		}
		r, _ = invoke(k.url, "cc", "after")
		if r.status != 200 || string(r.body) != "after" {
			t.Errorf("the call after a crash: %d %q", r.status, r.body)
		}
	})

	t.Run("java", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"kiln.yaml": "name: jv\nruntime: java\nmemory: 256\n",
			"Handler.java": `import java.util.Map;

public class Handler {
    public static Object handle(kiln.Request req) {
        switch (req.text()) {
            case "raise": throw new IllegalArgumentException("java says no");
            case "crash": Runtime.getRuntime().halt(3);
            case "json": return Map.of("path", req.path, "query", req.query);
        }
        return req.body;
    }
}
`,
		})
		if out, err := kilnCLI(t, k, dir, "", "deploy"); err != nil {
			t.Fatalf("kiln deploy: %v\n%s", err, out)
		}
		r, err := invoke(k.url, "jv", "echo me")
		if err != nil || r.status != 200 || string(r.body) != "echo me" {
			t.Fatalf("echo: %v %d %q", err, r.status, r.body)
		}
		r, _ = invoke(k.url, "jv/p?x=y", "json")
		if r.status != 200 || !strings.Contains(string(r.body), `"path":"/p"`) || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("json: %d %v %q", r.status, r.header, r.body)
		}
		r, _ = invoke(k.url, "jv", "raise")
		if r.status != 500 || !strings.Contains(string(r.body), "java says no") {
			t.Errorf("an exception answered %d %q, want 500 with its message", r.status, r.body)
		}
		r, _ = invoke(k.url, "jv", "crash")
		if r.status != 502 {
			t.Errorf("a crash answered %d %q, want 502", r.status, r.body)
		}
		r, _ = invoke(k.url, "jv", "after")
		if r.status != 200 || string(r.body) != "after" {
			t.Errorf("the call after a crash: %d %q", r.status, r.body)
		}
	})

	t.Run("node with npm dependencies", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"kiln.yaml":    "name: js-deps\nruntime: node\nhandler: handler.js\n",
			"package.json": `{"name": "js-deps", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}}`,
			"handler.js":   "const ms = require('ms');\nmodule.exports = (req) => String(ms(req.body.toString()));\n",
		})
		if out, err := kilnCLI(t, k, dir, "", "deploy"); err != nil {
			t.Fatalf("kiln deploy: %v\n%s", err, out)
		}
		r, err := invoke(k.url, "js-deps", "2h")
		if err != nil || r.status != 200 || string(r.body) != "7200000" {
			t.Fatalf("a dependency installed at deploy: %v %d %q", err, r.status, r.body)
		}
	})

	t.Run("ruby", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"handler.rb": `def handle(req)
  case req.body
  when "json" then { method: req.method, path: req.path }
  when "raise" then raise "ruby says no"
  when "crash" then exit!(3)
  else req.body
  end
end
`,
		})
		if r := deployDir(t, k, "rb", dir, map[string]any{"runtime": "ruby"}); r.status != 200 {
			t.Fatalf("deploy: %d %s", r.status, r.body)
		}
		r, err := invoke(k.url, "rb", "echo me")
		if err != nil || r.status != 200 || string(r.body) != "echo me" {
			t.Fatalf("echo: %v %d %q", err, r.status, r.body)
		}
		r, _ = invoke(k.url, "rb/q", "json")
		if r.status != 200 || !strings.Contains(string(r.body), `"path":"/q"`) {
			t.Errorf("json: %d %q", r.status, r.body)
		}
		r, _ = invoke(k.url, "rb", "raise")
		if r.status != 500 || !strings.Contains(string(r.body), "ruby says no") {
			t.Errorf("a raise answered %d %q, want 500 with its message", r.status, r.body)
		}
		r, _ = invoke(k.url, "rb", "crash")
		if r.status != 502 {
			t.Errorf("a worker crash answered %d %q, want 502", r.status, r.body)
		}
		r, _ = invoke(k.url, "rb", "after")
		if r.status != 200 || string(r.body) != "after" {
			t.Errorf("the call after a crash: %d %q", r.status, r.body)
		}
	})

	t.Run("binary with packages", func(t *testing.T) {
		dir := writeFiles(t, map[string]string{
			"handler.sh": "#!/bin/sh\nif [ \"$Http_X_Fail\" = yes ]; then echo 'it failed' >&2; exit 4; fi\njq -c '{n: (.n + 1), m: env.Http_Method}'\n",
		})
		r := deployDir(t, k, "jq", dir, map[string]any{"runtime": "binary", "handler": "handler.sh", "packages": []string{"jq"}})
		if r.status != 200 {
			t.Fatalf("deploy with packages [jq]: %d %s", r.status, r.body)
		}
		r, err := invoke(k.url, "jq", `{"n": 41}`)
		if err != nil || r.status != 200 || strings.TrimSpace(string(r.body)) != `{"n":42,"m":"POST"}` {
			t.Fatalf("jq: %v %d %q", err, r.status, r.body)
		}
		r = k.doHeader(t, "POST", "/invoke/jq", "X-Fail", "yes", []byte(`{}`))
		if r.status != 500 || !strings.Contains(string(r.body), "it failed") {
			t.Errorf("a non-zero exit answered %d %q, want 500 with stderr's tail", r.status, r.body)
		}
		r = deployDir(t, k, "nope", dir, map[string]any{"runtime": "binary", "handler": "handler.sh", "packages": []string{"kiln-no-such-package"}})
		if r.status < 400 || !strings.Contains(string(r.body), "kiln-no-such-package") {
			t.Errorf("a deploy with an unknown package answered %d %q, want an error naming it", r.status, r.body)
		}
	})

	t.Run("runtime in use", func(t *testing.T) {
		r := k.do(t, "DELETE", "/v1/runtimes/python3", nil)
		if r.status != 409 || !strings.Contains(string(r.body), "py") {
			t.Errorf("removing a runtime in use answered %d %q, want 409 naming the function", r.status, r.body)
		}
		r = k.do(t, "POST", "/v1/runtimes/cobol", nil)
		if r.status != 200 || !strings.Contains(string(r.body), "unknown runtime") {
			t.Errorf("building an unknown runtime answered %d %q", r.status, r.body)
		}
	})

	// csharp: compiled on the client by kiln deploy (mcs), run by mono.
	t.Run("csharp", func(t *testing.T) {
		for _, c := range []string{"mcs", "mono"} {
			if _, err := exec.LookPath(c); err != nil {
				t.Fatalf("%s is not installed (make setup installs it): %v", c, err)
			}
		}
		if out, err := kilnCLI(t, k, work, "", "runtime", "build", "csharp"); err != nil {
			t.Fatalf("kiln runtime build csharp: %v\n%s", err, out)
		} else {
			t.Logf("%s", strings.TrimSpace(out))
		}
		if out, err := kilnCLI(t, k, work, "", "init", "--runtime", "csharp", "hello-csharp"); err != nil {
			t.Fatalf("kiln init --runtime csharp: %v\n%s", err, out)
		}
		hello := filepath.Join(work, "hello-csharp")
		if out, err := kilnCLI(t, k, hello, "", "deploy"); err != nil {
			t.Fatalf("kiln deploy (csharp): %v\n%s", err, out)
		}
		if out, err := kilnCLI(t, k, hello, "kiln", "invoke", "hello-csharp"); err != nil || out != "Hello, kiln!\n" {
			t.Errorf("the csharp template answered %q, %v", out, err)
		}

		dir := writeFiles(t, map[string]string{
			"kiln.yaml": "name: cs\nruntime: csharp\n",
			"Handler.cs": `using System;
using Kiln;

public static class Handler
{
    public static object Handle(Request req)
    {
        switch (req.Text)
        {
        case "json": return new { method = req.Method, path = req.Path };
        case "raise": throw new InvalidOperationException("csharp says no");
        case "crash": Environment.Exit(3); return null;
        }
        return req.Body;
    }
}
`,
		})
		if out, err := kilnCLI(t, k, dir, "", "deploy"); err != nil {
			t.Fatalf("kiln deploy: %v\n%s", err, out)
		}
		r, err := invoke(k.url, "cs", "echo me")
		if err != nil || r.status != 200 || string(r.body) != "echo me" {
			t.Fatalf("echo: %v %d %q", err, r.status, r.body)
		}
		r, _ = invoke(k.url, "cs/q", "json")
		if r.status != 200 || !strings.Contains(string(r.body), `"path":"/q"`) {
			t.Errorf("json: %d %q", r.status, r.body)
		}
		r, _ = invoke(k.url, "cs", "raise")
		if r.status != 500 || !strings.Contains(string(r.body), "csharp says no") {
			t.Errorf("an exception answered %d %q, want 500 with its message", r.status, r.body)
		}
		r, _ = invoke(k.url, "cs", "crash")
		if r.status != 502 {
			t.Errorf("a worker crash answered %d %q, want 502", r.status, r.body)
		}
		r, _ = invoke(k.url, "cs", "after")
		if r.status != 200 || string(r.body) != "after" {
			t.Errorf("the call after a crash: %d %q", r.status, r.body)
		}

		broken := writeFiles(t, map[string]string{
			"kiln.yaml":  "name: cs-broken\nruntime: csharp\n",
			"Handler.cs": "public static class Handler { public static object Handle(Kiln.Request r) { return nope; } }\n",
		})
		if out, err := kilnCLI(t, k, broken, "", "deploy"); err == nil || !strings.Contains(out, "error CS0103") {
			t.Errorf("deploying a function that does not compile: %v\n%s", err, out)
		}
	})
}

// TestRuntimeStemCells: a python3, node, ruby or java function's first call
// is served by a stem cell that already holds the interpreter (the JVM, with
// kiln's worker compiled); a cpp or csharp function's by a stem cell
// started ahead.
func TestRuntimeStemCells(t *testing.T) {
	requireIntegration(t)
	if err := os.MkdirAll(runtimesCache, 0o700); err != nil {
		t.Fatal(err)
	}
	k := startKilnd(t, shortTempDir(t), "--runtimes-dir", runtimesCache, "--stem-cells", "python3=1,node=1,ruby=1,cpp=1,java=1,csharp=1")
	for _, c := range []struct{ rt, file, src string }{
		{"python3", "handler.py", "def handle(req):\n    return b'stem:' + req.body\n"},
		{"node", "handler.js", "module.exports = (req) => 'stem:' + req.body.toString();\n"},
		{"ruby", "handler.rb", "def handle(req)\n  'stem:' + req.body\nend\n"},
		{"cpp", "handler.cpp", "#include \"kiln.hpp\"\nint main() { return kiln::serve([](const kiln::Request& req) { return kiln::Response{200, {}, \"stem:\" + req.body}; }); }\n"},
		{"java", "Handler.java", "public class Handler {\n    public static Object handle(kiln.Request req) { return \"stem:\" + req.text(); }\n}\n"},
		{"csharp", "Handler.cs", "public static class Handler {\n    public static object Handle(Kiln.Request req) { return \"stem:\" + req.Text; }\n}\n"},
	} {
		name := "stem-" + c.rt
		dir := writeFiles(t, map[string]string{c.file: c.src, "kiln.yaml": "name: " + name + "\nruntime: " + c.rt + "\n"})
		eventually(t, stemReadyTimeout, "a frozen "+c.rt+" stem cell", func() bool {
			return strings.Contains(k.logs.String(), `"msg":"stem cell ready","runtime":"`+c.rt+`"`)
		})
		if out, err := kilnCLI(t, k, dir, "", "deploy"); err != nil {
			t.Fatalf("kiln deploy %s: %v\n%s", name, err, out)
		}
		r, err := invoke(k.url, name, "x")
		if err != nil || r.status != 200 || string(r.body) != "stem:x" {
			t.Fatalf("%s: %v %d %q", name, err, r.status, r.body)
		}
		if got := r.header.Get("X-Kiln-Start"); got != "stem" {
			t.Errorf("%s's first call started %q, want stem", name, got)
		}
	}
}

// stemReadyTimeout bounds the wait for a runtime's stem cell to be up.
const stemReadyTimeout = 60 * time.Second

// doHeader sends a request with one extra header (no token).
func (k *kilnd) doHeader(t *testing.T, method, path, key, value string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, k.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(key, value)
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
