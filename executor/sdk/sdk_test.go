package sdk_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kilnfx/kiln/executor/sdk"
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
	dir, err := os.MkdirTemp("/tmp", "ksdk") // short: a socket's path is bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &agentSide{sock: filepath.Join(dir, "agent.sock"), sessions: make(chan *session, 4)}
	ln, err := net.Listen("unix", a.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(pb.MaxMessageBytes))
	pb.RegisterAgentServer(srv, a)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return a
}

// running is a call of sdk.RunFunction: done is closed when it returned
// err.
type running struct {
	done chan struct{}
	err  error
}

// wait waits for Run to return and returns its error.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// run starts the executor side, sdk.RunFunction with h, and returns the
// agent's session once it said Ready. The session ends, and Run is waited
// for, when the test ends.
func (a *agentSide) run(t *testing.T, ctx context.Context, h sdk.Handler) (*session, *running) {
	t.Helper()
	r := &running{done: make(chan struct{})}
	go func() { r.err = sdk.RunFunction(ctx, a.sock, "hello", h); close(r.done) }()
	var s *session
	select {
	case s = <-a.sessions:
	case <-r.done:
		t.Fatalf("Run returned before a session: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("no session")
	}
	m := s.next(t)
	if s.ready = m.GetReady(); s.ready == nil {
		t.Fatalf("first message %v, want Ready", m)
	}
	t.Cleanup(func() {
		s.close()
		r.wait(t)
	})
	return s, r
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
	case <-time.After(10 * time.Second):
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

// call sends an Invoke of body and returns its Result.
func (s *session) call(t *testing.T, id, body string) *pb.Result {
	t.Helper()
	s.invoke(t, &pb.Invoke{CallId: id, Body: []byte(body)})
	return s.result(t, id)
}

// echo answers with the request's body.
func echo(_ context.Context, req *sdk.Request) (*sdk.Response, error) {
	return &sdk.Response{Body: req.Body}, nil
}

func TestReady(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), echo)
	if s.ready.Runtime != "go" || s.ready.Pid != int32(os.Getpid()) || s.ready.Function != "hello" || !strings.HasPrefix(s.ready.Version, "go") {
		t.Errorf("Ready = %v", s.ready)
	}
}

// TestDispatch checks that an Invoke reaches the handler as a Request and
// its Response comes back as the Result of the same call.
func TestDispatch(t *testing.T) {
	a := newAgent(t)
	got := make(chan *sdk.Request, 1)
	var deadline time.Time
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		deadline, _ = ctx.Deadline()
		got <- req
		h := http.Header{}
		h.Add("X-Out", "1")
		h.Add("X-Out", "2")
		return &sdk.Response{Status: http.StatusCreated, Header: h, Body: []byte("answer")}, nil
	})
	want := time.Now().Add(time.Minute).Truncate(time.Microsecond)
	s.invoke(t, &pb.Invoke{
		CallId: "call-1", DeadlineUnixNano: want.UnixNano(), Method: "PUT", Path: "/sub/path", Query: "a=1&b=2",
		Headers: []*pb.Header{{Key: "X-In", Value: "1"}, {Key: "X-In", Value: "2"}, {Key: "Content-Type", Value: "text/plain"}},
		Body:    []byte("question"),
	})
	r := s.result(t, "call-1")
	req := <-got
	if req.ID != "call-1" || req.Method != "PUT" || req.Path != "/sub/path" || req.Query != "a=1&b=2" || string(req.Body) != "question" ||
		strings.Join(req.Header.Values("X-In"), ",") != "1,2" || req.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("request %+v", req)
	}
	if !deadline.Equal(want) {
		t.Errorf("ctx deadline %v, want %v", deadline, want)
	}
	if r.Status != http.StatusCreated || string(r.Body) != "answer" || r.Error != "" || r.ExecNs <= 0 || r.MaxRssBytes <= 0 {
		t.Errorf("result %v", r)
	}
	var outs []string
	for _, h := range r.Headers {
		if h.Key == "X-Out" {
			outs = append(outs, h.Value)
		}
	}
	if strings.Join(outs, ",") != "1,2" {
		t.Errorf("result headers %v", r.Headers)
	}
	// No deadline: none on ctx; no headers: a nil Header.
	s.invoke(t, &pb.Invoke{CallId: "call-2"})
	s.result(t, "call-2")
	if req := <-got; req.Header != nil || deadline != (time.Time{}) {
		t.Errorf("request without headers or deadline %+v, deadline %v", req, deadline)
	}
}

