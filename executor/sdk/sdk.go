// Package sdk is the Go function API of kiln.
//
// A function is a Go program whose main calls Serve with its handler:
//
//	func Handle(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
//		return &sdk.Response{Body: req.Body}, nil
//	}
//
//	func main() { sdk.Serve(Handle) }
//
// Built with CGO_ENABLED=0 the program is the whole container: Serve dials the
// agent's socket, says Ready, and runs one handler goroutine per call it is
// sent. The call's deadline is ctx's deadline; a call the caller gave up on is
// cancelled through ctx. A handler that panics fails only its own call.
//
// This package is also copied beside user functions by `kiln init` and
// `kiln deploy`, so it imports only the standard library, gRPC, protobuf and
// kiln's executor protocol.
package sdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// Request is one call to a function.
type Request struct {
	// ID is the call id kiln gave the call.
	ID string
	// Method, Path and Query describe the HTTP request when the call came
	// over HTTP; Path is the part after the function name.
	Method, Path, Query string
	// Header holds the caller's headers.
	Header http.Header
	// Body is the request body. The handler may keep it.
	Body []byte
}

// Response is a function's answer.
type Response struct {
	// Status is the HTTP status; 0 means 200.
	Status int
	// Header is sent back to the caller.
	Header http.Header
	// Body is the response body.
	Body []byte
	// Usage, when not nil, is what processes other than this one used
	// for the call: a worker process or a program the handler ran. The
	// call's CPU figures are this process's own CPU time during the call
	// plus Usage's; its peak memory is the larger of this process's and
	// Usage's. nil adds nothing, as for a handler doing its work itself.
	Usage *Usage
}

// Usage is the resource usage of a call's helper processes, which the
// executor's own figures (getrusage of its process) do not see.
type Usage struct {
	// CPUUser and CPUSystem are the CPU time the helpers spent for the
	// call, in user and kernel mode.
	CPUUser, CPUSystem time.Duration
	// MaxRSSBytes is the helpers' peak resident set size, in bytes; 0
	// when unknown.
	MaxRSSBytes int64
}

// Handler runs one call. An error fails the call with status 500 (or the
// Response's Status when a Response is also returned) and its message.
//
// An answer (body, headers and error message together) is limited to the
// node's response limit, which the agent gives in $KILN_MAX_RESPONSE (at
// most MaxResponseBytes; kilnd's --max-response): a larger one is not
// sent, and the call fails with the error class response_too_large (HTTP
// 502) while the function keeps serving.
type Handler func(ctx context.Context, req *Request) (*Response, error)

// ErrResponseTooLarge, wrapped by a handler's error, fails the call as an
// answer over the limit (error class response_too_large) rather than as
// the function's error: for handlers that relay another process's answer
// and find it too large.
var ErrResponseTooLarge = errors.New("response too large")

// MaxResponseBytes is the largest answer any node accepts: 64 MiB, the
// executor protocol's message limit, less 64 KiB for the rest of the
// message. A node's own limit, in $KILN_MAX_RESPONSE, may be lower.
const MaxResponseBytes = pb.MaxResultBodyBytes

// Environment variables the agent sets for the executor.
const (
	// EnvSocket is the path of the agent's socket inside the container.
	EnvSocket = "KILN_SOCKET"
	// EnvFunction is the name of the function the container serves.
	EnvFunction = "KILN_FUNCTION"
	// DefaultSocket is used when EnvSocket is unset.
	DefaultSocket = "/kiln/agent.sock"
)

