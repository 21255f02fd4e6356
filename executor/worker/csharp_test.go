package worker_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnfx/kiln/executor/worker"
	pb "github.com/kilnfx/kiln/proto/executorpb"
	"github.com/kilnfx/kiln/runtimes/csharp"
)

// The csharp runtime's worker is the function's own program, compiled by
// csharp.Build, so its tests compile a handler answering, by path, the
// cases of the interpreted languages' suite.

const csharpHandler = `using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using Kiln;

public static class Handler
{
    static readonly string greeting = Environment.GetEnvironmentVariable("GREETING") ?? "";

    public static object Handle(Request req)
    {
        switch (req.Path)
        {
        case "/echo":
            return new Response(200, new Dictionary<string, object> {
                { "X-Method", req.Method }, { "X-Path", req.Path }, { "X-Query", req.Query },
                { "X-In", req.Headers.ContainsKey("x-in") ? req.Headers["x-in"] : "" },
                { "X-All", req.HeaderList.Where(kv => kv.Key == "X-In").Select(kv => kv.Value).ToList() },
            }, req.Body);
        case "/json": return new Dictionary<string, object> { { "a", 1 }, { "b", new[] { 1, 2 } } };
        case "/list": return new List<int> { 1, 2 };
        case "/anon": return new { name = "k\"iln", ok = true, n = 1.5, none = (string)null };
        case "/str": return "h\u00e9llo";
        case "/bytes": return new byte[] { 0, 1 };
        case "/none": return null;
        case "/tuple": return new Response(201, new Dictionary<string, object> { { "X-T", new[] { "a", "b" } } },
            new Dictionary<string, object> { { "made", true } });
        case "/raise": throw new ArgumentException("bad thing");
        case "/badtype": return new Func<int>(() => 1);
        case "/print":
            for (int i = 0; i < 2000; i++) Console.WriteLine(new string('x', 1000));
            return "intact";
        case "/sleep": Thread.Sleep(200); return "slept";
        case "/loop":
            while (!req.Cancelled) Thread.Sleep(5);
            Console.Error.WriteLine("cancelled " + req.Id);
            return "late";
        case "/burn": {
            var end = Process.GetCurrentProcess().UserProcessorTime + TimeSpan.FromMilliseconds(100);
            long n = 0;
            while (Process.GetCurrentProcess().UserProcessorTime < end)
                for (int i = 0; i < 100000; i++) n += i;
            return "burnt";
        }
        case "/alloc": {
            var b = new byte[50 << 20];
            for (int i = 0; i < b.Length; i += 4096) b[i] = 1;
            return b.Length.ToString();
        }
        case "/crash": Environment.Exit(3); return null;
        case "/env": return greeting;
        case "/pid": return Process.GetCurrentProcess().Id.ToString();
        case "/cwd": return Environment.CurrentDirectory;
        case "/json-in": return req.Json();
        }
        return "unknown";
    }
}
`

// buildCSharp compiles source, the function's Handler.cs, and returns its
// code directory, which holds the program only (as a deployed function's
// does).
func buildCSharp(t *testing.T, source string) string {
	t.Helper()
	requireCommand(t, "mono")
	requireCommand(t, "mcs")
	src := codeDir(t, map[string]string{"Handler.cs": source})
	program, err := csharp.Build(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data, err := os.ReadFile(program)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, csharp.Handler, string(data))
	return dir
}

// startCSharp serves the csharp handler in function mode with env added,
// and returns the session once it said Ready.
func startCSharp(t *testing.T, env ...string) (*session, *running) {
	t.Helper()
	dir := buildCSharp(t, csharpHandler)
	a := newAgent(t)
	r := a.serve(t, worker.Config{
		Runtime: csharp.Name, Function: "hello", CodeDir: dir, Handler: csharp.Handler,
		Env: append(os.Environ(), env...),
	})
	s := a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Runtime != csharp.Name || s.ready.Function != "hello" || s.ready.Version == "" {
		t.Errorf("Ready = %v", s.ready)
	}
	return s, r
}