// TestStatusesAndErrors checks how a handler's answer and error become the
// Result's status and error.
func TestStatusesAndErrors(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		switch string(req.Body) {
		case "nil":
			return nil, nil
		case "error":
			return nil, errors.New("it broke")
		case "error with answer":
			return &sdk.Response{Status: http.StatusServiceUnavailable, Body: []byte("later")}, errors.New("busy")
		case "error with body":
			return &sdk.Response{Body: []byte("partial")}, errors.New("half done")
		}
		return &sdk.Response{Body: []byte("ok")}, nil
	})
	for _, tt := range []struct {
		body, wantBody, wantErr string
		wantStatus              int32
	}{
		{"ok", "ok", "", 0}, // 0: the agent answers 200
		{"nil", "", "", 0},
		{"error", "", "it broke", 500},
		{"error with answer", "later", "busy", 503},
		{"error with body", "partial", "half done", 500},
	} {
		r := s.call(t, tt.body, tt.body)
		if r.Status != tt.wantStatus || string(r.Body) != tt.wantBody || r.Error != tt.wantErr {
			t.Errorf("%s: result status %d body %q error %q; want %d %q %q", tt.body, r.Status, r.Body, r.Error, tt.wantStatus, tt.wantBody, tt.wantErr)
		}
	}
}

// TestHelperUsage checks that a Response's Usage is added to the call's
// CPU figures and bounds its peak memory from below.
func TestHelperUsage(t *testing.T) {
	a := newAgent(t)
	const helperRSS = 1 << 40 // more than this process will ever have
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		if string(req.Body) == "helper" {
			return &sdk.Response{Usage: &sdk.Usage{CPUUser: time.Hour, CPUSystem: 2 * time.Hour, MaxRSSBytes: helperRSS}}, errors.New("failed too")
		}
		return &sdk.Response{Usage: &sdk.Usage{MaxRSSBytes: 1}}, nil
	})
	r := s.call(t, "h", "helper")
	if r.CpuUserNs < int64(time.Hour) || r.CpuUserNs > int64(time.Hour+time.Minute) ||
		r.CpuSysNs < int64(2*time.Hour) || r.CpuSysNs > int64(2*time.Hour+time.Minute) || r.MaxRssBytes != helperRSS || r.Error != "failed too" {
		t.Errorf("result with a helper's usage: cpu %v+%v, max rss %d, error %q", time.Duration(r.CpuUserNs), time.Duration(r.CpuSysNs), r.MaxRssBytes, r.Error)
	}
	// A smaller helper peak leaves the executor's own.
	if r := s.call(t, "small", "small"); r.MaxRssBytes < 1<<20 || r.CpuUserNs > int64(time.Minute) {
		t.Errorf("result with a small helper: cpu %v, max rss %d", time.Duration(r.CpuUserNs), r.MaxRssBytes)
	}
}

// TestPanicFailsOnlyItsCall checks that a handler's panic is its call's
// function error and the session goes on.
func TestPanicFailsOnlyItsCall(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		if string(req.Body) == "panic" {
			panic("oh no")
		}
		return echo(ctx, req)
	})
	r := s.call(t, "p", "panic")
	if r.CallId != "p" || r.Status != 500 || !strings.Contains(r.Error, "handler panicked: oh no") || r.ExecNs <= 0 {
		t.Errorf("result of a panic %v", r)
	}
	if r := s.call(t, "after", "fine"); r.Error != "" || string(r.Body) != "fine" {
		t.Errorf("result after a panic %v", r)
	}
}

// TestCancel checks that a Cancel reaches the call's handler as ctx.Done
// and leaves the other calls alone.
func TestCancel(t *testing.T) {
	a := newAgent(t)
	started := make(chan string, 2)
	ended := make(chan error, 2)
	release := make(chan struct{})
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		started <- req.ID
		select {
		case <-ctx.Done():
			ended <- ctx.Err()
			return nil, ctx.Err()
		case <-release:
			return &sdk.Response{Body: []byte("released")}, nil
		}
	})
	s.invoke(t, &pb.Invoke{CallId: "a"})
	s.invoke(t, &pb.Invoke{CallId: "b"})
	<-started
	<-started
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Cancel{Cancel: &pb.Cancel{CallId: "a"}}})
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("ctx.Err() = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled call's ctx did not end")
	}
	if r := s.result(t, "a"); r.Error == "" {
		t.Errorf("cancelled call's result %v", r)
	}
	// A Cancel of an unknown or finished call does nothing.
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Cancel{Cancel: &pb.Cancel{CallId: "a"}}})
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Cancel{Cancel: &pb.Cancel{CallId: "nope"}}})
	close(release)
	if r := s.result(t, "b"); r.Error != "" || string(r.Body) != "released" {
		t.Errorf("the other call's result %v", r)
	}
}

// TestDeadlinePassed checks that a call's deadline ends its ctx.
func TestDeadlinePassed(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	s.invoke(t, &pb.Invoke{CallId: "late", DeadlineUnixNano: time.Now().Add(20 * time.Millisecond).UnixNano()})
	if r := s.result(t, "late"); r.Error != context.DeadlineExceeded.Error() || r.Status != 500 {
		t.Errorf("result %v", r)
	}
}

func TestPing(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), echo)
	s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Ping{Ping: &pb.Ping{Seq: 7}}})
	if m := s.next(t); m.GetPong().GetSeq() != 7 {
		t.Errorf("answer to a ping %v", m)
	}
}

