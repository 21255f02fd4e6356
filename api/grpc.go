package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/errdefs"
	"github.com/kilnfx/kiln/proto/grpccodec"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// DefaultStreamMaxInFlight is how many requests of one InvokeStream run at
// once unless WithStreamMaxInFlight says otherwise.
const DefaultStreamMaxInFlight = wire.DefaultStreamMaxInFlight

// grpcMsgSlack is what a request message may hold besides its body: the
// limit on received messages is the body limit plus this.
const grpcMsgSlack = 64 << 10

// grpcMaxHeaderList bounds the metadata of one RPC (grpc-go allows 16 MiB):
// kiln reads an authorization header; a request's own headers travel in
// its message.
const grpcMaxHeaderList = 64 << 10

// grpcKeepaliveTimeout is how long the server waits for a client's answer
// to a keepalive ping, and how long sent data may stay unacknowledged
// (TCP_USER_TIMEOUT), before it drops the connection.
const grpcKeepaliveTimeout = 20 * time.Second

// GRPCServer is kiln's public gRPC server: the kiln.v1.Invoker and
// kiln.v1.Functions services, grpc.health.v1 and server reflection. It is
// safe for concurrent use.
type GRPCServer struct {
	srv    *grpc.Server
	health *health.Server
	log    *slog.Logger
	conns  *connLimiter // the connections of every listener Serve was given

	drainOnce sync.Once
	drain     chan struct{} // closed by GracefulStop and Stop
}

// GRPCOption configures a GRPCServer.
type GRPCOption func(*grpcOptions)

type grpcOptions struct {
	log          *slog.Logger
	maxInFlight  int
	serverOpts   []grpc.ServerOption
	adminToken   string
	authRequired bool
	untuned      bool // benchmarks only: grpc-go's defaults instead of kiln's
	tracing      bool

	maxConns, maxConnsPerIP int
	handshakeTimeout        time.Duration
}

// WithGRPCConnLimits bounds the connections the server keeps open at once,
// in total and from one client IP (defaults DefaultMaxConns and
// DefaultMaxConnsPerIP; 0 or less: no bound). A connection over a bound is
// closed as soon as it is accepted; gRPC clients retry with backoff.
func WithGRPCConnLimits(total, perIP int) GRPCOption {
	return func(o *grpcOptions) { o.maxConns, o.maxConnsPerIP = total, perIP }
}

// WithGRPCHandshakeTimeout bounds a new connection's HTTP/2 handshake, the
// client's preface and settings (default DefaultHeaderTimeout; grpc-go's
// is 2 minutes): a connection that has not completed it by then is
// closed. Values of 0 or less keep the default.
func WithGRPCHandshakeTimeout(d time.Duration) GRPCOption {
	return func(o *grpcOptions) {
		if d > 0 {
			o.handshakeTimeout = d
		}
	}
}

// WithGRPCAdminToken sets the token that grants the Functions service, as
// WithAdminToken does for the HTTP API: with required set, every Functions
// RPC needs "authorization: Bearer TOKEN" metadata; without, RPCs with no
// credentials are admitted as the admin, which is only safe on loopback.
// Invocations present a tenant's API key the same way; the admin token
// there counts as no key.
func WithGRPCAdminToken(token string, required bool) GRPCOption {
	return func(o *grpcOptions) { o.adminToken, o.authRequired = token, required }
}

// WithGRPCCallTracing lets a unary Invoke ask for its trace with
// wire.MetadataTrace (default off: the key is ignored).
func WithGRPCCallTracing(on bool) GRPCOption { return func(o *grpcOptions) { o.tracing = on } }

// WithGRPCLogger sets the server's logger.
func WithGRPCLogger(l *slog.Logger) GRPCOption { return func(o *grpcOptions) { o.log = l } }

// WithStreamMaxInFlight bounds how many requests of one InvokeStream run at
// once (default DefaultStreamMaxInFlight); values below 1 mean 1. While a
// stream has that many in flight the server stops reading it.
func WithStreamMaxInFlight(n int) GRPCOption {
	return func(o *grpcOptions) { o.maxInFlight = max(n, 1) }
}