func TestCSharpRequestReachesHandler(t *testing.T) {
	s, _ := startCSharp(t)
	s.invoke(t, &pb.Invoke{
		CallId: "e1", Method: "PUT", Path: "/echo", Query: "a=1&b=2",
		Headers: []*pb.Header{{Key: "X-In", Value: "1"}, {Key: "X-In", Value: "2"}, {Key: "X-Other", Value: "\x01 \"é\" \\"}},
		Body:    []byte("body \x00\xff bytes"),
	})
	r := s.result(t, "e1")
	if r.Status != 200 || r.Error != "" || string(r.Body) != "body \x00\xff bytes" {
		t.Errorf("result %v", r)
	}
	for key, want := range map[string]string{"X-Method": "PUT", "X-Path": "/echo", "X-Query": "a=1&b=2", "X-In": "2", "X-All": "1,2"} {
		if got := header(r, key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	big := strings.Repeat("0123456789", 100_000)
	if r := s.call(t, "e2", "/echo", big); string(r.Body) != big {
		t.Errorf("a body of %d bytes came back as %d bytes", len(big), len(r.Body))
	}
	if r := s.call(t, "j", "/json-in", `{"a": [1, 2.5, "x\u00e9\n", null, true], "b": {}}`); string(r.Body) != `{"a":[1,2.5,"xé\n",null,true],"b":{}}` {
		t.Errorf("JSON in and out: %q", r.Body)
	}
}

func TestCSharpReturnConventions(t *testing.T) {
	s, _ := startCSharp(t)
	for i, tt := range []struct {
		path, body, contentType, err string
		status                       int32
	}{
		{path: "/json", body: `{"a":1,"b":[1,2]}`, contentType: "application/json", status: 200},
		{path: "/list", body: `[1,2]`, contentType: "application/json", status: 200},
		{path: "/anon", body: `{"name":"k\"iln","ok":true,"n":1.5,"none":null}`, contentType: "application/json", status: 200},
		{path: "/str", body: "héllo", status: 200},
		{path: "/bytes", body: "\x00\x01", status: 200},
		{path: "/none", body: "", status: 200},
		{path: "/tuple", body: `{"made":true}`, contentType: "application/json", status: 201},
		{path: "/raise", err: "bad thing", status: 500},
	} {
		r := s.call(t, "c"+strconv.Itoa(i), tt.path, "")
		if r.Status != tt.status || string(r.Body) != tt.body || r.Error != tt.err || header(r, "Content-Type") != tt.contentType {
			t.Errorf("%s: status %d body %q error %q content-type %q; want %d %q %q %q",
				tt.path, r.Status, r.Body, r.Error, header(r, "Content-Type"), tt.status, tt.body, tt.err, tt.contentType)
		}
	}
	if r := s.call(t, "t", "/tuple", ""); header(r, "X-T") != "a,b" {
		t.Errorf("a repeated header came back as %v", r.Headers)
	}
	if r := s.call(t, "bad", "/badtype", ""); r.Status != 500 || !strings.Contains(r.Error, "handler returned a") {
		t.Errorf("an unsupported return value gave %v", r)
	}
}

func TestCSharpPrintingHandlerAnswersIntact(t *testing.T) {
	s, r := startCSharp(t)
	if res := s.call(t, "p", "/print", ""); res.Status != 200 || string(res.Body) != "intact" {
		t.Errorf("result %v", res)
	}
	line := strings.Repeat("x", 1000) + "\n"
	waitFor(t, func() bool { return strings.Count(r.logs.String(), line) == 2000 }, "the 2000 lines printed to reach the logs")
}

func TestCSharpCallsOverlap(t *testing.T) {
	s, _ := startCSharp(t, "KILN_CONCURRENCY=4")
	s.call(t, "warm", "/none", "")
	begin := time.Now()
	for i := range 4 {
		s.invoke(t, &pb.Invoke{CallId: "s" + strconv.Itoa(i), Path: "/sleep"})
	}
	for i := range 4 {
		if r := s.result(t, "s"+strconv.Itoa(i)); string(r.Body) != "slept" {
			t.Errorf("result %v", r)
		}
	}
	if took := time.Since(begin); took > 600*time.Millisecond {
		t.Errorf("4 calls of 200ms with concurrency 4 took %v", took)
	}
}

func TestCSharpUsageCoversWorker(t *testing.T) {
	s, _ := startCSharp(t)
	if r := s.call(t, "burn", "/burn", ""); string(r.Body) != "burnt" || r.CpuUserNs < int64(50*time.Millisecond) {
		t.Errorf("a call burning 100ms of CPU: %q, cpu %v user %v system", r.Body, time.Duration(r.CpuUserNs), time.Duration(r.CpuSysNs))
	}
	if r := s.call(t, "alloc", "/alloc", ""); string(r.Body) != strconv.Itoa(50<<20) || r.MaxRssBytes < 40<<20 {
		t.Errorf("a call touching 50 MB: %q, max rss %d bytes", r.Body, r.MaxRssBytes)
	}
}

func TestCSharpCancelReachesWorker(t *testing.T) {
	for _, concurrency := range []string{"1", "4"} {
		t.Run("concurrency "+concurrency, func(t *testing.T) {
			s, r := startCSharp(t, "KILN_CONCURRENCY="+concurrency)
			s.invoke(t, &pb.Invoke{CallId: "loop-1", Path: "/loop"})
			time.Sleep(50 * time.Millisecond)
			s.cancel(t, "loop-1")
			if res := s.result(t, "loop-1"); res.Error != "context canceled" || res.Status != 500 {
				t.Errorf("cancelled call's result %v", res)
			}
			waitFor(t, func() bool { return strings.Contains(r.logs.String(), "cancelled loop-1") }, "the handler to see the cancel")
			s.cancel(t, "unknown")
			if res := s.call(t, "after", "/str", ""); string(res.Body) != "héllo" {
				t.Errorf("result after a cancel %v", res)
			}
		})
	}
}

func TestCSharpWorkerCrash(t *testing.T) {
	s, r := startCSharp(t, "KILN_CONCURRENCY=4")
	s.invoke(t, &pb.Invoke{CallId: "inflight", Path: "/sleep"})
	s.invoke(t, &pb.Invoke{CallId: "crash", Path: "/crash"})
	for m := range s.msgs {
		if res := m.GetResult(); res != nil {
			t.Errorf("a result was sent after the crash: %v", res)
		}
	}
	err := r.wait(t)
	if !errors.Is(err, worker.ErrExited) || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Serve returned %v", err)
	}
	if !strings.Contains(r.logs.String(), "exited: exit status 3") {
		t.Errorf("the exit status is not in the logs:\n%s", r.logs.String())
	}
}

func TestCSharpLoadError(t *testing.T) {
	for name, tt := range map[string]struct{ source, want string }{
		"no handler":        {"public static class Other { public static object Handle(Kiln.Request r) { return null; } }\n", "no class Handler"},
		"static ctor fails": {"public static class Handler {\n static readonly string x = Fail();\n static string Fail() { throw new System.InvalidOperationException(\"boom at load\"); }\n public static object Handle(Kiln.Request r) { return x; }\n}\n", "boom at load"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := buildCSharp(t, tt.source)
			a := newAgent(t)
			r := a.serve(t, worker.Config{Runtime: csharp.Name, CodeDir: dir, Handler: csharp.Handler})
			err := r.wait(t)
			if !errors.Is(err, worker.ErrLoad) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Serve returned %v, want a load error with %q", err, tt.want)
			}
		})
	}
	t.Run("no program", func(t *testing.T) {
		requireCommand(t, "mono")
		a := newAgent(t)
		r := a.serve(t, worker.Config{Runtime: csharp.Name, CodeDir: t.TempDir(), Handler: csharp.Handler})
		if err := r.wait(t); !errors.Is(err, worker.ErrLoad) {
			t.Errorf("Serve returned %v, want a load error", err)
		}
	})
}

