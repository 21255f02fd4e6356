package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/errdefs"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// maxRecvMsg bounds an answer read over gRPC.
const maxRecvMsg = 256 << 20

// ErrStreamClosed is returned (wrapped) by Stream.Invoke after Close.
var ErrStreamClosed = errors.New("stream closed")

// GRPCError is an error answered by kiln itself over gRPC (as opposed to a
// function's failure, which is a normal answer, or a transport error, which
// is a plain gRPC status error). status.Code and status.FromError work on it.
type GRPCError struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Class is kiln's error class (one of wire's Class constants).
	Class string
	// Message is kiln's human-readable message.
	Message string
	// CallID is the call's id when kiln accepted the call before failing it.
	CallID string
}

// Unwrap returns the sentinel of the error's class (package errdefs), as
// APIError.Unwrap does.
func (e *GRPCError) Unwrap() error {
	if c, ok := errdefs.Lookup(e.Class); ok {
		return c.Err
	}
	return nil
}

// Error implements error: kiln's message, then the class and the code, as
// in "function "hello" not found (not_found, gRPC NotFound)".
func (e *GRPCError) Error() string {
	if e.Class == "" {
		return fmt.Sprintf("%s (gRPC %v)", e.Message, e.Code)
	}
	return fmt.Sprintf("%s (%s, gRPC %v)", e.Message, e.Class, e.Code)
}

// GRPCStatus returns the error as a gRPC status.
func (e *GRPCError) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// GRPCClient talks to one kiln agent over its gRPC API. It is safe for
// concurrent use.
type GRPCClient struct {
	conn        *grpc.ClientConn // nil when the caller owns the connection
	invoker     kilnv1.InvokerClient
	functions   kilnv1.FunctionsClient
	maxInFlight int
	callOpts    []grpc.CallOption
}

type grpcOptions struct {
	dial        []grpc.DialOption
	maxInFlight int
	token       string
}

// WithGRPCToken makes the client present tok as "authorization: Bearer
// tok" metadata on every RPC: the admin token for Functions, or a tenant's
// API key for calls. It is sent over the plaintext connection as is.
func WithGRPCToken(tok string) GRPCOption {
	return func(o *grpcOptions) { o.token = tok }
}

// bearerToken is a grpc.PerRPCCredentials sending a bearer token, allowed on
// plaintext connections (kiln's API listens on loopback by default).
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }

// GRPCOption configures a GRPCClient.
type GRPCOption func(*grpcOptions)

// WithDialOptions adds grpc-go dial options, applied after the client's own
// (plaintext transport, flow-control windows matching the server's,
// keepalive pings every 30s while calls are open, answers up to 256 MiB), so
// that they override them.
func WithDialOptions(opts ...grpc.DialOption) GRPCOption {
	return func(o *grpcOptions) { o.dial = append(o.dial, opts...) }
}

// WithGRPCMaxInFlight bounds the requests in flight on each Stream (default
// wire.DefaultStreamMaxInFlight, the server's default bound); values below 1
// mean 1. Stream.Invoke waits, bounded by its ctx, for a free slot.
func WithGRPCMaxInFlight(n int) GRPCOption {
	return func(o *grpcOptions) { o.maxInFlight = max(n, 1) }
}

// NewGRPC returns a client of the kiln agent whose gRPC API is at target, in
// grpc-go's syntax ("127.0.0.1:9090", "dns:///node:9090",
// "unix:///run/kiln.sock"). It does not connect: the first call does.
func NewGRPC(target string, opts ...GRPCOption) (*GRPCClient, error) {
	o := grpcOptions{maxInFlight: wire.DefaultStreamMaxInFlight}
	for _, opt := range opts {
		opt(&o)
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Fixed large windows, as the server's (see api's
		// tunedServerOptions for the measurements).
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(8 << 20),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsg)),
		grpc.WithUserAgent("kiln-client"),
	}, o.dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("agent gRPC target %q: %w", target, err)
	}
	c := NewGRPCConn(conn, opts...)
	c.conn = conn
	return c, nil
}

// NewGRPCConn returns a client of the kiln agent at the other end of conn,
// which the caller dialed with options of its own (credentials,
// interceptors, a resolver) and closes itself: Close leaves it open.
// WithDialOptions does not apply.
func NewGRPCConn(conn grpc.ClientConnInterface, opts ...GRPCOption) *GRPCClient {
	o := grpcOptions{maxInFlight: wire.DefaultStreamMaxInFlight}
	for _, opt := range opts {
		opt(&o)
	}
	c := &GRPCClient{
		invoker:     kilnv1.NewInvokerClient(conn),
		functions:   kilnv1.NewFunctionsClient(conn),
		maxInFlight: o.maxInFlight,
	}
	if o.token != "" {
		c.callOpts = []grpc.CallOption{grpc.PerRPCCredentials(bearerToken(o.token))}
	}
	return c
}

