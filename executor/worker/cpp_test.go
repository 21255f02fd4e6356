package worker_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/kilnfx/kiln/executor/worker"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// startCpp serves worker.CppTestHandler, compiled, in function mode with
// env added, and returns the session once it said Ready.
func startCpp(t *testing.T, env ...string) (*session, *running) {
	t.Helper()
	dir, handler := worker.CompileCpp(t, worker.CppTestHandler)
	a := newAgent(t)
	r := a.serve(t, worker.Config{
		Runtime: "cpp", Function: "hello", CodeDir: dir, Handler: handler,
		Env: append(os.Environ(), env...),
	})
	s := a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Runtime != "cpp" || s.ready.Function != "hello" || !strings.HasPrefix(s.ready.Version, "g++ ") {
		t.Errorf("Ready = %v", s.ready)
	}
	return s, r
}

func TestCppRequestReachesHandler(t *testing.T) {
	s, _ := startCpp(t)
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
	s.invoke(t, &pb.Invoke{CallId: "h", Path: "/headers", Headers: []*pb.Header{{Key: "X-Other", Value: "\x01 \"é\" \\ \u2028"}}})
	if r := s.result(t, "h"); header(r, "X-Other") != "\x01 \"é\" \\ \u2028" {
		t.Errorf("a header came back as %q", header(r, "X-Other"))
	}
	// A big body, written apart from its frame's header both ways.
	big := strings.Repeat("0123456789", 100_000)
	if r := s.call(t, "e2", "/echo", big); string(r.Body) != big {
		t.Errorf("a body of %d bytes came back as %d bytes", len(big), len(r.Body))
	}
	if r := s.call(t, "st", "/status", ""); r.Status != 201 || header(r, "X-T") != "a,b" || string(r.Body) != "made" {
		t.Errorf("a response with a status: %v", r)
	}
}

func TestCppException(t *testing.T) {
	s, r := startCpp(t)
	for _, tt := range []struct{ path, err string }{
		{"/raise", "bad thing"},
		{"/raise-other", "unknown exception"},
	} {
		res := s.call(t, tt.path, tt.path, "")
		if res.Status != 500 || res.Error != tt.err {
			t.Errorf("%s: status %d error %q, want 500 %q", tt.path, res.Status, res.Error, tt.err)
		}
	}
	waitFor(t, func() bool { return strings.Contains(r.logs.String(), "kiln: call /raise failed: bad thing") }, "the exception in the logs")
	if res := s.call(t, "after", "/status", ""); res.Status != 201 {
		t.Errorf("the call after an exception: %v", res)
	}
}

func TestCppPrintingHandlerAnswersIntact(t *testing.T) {
	s, r := startCpp(t)
	if res := s.call(t, "p", "/print", ""); res.Status != 200 || string(res.Body) != "intact" {
		t.Errorf("result %v", res)
	}
	line := strings.Repeat("x", 1000) + "\n"
	waitFor(t, func() bool { return strings.Count(r.logs.String(), line) == 2000 }, "the 2000 lines printed to reach the logs")
}

// TestCppCrash checks that the program's exit fails the calls in flight
// and ends Serve with the exit status.
func TestCppCrash(t *testing.T) {
	s, r := startCpp(t, "KILN_CONCURRENCY=2")
	s.invoke(t, &pb.Invoke{CallId: "crash", Path: "/crash"})
	s.invoke(t, &pb.Invoke{CallId: "queued", Path: "/status"})
	for m := range s.msgs {
		if res := m.GetResult(); res != nil && res.Error == "" {
			t.Errorf("a call succeeded after the crash: %v", res)
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

func TestCppMissingProgram(t *testing.T) {
	a := newAgent(t)
	r := a.serve(t, worker.Config{Runtime: "cpp", CodeDir: t.TempDir(), Handler: "handler"})
	if err := r.wait(t); !errors.Is(err, worker.ErrLoad) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Serve returned %v, want a load error", err)
	}
}

// TestCppStem checks stem mode: Ready with no function and no worker,
// then Init starts the program it names, with its environment and
// directory.
func TestCppStem(t *testing.T) {
	a := newAgent(t)
	r := a.serve(t, worker.Config{Runtime: "cpp"})
	s := a.session(t, r)
	if s.ready.Function != "" || s.ready.Runtime != "cpp" {
		t.Errorf("stem Ready = %v", s.ready)
	}
	dir, handler := worker.CompileCpp(t, worker.CppTestHandler)
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Init{Init: &pb.Init{
		Function: "hello", CodePath: dir, Handler: handler, Env: map[string]string{"GREETING": "from init"},
	}}})
	s.close()
	s = a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Function != "hello" || s.ready.Runtime != "cpp" {
		t.Errorf("Ready after Init = %v", s.ready)
	}
	if res := s.call(t, "pid", "/pid", ""); string(res.Body) != strconv.Itoa(workerPid(t)) {
		t.Errorf("the function runs in process %s, not the executor's child", res.Body)
	}
	if res := s.call(t, "env", "/env", ""); string(res.Body) != "from init" {
		t.Errorf("GREETING = %q", res.Body)
	}
	if res := s.call(t, "cwd", "/cwd", ""); string(res.Body) != dir {
		t.Errorf("working directory %q, want %q", res.Body, dir)
	}
}