// TestCallsRunConcurrently checks that calls run at once, each answered
// under its own id whatever the order they finish in.
func TestCallsRunConcurrently(t *testing.T) {
	const n = 50
	a := newAgent(t)
	var wg sync.WaitGroup
	wg.Add(n)
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		wg.Done()
		wg.Wait() // every call is running
		return &sdk.Response{Body: []byte("re:" + req.ID)}, nil
	})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "call-" + strconv.Itoa(i)
		s.invoke(t, &pb.Invoke{CallId: ids[i]})
	}
	for i := n - 1; i >= 0; i-- {
		if r := s.result(t, ids[i]); string(r.Body) != "re:"+ids[i] {
			t.Errorf("result of %s: %v", ids[i], r)
		}
	}
}

// TestRunEnds checks how Run returns: nil when the agent ends the session
// or ctx ends, an error when there is no agent or no handler.
func TestRunEnds(t *testing.T) {
	a := newAgent(t)
	s, r := a.run(t, context.Background(), echo)
	s.close()
	if err := r.wait(t); err != nil {
		t.Errorf("Run after the agent ended the session = %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	_, r = a.run(t, ctx, echo)
	cancel()
	if err := r.wait(t); err != nil {
		t.Errorf("Run after ctx ended = %v", err)
	}

	if err := sdk.RunFunction(context.Background(), filepath.Join(t.TempDir(), "none.sock"), "hello", echo); err == nil {
		t.Error("Run without an agent succeeded")
	}
	if err := sdk.RunFunction(context.Background(), a.sock, "hello", nil); err == nil {
		t.Error("Run of a nil handler succeeded")
	}
}

// TestServeExits runs Serve in a child process: it exits 0 when the agent
// ends the session and 1, saying why, when there is no agent.
func TestServeExits(t *testing.T) {
	if os.Getenv("KILN_SDK_TEST_SERVE") == "1" {
		sdk.Serve(echo)
		return
	}
	a := newAgent(t)
	child := func(socket string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestServeExits$")
		cmd.Env = append(os.Environ(), "KILN_SDK_TEST_SERVE=1", sdk.EnvSocket+"="+socket, sdk.EnvFunction+"=served")
		return cmd
	}
	cmd := child(a.sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var s *session
	select {
	case s = <-a.sessions:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the child did not open a session")
	}
	if m := s.next(t); m.GetReady().GetFunction() != "served" || m.GetReady().GetPid() != int32(cmd.Process.Pid) {
		t.Errorf("child's Ready %v", m)
	}
	if r := s.call(t, "c", "hi"); string(r.Body) != "hi" {
		t.Errorf("child's result %v", r)
	}
	s.close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("Serve after the agent ended the session: %v", err)
	}

	cmd = child(filepath.Join(t.TempDir(), "none.sock"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(stderr.String(), "kiln executor:") {
		t.Errorf("Serve without an agent: %v, stderr %q", err, stderr.String())
	}
}

// TestResponseTooLarge checks that an answer over the limit is replaced by
// a Result of class response_too_large, and that the session serves on.
func TestResponseTooLarge(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		switch string(req.Body) {
		case "limit":
			return &sdk.Response{Body: make([]byte, sdk.MaxResponseBytes)}, nil
		case "over":
			return &sdk.Response{Body: make([]byte, sdk.MaxResponseBytes+1)}, nil
		case "headers":
			return &sdk.Response{Header: http.Header{"X-Big": {strings.Repeat("h", sdk.MaxResponseBytes/2+1)}}, Body: make([]byte, sdk.MaxResponseBytes/2)}, nil
		}
		return &sdk.Response{Body: []byte("ok")}, nil
	})
	if r := s.call(t, "limit", "limit"); r.ErrorClass != "" || len(r.Body) != sdk.MaxResponseBytes {
		t.Errorf("an answer at the limit: class %q, %d bytes, error %q", r.ErrorClass, len(r.Body), r.Error)
	}
	for _, body := range []string{"over", "headers"} {
		r := s.call(t, body, body)
		if r.ErrorClass != pb.ErrorClassResponseTooLarge || len(r.Body) != 0 || len(r.Headers) != 0 || !strings.Contains(r.Error, "limit") || r.ExecNs <= 0 {
			t.Errorf("%s: class %q, %d bytes, %d headers, error %q, exec %d ns", body, r.ErrorClass, len(r.Body), len(r.Headers), r.Error, r.ExecNs)
		}
	}
	if r := s.call(t, "after", "after"); string(r.Body) != "ok" {
		t.Errorf("after a refused answer: %q %q", r.Body, r.Error)
	}
}

// TestHandlerSaysTooLarge checks that a handler error wrapping
// ErrResponseTooLarge is sent as that class, not as the function's error.
func TestHandlerSaysTooLarge(t *testing.T) {
	a := newAgent(t)
	s, _ := a.run(t, context.Background(), func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		return &sdk.Response{Body: []byte("partial")}, fmt.Errorf("%w: the worker answered too much", sdk.ErrResponseTooLarge)
	})
	r := s.call(t, "relay", "x")
	if r.ErrorClass != pb.ErrorClassResponseTooLarge || len(r.Body) != 0 || !strings.Contains(r.Error, "worker answered too much") {
		t.Errorf("result class %q body %q error %q", r.ErrorClass, r.Body, r.Error)
	}
}