// TestCSharpStem checks stem mode: Ready with no function and no worker,
// then Init starts the function's program.
func TestCSharpStem(t *testing.T) {
	dir := buildCSharp(t, csharpHandler)
	a := newAgent(t)
	r := a.serve(t, worker.Config{Runtime: csharp.Name})
	s := a.session(t, r)
	if s.ready.Function != "" || s.ready.Runtime != csharp.Name {
		t.Errorf("stem Ready = %v", s.ready)
	}
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Init{Init: &pb.Init{
		Function: "hello", CodePath: dir, Handler: csharp.Handler, Env: map[string]string{"GREETING": "from init"},
	}}})
	s.close()
	s = a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Function != "hello" || s.ready.Runtime != csharp.Name {
		t.Errorf("Ready after Init = %v", s.ready)
	}
	if res := s.call(t, "pid", "/pid", ""); string(res.Body) != strconv.Itoa(workerPid(t)) {
		t.Errorf("the function runs in process %s, want the worker %d", res.Body, workerPid(t))
	}
	if res := s.call(t, "env", "/env", ""); string(res.Body) != "from init" {
		t.Errorf("GREETING = %q", res.Body)
	}
	if res := s.call(t, "cwd", "/cwd", ""); string(res.Body) != dir {
		t.Errorf("working directory %q, want %q", res.Body, filepath.Clean(dir))
	}
}