// Close closes the connection NewGRPC opened; calls and streams in flight
// fail. It does nothing for a client of NewGRPCConn.
func (c *GRPCClient) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Invoke calls the function name with body and header and returns its
// answer. A function's answer is never an error, whatever its status: a
// failed call has FunctionError set. Errors of kiln itself are *GRPCError;
// transport errors are gRPC status errors. ctx's deadline bounds the call on
// the agent too; cancelling ctx cancels the call.
func (c *GRPCClient) Invoke(ctx context.Context, name string, body []byte, header http.Header) (*kilnv1.InvokeResponse, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	req := &kilnv1.InvokeRequest{Function: name, Body: body, Headers: protoHeaders(header)}
	var trailer metadata.MD
	resp, err := c.invoker.Invoke(ctx, req, append(c.callOpts[:len(c.callOpts):len(c.callOpts)], grpc.Trailer(&trailer))...)
	if err != nil {
		return nil, grpcCallError(err, trailer)
	}
	return resp, nil
}

// grpcCallError makes err a *GRPCError when kiln's trailer says it is kiln's.
func grpcCallError(err error, trailer metadata.MD) error {
	class := trailer.Get(wire.TrailerErrorClass)
	if len(class) == 0 {
		return err
	}
	st := status.Convert(err)
	e := &GRPCError{Code: st.Code(), Class: class[0], Message: st.Message()}
	if id := trailer.Get(wire.TrailerCallID); len(id) > 0 {
		e.CallID = id[0]
	}
	return e
}

// statusError makes a management RPC's error a *GRPCError when it is a
// status kiln answered itself: one with a kiln.v1.Error detail naming its
// class. Other errors (the transport's, grpc-go's own limits) are returned
// as they are.
func statusError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if e, ok := d.(*kilnv1.Error); ok && e.Class != "" {
			return &GRPCError{Code: st.Code(), Class: e.Class, Message: st.Message()}
		}
	}
	return err
}

func protoHeaders(h http.Header) []*kilnv1.Header {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	if n == 0 {
		return nil
	}
	hs := make([]kilnv1.Header, 0, n)
	out := make([]*kilnv1.Header, 0, n)
	for k, vs := range h {
		for _, v := range vs {
			hs = append(hs, kilnv1.Header{Key: k, Value: v})
			out = append(out, &hs[len(hs)-1])
		}
	}
	return out
}

// Deploy creates the function name from spec, or replaces its spec, and
// returns the deployed function. spec.Code is a path on the agent's host.
func (c *GRPCClient) Deploy(ctx context.Context, name string, spec *kilnv1.FunctionSpec) (*kilnv1.Function, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	fn, err := c.functions.Deploy(ctx, &kilnv1.DeployRequest{Name: name, Spec: spec}, c.callOpts...)
	return fn, statusError(err)
}

// Get returns the function name. A function that does not exist is a
// *GRPCError of class wire.ClassNotFound.
func (c *GRPCClient) Get(ctx context.Context, name string) (*kilnv1.Function, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	fn, err := c.functions.Get(ctx, &kilnv1.GetFunctionRequest{Name: name}, c.callOpts...)
	return fn, statusError(err)
}

// List returns the deployed functions, ordered by name.
func (c *GRPCClient) List(ctx context.Context) ([]*kilnv1.Function, error) {
	list, err := c.functions.List(ctx, &kilnv1.ListFunctionsRequest{}, c.callOpts...)
	if err != nil {
		return nil, statusError(err)
	}
	return list.GetFunctions(), nil
}

// Delete removes the function name. A function that does not exist is a
// *GRPCError of class wire.ClassNotFound.
func (c *GRPCClient) Delete(ctx context.Context, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	_, err := c.functions.Delete(ctx, &kilnv1.DeleteFunctionRequest{Name: name}, c.callOpts...)
	return statusError(err)
}

// Stream is one InvokeStream: many calls in flight on one HTTP/2 stream.
// Its methods are safe for concurrent use; each call waits for its own
// answer, whatever order the agent answers in.
type Stream struct {
	stream kilnv1.Invoker_InvokeStreamClient
	cancel context.CancelFunc
	slots  chan struct{} // one per request in flight
	nextID atomic.Uint64

	sendMu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]chan *kilnv1.InvokeResponse
	err     error         // why the stream ended; set before done is closed
	done    chan struct{} // closed when the stream ended
}