// WithGRPCServerOptions adds grpc-go server options, applied after kiln's own
// (see NewGRPCServer), so that they override them.
func WithGRPCServerOptions(opts ...grpc.ServerOption) GRPCOption {
	return func(o *grpcOptions) { o.serverOpts = append(o.serverOpts, opts...) }
}

// tunedServerOptions are kiln's grpc-go server options. The ones for
// latency were chosen with BenchmarkGRPCInvoke (grpc_bench_test.go), which
// compares them with grpc-go's defaults and with alternatives.
func tunedServerOptions(maxBody, maxArchive int) []grpc.ServerOption {
	return []grpc.ServerOption{
		// A request is a body, or a deploy's code archive, plus a little:
		// refuse larger messages before reading them. The body and archive
		// limits themselves are checked per request.
		grpc.MaxRecvMsgSize(max(maxBody, maxArchive) + grpcMsgSlack),
		// Large fixed windows: a body of up to 1 MiB goes without waiting
		// for a WINDOW_UPDATE or for BDP estimation to grow the window, and
		// fixing them turns BDP estimation (and its pings) off. Measured
		// with the client's windows set alike, on a 2-vCPU VM: 5-11% fewer
		// allocations per small call and 13-24% per 64 KiB call, p50 of
		// small calls 14-25% lower, no loss for 64 KiB bodies. Larger read/write buffers (64 KiB instead of
		// 32 KiB) showed no consistent gain, so they keep grpc-go's default.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(8 << 20),
		// Let clients keep connections alive with pings every 10s or more,
		// even with no call open (grpc-go's default closes a client that
		// pings more often than every 5 minutes).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		// Find dead clients: their stream's calls are then cancelled.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    time.Minute,
			Timeout: grpcKeepaliveTimeout,
		}),
		// Bound concurrent RPCs per connection (grpc-go allows 2^32):
		// further ones wait on the client, not in the agent.
		grpc.MaxConcurrentStreams(1024),
		// No compression: no compressor is set; calls are small and
		// latency-bound.
	}
}

// NewGRPCServer returns kiln's public gRPC server for a, and its health
// service: SERVING, for the server ("") and for kiln.v1.Invoker and
// kiln.v1.Functions, until GracefulStop or Stop. The grpc-go options are
// kiln's tuned defaults (received messages are limited to a's body limit
// plus 64 KiB; flow-control windows, buffers, keepalive, concurrent
// streams), its bounds on a connection's handshake (WithGRPCHandshakeTimeout)
// and an RPC's metadata (64 KiB), followed by those of
// WithGRPCServerOptions.
func NewGRPCServer(a *agent.Agent, opts ...GRPCOption) (*GRPCServer, *health.Server) {
	o := grpcOptions{
		log:              slog.Default(),
		maxInFlight:      DefaultStreamMaxInFlight,
		maxConns:         DefaultMaxConns,
		maxConnsPerIP:    DefaultMaxConnsPerIP,
		handshakeTimeout: DefaultHeaderTimeout,
	}
	for _, opt := range opts {
		opt(&o)
	}
	var sopts []grpc.ServerOption
	if o.untuned {
		sopts = append(sopts, grpc.MaxRecvMsgSize(a.MaxBodyBytes()+grpcMsgSlack))
	} else {
		sopts = tunedServerOptions(a.MaxBodyBytes(), int(a.CodeLimits().ArchiveBytes))
	}
	sopts = append(sopts,
		// Large requests and answers get buffers of their own, garbage
		// once read or written, rather than gRPC's pooled ones.
		grpccodec.ServerOption(),
		grpc.ConnectionTimeout(o.handshakeTimeout),
		grpc.MaxHeaderListSize(grpcMaxHeaderList),
	)
	sopts = append(sopts, o.serverOpts...)
	s := &GRPCServer{
		srv:    grpc.NewServer(sopts...),
		health: health.NewServer(),
		log:    o.log,
		conns:  newConnLimiter(o.maxConns, o.maxConnsPerIP),
		drain:  make(chan struct{}),
	}
	for _, name := range []string{"", kilnv1.Invoker_ServiceDesc.ServiceName, kilnv1.Functions_ServiceDesc.ServiceName, kilnv1.Usage_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s.srv, s.health)
	g := gate{agent: a, adminToken: o.adminToken, required: o.authRequired}
	kilnv1.RegisterInvokerServer(s.srv, &invokerServer{
		agent:       a,
		log:         o.log,
		maxInFlight: o.maxInFlight,
		gate:        g,
		drain:       s.drain,
		tracing:     o.tracing,
	})
	kilnv1.RegisterFunctionsServer(s.srv, &functionsServer{agent: a, gate: g})
	kilnv1.RegisterUsageServer(s.srv, &usageServer{agent: a, gate: g})
	reflection.Register(s.srv)
	return s, s.health
}

