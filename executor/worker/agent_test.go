package worker_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kilnfx/kiln/executor/worker"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// agentSide is a minimal agent: the gRPC server of the executor protocol
// on a unix socket, handing each Session to the test.
type agentSide struct {
	pb.UnimplementedAgentServer
	sock     string
	sessions chan *session
}

// session is the agent's side of one executor's Session stream.
type session struct {
	stream pb.Agent_SessionServer
	msgs   chan *pb.ExecutorMsg // what the executor sent; closed when it stops
	end    chan struct{}        // closing it ends the Session
	ready  *pb.Ready

	mu      sync.Mutex
	results map[string]*pb.Result // received, not yet asked for
}

// Session implements pb.AgentServer.
func (a *agentSide) Session(stream pb.Agent_SessionServer) error {
	s := &session{stream: stream, msgs: make(chan *pb.ExecutorMsg, 256), end: make(chan struct{}), results: map[string]*pb.Result{}}
	go func() {
		defer close(s.msgs)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			s.msgs <- m
		}
	}()
	a.sessions <- s
	select {
	case <-s.end:
	case <-stream.Context().Done():
	}
	return nil
}

// newAgent serves the executor protocol on a socket in a fresh directory.
func newAgent(t *testing.T) *agentSide {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kwrk") // short: a socket's path is bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &agentSide{sock: filepath.Join(dir, "agent.sock"), sessions: make(chan *session, 4)}
	ln, err := net.Listen("unix", a.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterAgentServer(srv, a)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return a
}

// session waits for the executor's next session and its Ready.
func (a *agentSide) session(t *testing.T, r *running) *session {
	t.Helper()
	var s *session
	select {
	case s = <-a.sessions:
	case <-r.done:
		t.Fatalf("the executor returned before a session: %v\nlogs:\n%s", r.err, r.logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("no session")
	}
	m := s.next(t)
	if s.ready = m.GetReady(); s.ready == nil {
		t.Fatalf("first message %v, want Ready", m)
	}
	return s
}

// running is a call of worker.Serve: done is closed when it returned err.
type running struct {
	done chan struct{}
	err  error
	logs *syncBuffer // the function's stdout and stderr
}

// wait waits for Serve to return and returns its error.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

// serve runs worker.Serve with cfg against a, its socket filled in and
// its logs kept; the test's end cancels it and waits for it.
func (a *agentSide) serve(t *testing.T, cfg worker.Config) *running {
	t.Helper()
	r := &running{done: make(chan struct{}), logs: &syncBuffer{}}
	cfg.Socket = a.sock
	cfg.Stdout, cfg.Stderr = r.logs, r.logs
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.err = worker.Serve(ctx, cfg); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		r.wait(t)
		if t.Failed() {
			logs := r.logs.String()
			if len(logs) > 4096 {
				logs = "..." + logs[len(logs)-4096:]
			}
			t.Logf("function logs:\n%s", logs)
		}
	})
	return r
}

// close ends the session from the agent's side, once.
func (s *session) close() {
	select {
	case <-s.end:
	default:
		close(s.end)
	}
}

func (s *session) next(t *testing.T) *pb.ExecutorMsg {
	t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			t.Fatal("the executor ended the session")
		}
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no message from the executor")
		return nil
	}
}

func (s *session) send(t *testing.T, m *pb.AgentMsg) {
	t.Helper()
	if err := s.stream.Send(m); err != nil {
		t.Fatal(err)
	}
}

func (s *session) invoke(t *testing.T, inv *pb.Invoke) {
	t.Helper()
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Invoke{Invoke: inv}})
}

func (s *session) cancel(t *testing.T, id string) {
	t.Helper()
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Cancel{Cancel: &pb.Cancel{CallId: id}}})
}

// result waits for the Result of call id, keeping those of other calls.
func (s *session) result(t *testing.T, id string) *pb.Result {
	t.Helper()
	for {
		s.mu.Lock()
		r, ok := s.results[id]
		delete(s.results, id)
		s.mu.Unlock()
		if ok {
			return r
		}
		m := s.next(t)
		if r := m.GetResult(); r != nil {
			s.mu.Lock()
			s.results[r.CallId] = r
			s.mu.Unlock()
			continue
		}
		t.Fatalf("message %v, want a Result", m)
	}
}

// call sends an Invoke of path and body and returns its Result.
func (s *session) call(t *testing.T, id, path, body string) *pb.Result {
	t.Helper()
	s.invoke(t, &pb.Invoke{CallId: id, Method: "POST", Path: path, Body: []byte(body)})
	return s.result(t, id)
}

// header returns the values of key in r's headers, joined by ",".
func header(r *pb.Result, key string) string {
	var vs []byte
	for _, h := range r.Headers {
		if h.Key == key {
			if len(vs) > 0 {
				vs = append(vs, ',')
			}
			vs = append(vs, h.Value...)
		}
	}
	return string(vs)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// requireCommand skips the test when name is not installed, unless in CI
// (CI=true), where it fails.
func requireCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (make setup installs it): %v", name, err)
		}
		t.Skipf("%s is not installed: %v", name, err)
	}
}

// codeDir writes files (name → content) into a fresh code directory.
func codeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		writeFile(t, dir, name, content)
	}
	return dir
}

// writeFile writes an executable file name into dir.
func writeFile(t testing.TB, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}