// OpenStream opens an InvokeStream. ctx bounds the stream's whole life:
// cancelling it ends the stream and cancels its calls on the agent. Close
// the Stream when done with it.
func (c *GRPCClient) OpenStream(ctx context.Context) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.invoker.InvokeStream(ctx, c.callOpts...)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Stream{
		stream:  st,
		cancel:  cancel,
		slots:   make(chan struct{}, c.maxInFlight),
		pending: make(map[uint64]chan *kilnv1.InvokeResponse),
		done:    make(chan struct{}),
	}
	go s.receive()
	return s, nil
}

// Invoke calls the function name with body on the stream; see Do.
func (s *Stream) Invoke(ctx context.Context, name string, body []byte) (*kilnv1.InvokeResponse, error) {
	return s.Do(ctx, &kilnv1.InvokeRequest{Function: name, Body: body})
}

// Do sends req on the stream and returns its answer. Do sets req.Id, clears
// req.Cancel and, when ctx has a deadline, sets req.Timeout; req must not be
// changed until Do returns. A function's failure is a normal answer with
// FunctionError set;
// kiln's refusal of this call is a *GRPCError (the answer is returned too);
// the stream's end is a gRPC status error, or one wrapping ErrStreamClosed
// after Close. Do waits, bounded by ctx, while the stream has its maximum
// of requests in flight. When ctx ends first Do asks the agent to cancel
// the call and returns ctx's error.
func (s *Stream) Do(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	if err := validName(req.Function); err != nil {
		return nil, err
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, s.err
	}
	defer func() { <-s.slots }()
	req.Id = s.nextID.Add(1)
	req.Cancel = false
	if deadline, ok := ctx.Deadline(); ok {
		d := time.Until(deadline)
		if d <= 0 {
			return nil, context.DeadlineExceeded
		}
		req.Timeout = durationpb.New(d)
	}
	ch := make(chan *kilnv1.InvokeResponse, 1)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, s.err
	}
	s.pending[req.Id] = ch
	s.mu.Unlock()

	if err := s.send(req); err != nil {
		s.forget(req.Id)
		// The receiver learns why the stream broke.
		<-s.done
		return nil, s.err
	}
	select {
	case resp := <-ch:
		return answer(resp)
	case <-ctx.Done():
		if s.forget(req.Id) {
			id := req.Id
			go func() { _ = s.send(&kilnv1.InvokeRequest{Id: id, Cancel: true}) }()
			return nil, ctx.Err()
		}
		// The answer is being delivered, or the stream ended.
		select {
		case resp := <-ch:
			return answer(resp)
		case <-s.done:
			return nil, s.err
		}
	case <-s.done:
		select {
		case resp := <-ch: // answered just before the end
			return answer(resp)
		default:
			return nil, s.err
		}
	}
}

// answer returns resp, and a *GRPCError when it says kiln refused the call.
func answer(resp *kilnv1.InvokeResponse) (*kilnv1.InvokeResponse, error) {
	if e := resp.GetError(); e != nil {
		return resp, &GRPCError{Code: codes.Code(e.Code), Class: e.Class, Message: e.Message, CallID: resp.CallId}
	}
	return resp, nil
}

// Close ends the stream: calls still waiting fail with an error wrapping
// ErrStreamClosed, and their calls on the agent are cancelled. Close is
// idempotent and returns nil.
func (s *Stream) Close() error {
	s.end(ErrStreamClosed)
	s.cancel()
	return nil
}

// Done is closed when the stream has ended; Err then says why.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Err returns why the stream ended, or nil while it is open.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Stream) send(req *kilnv1.InvokeRequest) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(req)
}

// forget drops a pending request and reports whether it was still pending.
func (s *Stream) forget(id uint64) bool {
	s.mu.Lock()
	_, ok := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	return ok
}

// receive hands each answer to its waiting caller until the stream ends.
func (s *Stream) receive() {
	for {
		resp, err := s.stream.Recv()
		if err != nil {
			if err == io.EOF {
				err = status.Error(codes.Unavailable, "the agent ended the stream")
			}
			s.end(err)
			return
		}
		s.mu.Lock()
		ch := s.pending[resp.Id]
		delete(s.pending, resp.Id)
		s.mu.Unlock()
		if ch != nil {
			ch <- resp
		}
	}
}

// end records why the stream ended, once, and wakes every waiting caller.
func (s *Stream) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if errors.Is(err, ErrStreamClosed) {
		s.err = err
	} else {
		s.err = fmt.Errorf("invoke stream: %w", err)
	}
	clear(s.pending)
	close(s.done)
}