// Serve accepts connections on ln until Stop or GracefulStop; it then
// returns nil. Connections count against the bounds of WithGRPCConnLimits,
// shared by every listener Serve is given; accepts that fail for want of
// descriptors or memory are retried with backoff rather than returned.
func (s *GRPCServer) Serve(ln net.Listener) error {
	l := newLimitListener(ln, s.conns, s.log, "grpc", true, nil)
	l.tcpUserTimeout = grpcKeepaliveTimeout
	return s.srv.Serve(l)
}

// GracefulStop sets the health status to NOT_SERVING, stops accepting
// connections and RPCs, makes every InvokeStream stop reading requests,
// answer those in flight and end with UNAVAILABLE, and waits for every RPC
// to finish. Calls in flight are not cancelled: bound the wait by calling
// Stop.
func (s *GRPCServer) GracefulStop() {
	s.startDrain()
	s.srv.GracefulStop()
}

// Stop closes every connection at once, cancelling every call in flight.
func (s *GRPCServer) Stop() {
	s.startDrain()
	s.srv.Stop()
}

func (s *GRPCServer) startDrain() {
	s.drainOnce.Do(func() {
		s.health.Shutdown()
		close(s.drain)
	})
}

// invokerServer implements kiln.v1.Invoker.
type invokerServer struct {
	kilnv1.UnimplementedInvokerServer
	agent       *agent.Agent
	log         *slog.Logger
	maxInFlight int
	gate        gate
	drain       <-chan struct{}
	tracing     bool // unary calls asking with wire.MetadataTrace are traced
}

// wantsTrace reports whether the RPC of ctx asks for its trace.
func wantsTrace(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(wire.MetadataTrace)) > 0
}

// apiKey returns the tenant API key the RPC of ctx presents, or "".
func (s *invokerServer) apiKey(ctx context.Context) string {
	return s.gate.apiKey(grpcBearer(ctx))
}

// grpcBearer returns the credential of "authorization: Bearer X" metadata.
func grpcBearer(ctx context.Context) string {
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}

// Invoke implements kiln.v1.Invoker.
func (s *invokerServer) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	var trace *agent.Trace
	if s.tracing && wantsTrace(ctx) {
		trace = new(agent.Trace)
		trace.Mark(agent.TraceEdgeReceived)
		defer func() {
			trace.Mark(agent.TraceEdgeDone)
			_ = grpc.SetHeader(ctx, metadata.Pairs(wire.MetadataTrace, string(trace.AppendTo(nil))))
		}()
	}
	call := newCall(req, "grpc")
	call.Trace = trace
	call.Received = time.Now()
	call.Key = s.apiKey(ctx)
	timeout, err := requestTimeout(req)
	if err == nil && req.Cancel {
		err = fmt.Errorf("%w: cancel is for InvokeStream only", agent.ErrInvalidArgument)
	}
	if err != nil {
		id, err := s.agent.Reject(call, err)
		return nil, s.unaryError(ctx, req, err, id)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	res, err := s.agent.Invoke(ctx, call)
	if err != nil {
		var id string
		if res != nil {
			id = res.CallID
		}
		return nil, s.unaryError(ctx, req, err, id)
	}
	return newResponse(req.Id, res), nil
}

