package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// agent is the agent's side of the executor protocol: it hands each
// Session stream to the test and holds it open until the test ends.
type agent struct {
	pb.UnimplementedAgentServer
	streams chan pb.Agent_SessionServer
	end     chan struct{}
}

func (a *agent) Session(stream pb.Agent_SessionServer) error {
	a.streams <- stream
	select {
	case <-a.end:
	case <-stream.Context().Done():
	}
	return nil
}

// build builds kiln-executor as kilnd runs it: static.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kiln-executor")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func requirePython(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3 is not installed (make setup installs it): %v", err)
		}
		t.Skip("python3 is not installed")
	}
}

// TestPythonFunction runs the built executor for a python3 function: it
// says Ready as the function, answers a call, and exits 1 when the worker
// dies.
func TestPythonFunction(t *testing.T) {
	requirePython(t)
	bin := build(t)
	dir, err := os.MkdirTemp("/tmp", "kexe") // short: a socket's path is bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	handler := "import os\ndef handle(req):\n    if req.path == '/crash':\n        os._exit(3)\n    return b'py:' + req.body\n"
	if err := os.WriteFile(filepath.Join(dir, "handler.py"), []byte(handler), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{streams: make(chan pb.Agent_SessionServer, 1), end: make(chan struct{})}
	srv := grpc.NewServer()
	pb.RegisterAgentServer(srv, a)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	t.Cleanup(func() { close(a.end) })

	var logs bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "KILN_RUNTIME=python3", "KILN_SOCKET="+sock, "KILN_FUNCTION=hello", "KILN_CODE_DIR="+dir, "KILN_HANDLER=handler.py")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	var stream pb.Agent_SessionServer
	select {
	case stream = <-a.streams:
	case err := <-exited:
		t.Fatalf("the executor exited: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("no session")
	}
	m, err := stream.Recv()
	if r := m.GetReady(); err != nil || r.Runtime != "python3" || r.Function != "hello" || r.Pid != int32(cmd.Process.Pid) {
		t.Fatalf("first message %v, %v", m, err)
	}
	invoke := func(id, path string) {
		t.Helper()
		if err := stream.Send(&pb.AgentMsg{Msg: &pb.AgentMsg_Invoke{Invoke: &pb.Invoke{CallId: id, Path: path, Body: []byte("hi")}}}); err != nil {
			t.Fatal(err)
		}
	}
	invoke("a", "/")
	if m, err := stream.Recv(); err != nil || string(m.GetResult().GetBody()) != "py:hi" {
		t.Fatalf("result %v, %v", m, err)
	}
	invoke("b", "/crash")
	select {
	case err := <-exited:
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(logs.String(), "exit status 3") {
			t.Errorf("the executor exited with %d (%v); logs:\n%s", code, err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the executor did not exit when its worker did")
	}
}

// TestLoadErrorExits checks that a handler that does not load makes the
// executor exit 1 with the reason in its logs, before it dials the agent.
func TestLoadErrorExits(t *testing.T) {
	requirePython(t)
	bin := build(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "handler.py"), []byte("import no_such_module\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "KILN_RUNTIME=python3", "KILN_SOCKET="+filepath.Join(dir, "none.sock"), "KILN_CODE_DIR="+dir, "KILN_HANDLER=handler.py")
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "No module named 'no_such_module'") {
		t.Errorf("exit %v; output:\n%s", err, out)
	}
}