// Serve connects to the agent and serves calls with h until the agent ends
// the session. It does not return: it exits the process, with status 0 when
// the agent closed the session and 1 on an error.
func Serve(h Handler) {
	if err := Run(context.Background(), os.Getenv(EnvSocket), h); err != nil {
		fmt.Fprintln(os.Stderr, "kiln executor:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Run connects to the agent at socket (DefaultSocket when empty) and serves
// calls with h until the session ends or ctx is done. It returns nil when the
// agent closed the session. Once ctx is done, the calls still running are
// cancelled and send no Result: the agent answers them itself. The function name it reports is $KILN_FUNCTION.
func Run(ctx context.Context, socket string, h Handler) error {
	return RunFunction(ctx, socket, os.Getenv(EnvFunction), h)
}

// RunFunction is Run reporting the given function name in Ready.
func RunFunction(ctx context.Context, socket, function string, h Handler) error {
	return RunWith(ctx, socket, RunOptions{Function: function}, h)
}

// RunOptions is how an executor introduces itself in its Ready.
type RunOptions struct {
	// Function is the name of the function served.
	Function string
	// Runtime names the runtime serving it; "go" when empty.
	Runtime string
	// Version is the runtime's version; the Go version this program was
	// built with when empty.
	Version string
}

// RunWith is RunFunction with the whole of Ready's introduction given:
// executors serving other languages' functions through a Handler use it
// to name their runtime.
func RunWith(ctx context.Context, socket string, opts RunOptions, h Handler) error {
	if h == nil {
		return errors.New("nil handler")
	}
	if socket == "" {
		socket = DefaultSocket
	}
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<20),
		grpc.WithInitialConnWindowSize(4<<20),
		grpc.WithReadBufferSize(64<<10),
		grpc.WithWriteBufferSize(64<<10),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(pb.MaxMessageBytes), grpc.MaxCallSendMsgSize(pb.MaxMessageBytes)),
	)
	if err != nil {
		return fmt.Errorf("dial agent: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewAgentClient(conn).Session(ctx)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	s := &session{stream: stream, handler: h, calls: make(map[string]context.CancelFunc), maxAnswer: responseLimit()}
	if opts.Runtime == "" {
		opts.Runtime = "go"
	}
	if opts.Version == "" {
		opts.Version = version()
	}
	ready := &pb.ExecutorMsg{Msg: &pb.ExecutorMsg_Ready{Ready: &pb.Ready{
		Runtime:  opts.Runtime,
		Pid:      int32(os.Getpid()),
		Version:  opts.Version,
		Function: opts.Function,
	}}}
	if err := s.send(ready); err != nil {
		return fmt.Errorf("send ready: %w", err)
	}
	return s.serve(ctx)
}

type session struct {
	stream    pb.Agent_SessionClient
	handler   Handler
	maxAnswer int // the largest answer sent, in bytes (responseLimit)

	sendMu sync.Mutex

	mu    sync.Mutex
	calls map[string]context.CancelFunc
}

func (s *session) send(m *pb.ExecutorMsg) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(m)
}

func (s *session) serve(ctx context.Context) error {
	for {
		m, err := s.stream.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return nil
			}
			if isEOF(err) {
				return nil
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := m.Msg.(type) {
		case *pb.AgentMsg_Invoke:
			var trace *pb.CallTrace
			if msg.Invoke.Trace {
				trace = &pb.CallTrace{ReceivedNs: pb.MonotonicNow()}
			}
			s.start(ctx, msg.Invoke, trace)
		case *pb.AgentMsg_Cancel:
			s.mu.Lock()
			cancel := s.calls[msg.Cancel.CallId]
			s.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		case *pb.AgentMsg_Ping:
			_ = s.send(&pb.ExecutorMsg{Msg: &pb.ExecutorMsg_Pong{Pong: &pb.Pong{Seq: msg.Ping.Seq}}})
		}
	}
}

// start runs inv's handler in a goroutine of its own and sends its Result,
// unless parent, the session's context, is done by then; trace, when not
// nil, is completed and sent with it.
func (s *session) start(parent context.Context, inv *pb.Invoke, trace *pb.CallTrace) {
	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if inv.DeadlineUnixNano > 0 {
		ctx, cancel = context.WithDeadline(parent, time.Unix(0, inv.DeadlineUnixNano))
	} else {
		ctx, cancel = context.WithCancel(parent)
	}
	s.mu.Lock()
	s.calls[inv.CallId] = cancel
	s.mu.Unlock()
	go func() {
		res := s.run(ctx, inv, trace)
		s.mu.Lock()
		delete(s.calls, inv.CallId)
		s.mu.Unlock()
		cancel()
		if parent.Err() != nil {
			return // the session is ending: the agent answers the call itself
		}
		if n := answerSize(res); n > s.maxAnswer {
			res = tooLarge(res, overLimit(n, s.maxAnswer))
		}
		if trace != nil {
			trace.SendingNs = pb.MonotonicNow()
			res.Trace = trace
		}
		err := s.send(&pb.ExecutorMsg{Msg: &pb.ExecutorMsg_Result{Result: res}})
		if status.Code(err) == codes.ResourceExhausted && res.ErrorClass == "" {
			// gRPC refused the message as over its size limit, before
			// sending anything: say so rather than leave the call to
			// its timeout.
			res = tooLarge(res, overLimit(proto.Size(res), s.maxAnswer))
			_ = s.send(&pb.ExecutorMsg{Msg: &pb.ExecutorMsg_Result{Result: res}})
		}
	}()
}

// responseLimit is the largest answer the agent accepts: $KILN_MAX_RESPONSE
// when it is a count of bytes from 1 to MaxResponseBytes, else
// MaxResponseBytes.
func responseLimit() int {
	n, err := strconv.Atoi(os.Getenv(pb.EnvMaxResponse))
	if err != nil || n < 1 || n > MaxResponseBytes {
		return MaxResponseBytes
	}
	return n
}

// answerSize is the size of what the handler answered in res: its body,
// headers and error message.
func answerSize(res *pb.Result) int {
	n := len(res.Body) + len(res.Error)
	for _, h := range res.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// tooLarge returns the Result that replaces res, whose answer is over the
// limit: no body nor headers, the error why and the class
// ErrorClassResponseTooLarge, res's figures kept.
func tooLarge(res *pb.Result, why string) *pb.Result {
	return &pb.Result{
		CallId:      res.CallId,
		Status:      http.StatusBadGateway,
		ExecNs:      res.ExecNs,
		CpuUserNs:   res.CpuUserNs,
		CpuSysNs:    res.CpuSysNs,
		MaxRssBytes: res.MaxRssBytes,
		Error:       why,
		ErrorClass:  pb.ErrorClassResponseTooLarge,
	}
}

// overLimit says that an answer of size bytes is over the limit of limit
// bytes.
func overLimit(size, limit int) string {
	return fmt.Sprintf("the function's answer of %d bytes is over the %d byte limit", size, limit)
}

// run calls the handler for one Invoke, turning a panic into an error result.
func (s *session) run(ctx context.Context, inv *pb.Invoke, trace *pb.CallTrace) (res *pb.Result) {
	req := &Request{
		ID:     inv.CallId,
		Method: inv.Method,
		Path:   inv.Path,
		Query:  inv.Query,
		Body:   inv.Body,
	}
	if len(inv.Headers) > 0 {
		req.Header = make(http.Header, len(inv.Headers))
		for _, h := range inv.Headers {
			req.Header[h.Key] = append(req.Header[h.Key], h.Value)
		}
	}
	var (
		before syscall.Rusage
		helper *Usage // resp.Usage, once the handler returned
	)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			res = &pb.Result{
				CallId: inv.CallId,
				Status: http.StatusInternalServerError,
				Error:  fmt.Sprintf("handler panicked: %v", p),
				ExecNs: time.Since(start).Nanoseconds(),
			}
			fmt.Fprintf(os.Stderr, "kiln: call %s: handler panicked: %v\n%s", inv.CallId, p, debug.Stack())
		}
		usage(res, &before, helper)
	}()
	if trace != nil {
		trace.HandlerStartNs = pb.MonotonicNow()
	}
	resp, err := s.handler(ctx, req)
	if trace != nil {
		trace.HandlerEndNs = pb.MonotonicNow()
	}
	res = &pb.Result{CallId: inv.CallId, ExecNs: time.Since(start).Nanoseconds()}
	if resp != nil {
		helper = resp.Usage
		res.Status = int32(resp.Status)
		res.Body = resp.Body
		for k, vs := range resp.Header {
			for _, v := range vs {
				res.Headers = append(res.Headers, &pb.Header{Key: k, Value: v})
			}
		}
	}
	if err != nil {
		res.Error = err.Error()
		if res.Status == 0 {
			res.Status = http.StatusInternalServerError
		}
		if errors.Is(err, ErrResponseTooLarge) {
			res = tooLarge(res, err.Error())
		}
	}
	return res
}

// usage fills res's CPU and memory figures from the process's resource
// usage now and before the call, plus helper's when not nil.
func usage(res *pb.Result, before *syscall.Rusage, helper *Usage) {
	var after syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &after) == nil {
		res.CpuUserNs = after.Utime.Nano() - before.Utime.Nano()
		res.CpuSysNs = after.Stime.Nano() - before.Stime.Nano()
		res.MaxRssBytes = after.Maxrss << 10 // kilobytes on Linux
	}
	if helper != nil {
		res.CpuUserNs += helper.CPUUser.Nanoseconds()
		res.CpuSysNs += helper.CPUSystem.Nanoseconds()
		res.MaxRssBytes = max(res.MaxRssBytes, helper.MaxRSSBytes)
	}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}