// unaryError returns the status error of a failed unary Invoke and sets the
// trailer saying its class and, when kiln gave it one, the call's id.
func (s *invokerServer) unaryError(ctx context.Context, req *kilnv1.InvokeRequest, err error, callID string) error {
	e := s.callError(ctx, req, err)
	md := metadata.Pairs(wire.TrailerErrorClass, e.Class)
	if callID != "" {
		md.Append(wire.TrailerCallID, callID)
	}
	_ = grpc.SetTrailer(ctx, md)
	return classStatus(codes.Code(e.Code), e.Message, e.Class)
}

// callError turns an error of agent.Invoke for req, run under ctx, into
// what the client is told, logging kiln's own failures.
func (s *invokerServer) callError(ctx context.Context, req *kilnv1.InvokeRequest, err error) *kilnv1.InvokeError {
	c := errdefs.Classify(err)
	e := &kilnv1.InvokeError{Code: int32(c.GRPC), Message: err.Error(), Class: c.Name}
	if errors.Is(ctx.Err(), context.Canceled) {
		// The client gave up (cancelled the RPC, the stream or the
		// request): not kiln's failure.
		e.Code = int32(codes.Canceled)
		return e
	}
	if c.HTTP >= 500 && c.GRPC != codes.DeadlineExceeded {
		s.log.Warn("grpc call failed", "function", req.Function, "code", codes.Code(e.Code).String(), "err", err)
	}
	return e
}

// requestTimeout returns req's timeout, 0 when unset. Errors wrap
// agent.ErrInvalidArgument.
func requestTimeout(req *kilnv1.InvokeRequest) (time.Duration, error) {
	if req.Timeout == nil {
		return 0, nil
	}
	if err := req.Timeout.CheckValid(); err != nil {
		return 0, fmt.Errorf("%w: timeout: %v", agent.ErrInvalidArgument, err)
	}
	d := req.Timeout.AsDuration()
	if d < 0 {
		return 0, fmt.Errorf("%w: timeout %v is negative", agent.ErrInvalidArgument, d)
	}
	return d, nil
}

// grpcError returns err as a gRPC status error with the code of its class
// (see classStatus).
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	c := errdefs.Classify(err)
	return classStatus(c.GRPC, err.Error(), c.Name)
}

// classStatus returns the status error kiln answers itself: code and msg,
// with a kiln.v1.Error detail naming the error class. The detail is how a
// client tells kiln's own answers from the transport's, and learns the
// class, which the code alone does not say (several classes share a code).
func classStatus(code codes.Code, msg, class string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&kilnv1.Error{Class: class}); err == nil {
		st = d
	}
	return st.Err()
}

// newCall returns the agent's call for req. Headers are copied into one
// allocation.
func newCall(req *kilnv1.InvokeRequest, trigger string) *agent.Call {
	call := &agent.Call{
		Function: req.Function,
		Trigger:  trigger,
		Method:   req.Method,
		Path:     req.Path,
		Query:    req.Query,
		Body:     req.Body,
	}
	if n := len(req.Headers); n > 0 {
		call.Headers = make([]agent.Header, n)
		for i, h := range req.Headers {
			call.Headers[i] = agent.Header{Key: h.GetKey(), Value: h.GetValue()}
		}
	}
	return call
}

// newResponse returns the answer to request id from the agent's result.
// Headers that are the transport's business or kiln's own (X-Kiln-*) are
// dropped, as on the HTTP edge.
func newResponse(id uint64, res *agent.Result) *kilnv1.InvokeResponse {
	r := &kilnv1.InvokeResponse{
		Id:            id,
		CallId:        res.CallID,
		Status:        int32(res.Status),
		Body:          res.Body,
		Start:         startKind(res.Start),
		FunctionError: res.FunctionError,
		Exec:          durationpb.New(res.Exec),
	}
	if n := len(res.Headers); n > 0 {
		hs := make([]kilnv1.Header, n)
		r.Headers = make([]*kilnv1.Header, 0, n)
		for i, h := range res.Headers {
			if skipHeaderString(h.Key) {
				continue
			}
			hs[i].Key, hs[i].Value = h.Key, h.Value
			r.Headers = append(r.Headers, &hs[i])
		}
	}
	return r
}

func startKind(s string) kilnv1.Start {
	switch s {
	case wire.StartWarm:
		return kilnv1.Start_START_WARM
	case wire.StartThawed:
		return kilnv1.Start_START_THAWED
	case wire.StartStem:
		return kilnv1.Start_START_STEM
	case wire.StartCold:
		return kilnv1.Start_START_COLD
	}
	return kilnv1.Start_START_UNSPECIFIED
}

// InvokeStream implements kiln.v1.Invoker.
//
// The handler's goroutine only waits: a receiver goroutine reads requests and
// starts one goroutine per call, holding one of maxInFlight slots from
// before its read until the call's answer is sent, so that the stream is
// not read while every slot is taken. Sends are serialised by a mutex. The
// handler returns once the receiver stopped (client half-close, cancel,
// broken stream) or the server drains, and every call started has been
// answered; later sends are dropped.
func (s *invokerServer) InvokeStream(stream kilnv1.Invoker_InvokeStreamServer) error {
	st := &invokeStream{
		srv:       s,
		stream:    stream,
		ctx:       stream.Context(),
		key:       s.apiKey(stream.Context()),
		slots:     make(chan struct{}, s.maxInFlight),
		inflight:  make(map[uint64]context.CancelFunc),
		accepting: true,
		recvDone:  make(chan struct{}),
	}
	go st.receive()
	var err error
	select {
	case <-st.recvDone:
		err = st.recvErr
	case <-s.drain:
		st.mu.Lock()
		st.accepting = false
		st.mu.Unlock()
		err = status.Error(codes.Unavailable, "kiln is shutting down: requests not answered on this stream may be retried on a new connection")
	}
	st.calls.Wait()
	st.sendMu.Lock()
	st.ended = true
	st.sendMu.Unlock()
	return err
}

// invokeStream is the server's state of one InvokeStream.
type invokeStream struct {
	srv    *invokerServer
	stream kilnv1.Invoker_InvokeStreamServer
	ctx    context.Context // the stream's: ends when the client cancels
	key    string          // the tenant API key the stream presents
	slots  chan struct{}   // one per request between read and answer

	sendMu sync.Mutex
	ended  bool // the handler returned: drop sends

	mu        sync.Mutex
	inflight  map[uint64]context.CancelFunc // by request id
	accepting bool                          // false once draining
	calls     sync.WaitGroup                // calls started; Add under mu while accepting

	recvErr  error         // why the receiver stopped; nil for a half-close
	recvDone chan struct{} // closed when the receiver stopped
}

// receive reads requests until the stream ends, dispatching each.
func (st *invokeStream) receive() {
	defer close(st.recvDone)
	for {
		select {
		case st.slots <- struct{}{}:
		case <-st.ctx.Done():
			st.recvErr = status.FromContextError(st.ctx.Err()).Err()
			return
		}
		req, err := st.stream.Recv()
		if err != nil {
			<-st.slots
			if err != io.EOF {
				st.recvErr = err
			}
			return
		}
		st.dispatch(req)
	}
}

// dispatch starts req's call, or answers it at once when it cannot run. It
// holds a slot, which the call (or dispatch) releases.
func (st *invokeStream) dispatch(req *kilnv1.InvokeRequest) {
	if req.Cancel {
		st.mu.Lock()
		cancel := st.inflight[req.Id]
		st.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		<-st.slots
		return
	}
	call := newCall(req, "grpc-stream")
	call.Received = time.Now()
	call.Key = st.key
	timeout, err := requestTimeout(req)
	if err != nil {
		st.refuse(req, call, err)
		return
	}
	st.mu.Lock()
	if !st.accepting {
		st.mu.Unlock()
		st.refuse(req, call, fmt.Errorf("%w: kiln is shutting down: retry on a new connection", agent.ErrUnavailable))
		return
	}
	if _, dup := st.inflight[req.Id]; dup {
		st.mu.Unlock()
		st.refuse(req, call, fmt.Errorf("%w: request id %d is already in flight on this stream", agent.ErrInvalidArgument, req.Id))
		return
	}
	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(st.ctx, timeout)
	} else {
		ctx, cancel = context.WithCancel(st.ctx)
	}
	st.inflight[req.Id] = cancel
	st.calls.Add(1)
	st.mu.Unlock()
	go st.run(ctx, cancel, req, call)
}

// run runs one call and sends its answer.
func (st *invokeStream) run(ctx context.Context, cancel context.CancelFunc, req *kilnv1.InvokeRequest, call *agent.Call) {
	defer st.calls.Done()
	res, err := st.srv.agent.Invoke(ctx, call)
	var resp *kilnv1.InvokeResponse
	if err != nil {
		resp = &kilnv1.InvokeResponse{Id: req.Id, Error: st.srv.callError(ctx, req, err)}
		if res != nil {
			resp.CallId = res.CallID
		}
	} else {
		resp = newResponse(req.Id, res)
	}
	// Forget the id before answering: a client may reuse it as soon as it
	// has the answer.
	st.mu.Lock()
	delete(st.inflight, req.Id)
	st.mu.Unlock()
	cancel()
	st.send(resp)
	<-st.slots
}

// refuse answers req with err without running it, records the refusal, and
// releases req's slot.
func (st *invokeStream) refuse(req *kilnv1.InvokeRequest, call *agent.Call, err error) {
	id, err := st.srv.agent.Reject(call, err)
	st.send(&kilnv1.InvokeResponse{Id: req.Id, CallId: id, Error: st.srv.callError(st.ctx, req, err)})
	<-st.slots
}

// send sends resp unless the handler returned. A failed send means the
// stream is broken; the receiver sees it too, so the error is dropped.
func (st *invokeStream) send(resp *kilnv1.InvokeResponse) {
	st.sendMu.Lock()
	defer st.sendMu.Unlock()
	if st.ended {
		return
	}
	_ = st.stream.Send(resp)
}

// functionsServer implements kiln.v1.Functions.
type functionsServer struct {
	kilnv1.UnimplementedFunctionsServer
	agent *agent.Agent
	gate  gate
}

// admin returns nil when the RPC of ctx comes from the admin, and an
// UNAUTHENTICATED status error otherwise.
func (s *functionsServer) admin(ctx context.Context) error {
	return grpcError(s.gate.requireAdmin(grpcBearer(ctx)))
}

// Deploy implements kiln.v1.Functions.
func (s *functionsServer) Deploy(ctx context.Context, req *kilnv1.DeployRequest) (*kilnv1.Function, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	fn, err := s.agent.Deploy(ctx, req.Name, req.Spec)
	return fn, grpcError(err)
}

// Get implements kiln.v1.Functions.
func (s *functionsServer) Get(ctx context.Context, req *kilnv1.GetFunctionRequest) (*kilnv1.Function, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	if err := agent.ValidateName(req.Name); err != nil {
		return nil, grpcError(err)
	}
	fn, err := s.agent.Get(ctx, req.Name)
	return fn, grpcError(err)
}

// List implements kiln.v1.Functions.
func (s *functionsServer) List(ctx context.Context, _ *kilnv1.ListFunctionsRequest) (*kilnv1.FunctionList, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	fns, err := s.agent.List(ctx)
	if err != nil {
		return nil, grpcError(err)
	}
	return &kilnv1.FunctionList{Functions: fns}, nil
}

// Delete implements kiln.v1.Functions.
func (s *functionsServer) Delete(ctx context.Context, req *kilnv1.DeleteFunctionRequest) (*kilnv1.DeleteFunctionResponse, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	if err := s.agent.Delete(ctx, req.Name); err != nil {
		return nil, grpcError(err)
	}
	return &kilnv1.DeleteFunctionResponse{}, nil
}
