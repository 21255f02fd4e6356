// Package api is kiln's edge: the HTTP server (fasthttp) and the public gRPC
// server. It parses requests, applies limits, hands calls to the agent and
// maps the agent's error classes to HTTP and gRPC status in one place
// (errors.go). It never touches containers.
package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/errdefs"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// bodySlack is how far past the body limit the server still reads a
// request, to answer it with 413 instead of closing the connection.
const bodySlack = 8 << 20

// Read bounds of a request unless WithHeaderTimeout, WithBodyTimeout or
// WithMaxDeployBytes say otherwise.
const (
	// DefaultHeaderTimeout bounds reading a request's headers (HTTP) and a
	// new connection's handshake (gRPC).
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds reading a request's body once its headers
	// are read.
	DefaultBodyTimeout = time.Minute
	// DefaultMaxDeployBytes is the body limit of a deploy
	// (PUT /v1/functions/{name}).
	DefaultMaxDeployBytes = 128 << 20
	// DefaultMaxImageBytes is the body limit of an image import
	// (POST /v1/images). The body is held in memory while containerd
	// stores its content.
	DefaultMaxImageBytes = 1 << 30
)

// MaxHeaderBytes bounds a request's line and headers together: fasthttp
// reads them whole into a buffer of this size (its ReadBufferSize, one per
// connection). A request whose line and headers are over it, by their
// size or by their number, is answered 431 headers_too_large and its
// connection closed.
const MaxHeaderBytes = 4096

// deployBodyTimeout is the least time a deploy's body may take.
const deployBodyTimeout = 5 * time.Minute

// smallBody is the largest body read under its request's header deadline
// rather than the body timeout: it comes with its headers or just after,
// and sparing it a second read deadline (a timer reset, about 300 ns)
// keeps a typical invocation's cost as it was.
const smallBody = 64 << 10

// idleTimeout bounds the wait for the next request on a kept-alive
// connection.
const idleTimeout = 2 * time.Minute

// HTTPServer serves kiln's HTTP API over fasthttp.
type HTTPServer struct {
	agent   *agent.Agent
	log     *slog.Logger
	srv     *fasthttp.Server
	metrics fasthttp.RequestHandler
	gate    gate
	done    chan struct{} // closed by Shutdown: ends followed log streams
	// base is the context of management requests, cancelled by Shutdown
	// as fasthttp's RequestCtx is. A RequestCtx itself is never handed to
	// code that may keep it: it is recycled once its request is answered
	// (go-sqlite3, for one, reads a query's context from a goroutine of
	// its own after the query returned).
	base       context.Context
	cancelBase context.CancelFunc
	// callBase is the root of every invocation's context: base without
	// its cancellation, made once rather than per call.
	callBase    context.Context
	closeDone   sync.Once
	disconnects *disconnectWatcher // nil: client disconnects are not noticed

	conns         *connLimiter // the connections of every listener Serve was given
	tracing       bool         // calls asking with wire.HeaderTrace are traced
	headerTimeout time.Duration
	bodyTimeout   time.Duration
	maxDeploy     int
	maxImage      int
}

// HTTPOption configures an HTTPServer.
type HTTPOption func(*httpOptions)

// httpOptions are what HTTPOptions set; NewHTTPServer applies them.
type httpOptions struct {
	log           *slog.Logger
	adminToken    string
	required      bool
	metrics       fasthttp.RequestHandler
	conns         *connLimiter
	tracing       bool
	headerTimeout time.Duration
	bodyTimeout   time.Duration
	maxDeploy     int
	maxImage      int
}

// WithCallTracing lets a call ask for its trace with wire.HeaderTrace
// (default off: the header is ignored).
func WithCallTracing(on bool) HTTPOption { return func(o *httpOptions) { o.tracing = on } }

// WithHTTPLogger sets the server's logger.
func WithHTTPLogger(l *slog.Logger) HTTPOption { return func(o *httpOptions) { o.log = l } }

// WithAdminToken sets the token that grants the management API. With
// required set, every /v1/ request needs it (or, for usage and calls, a
// tenant's API key); without, requests with no credentials are admitted as
// the admin, which is only safe on loopback.
func WithAdminToken(token string, required bool) HTTPOption {
	return func(o *httpOptions) { o.adminToken, o.required = token, required }
}

// WithMetricsHandler serves h (a Prometheus handler) at GET /metrics.
func WithMetricsHandler(h http.Handler) HTTPOption {
	return func(o *httpOptions) { o.metrics = fasthttpadaptor.NewFastHTTPHandler(h) }
}

// WithConnLimits bounds the connections the server keeps open at once, in
// total and from one client IP (defaults DefaultMaxConns and
// DefaultMaxConnsPerIP; 0 or less: no bound). A connection over a bound is
// answered at once, 503 (total) or 429 (per IP) with Retry-After, and
// closed.
func WithConnLimits(total, perIP int) HTTPOption {
	return func(o *httpOptions) { o.conns = newConnLimiter(total, perIP) }
}

// WithHeaderTimeout bounds reading a request's line and headers (default
// DefaultHeaderTimeout): from the connection's opening for its first
// request, from the request's first byte for later ones. A connection
// whose headers are not in by then is answered 408 and closed. Between
// requests a kept-alive connection waits up to 2 minutes instead. Values
// of 0 or less keep the default.
func WithHeaderTimeout(d time.Duration) HTTPOption {
	return func(o *httpOptions) {
		if d > 0 {
			o.headerTimeout = d
		}
	}
}

// WithBodyTimeout bounds reading a request's body over 64 KiB or of
// unknown length, from the end of its headers (default
// DefaultBodyTimeout); a smaller body must arrive within the header
// timeout, and a deploy's gets at least 5 minutes. A body not in by then
// is answered 408 and its connection closed. Values of 0 or less keep the
// default.
func WithBodyTimeout(d time.Duration) HTTPOption {
	return func(o *httpOptions) {
		if d > 0 {
			o.bodyTimeout = d
		}
	}
}

// WithMaxDeployBytes sets the body limit of a deploy,
// PUT /v1/functions/{name} (default DefaultMaxDeployBytes); every other
// request keeps the agent's body limit. The larger limit is only granted
// to a request the admin token admits (or, without required tokens, to
// one with no credentials): anyone else's deploy over the usual limit is
// answered 401, so that it cannot make kilnd buffer a large body. Values
// of 0 or less keep the default.
func WithMaxDeployBytes(n int) HTTPOption {
	return func(o *httpOptions) {
		if n > 0 {
			o.maxDeploy = n
		}
	}
}

// WithMaxImageBytes sets the body limit of an image import,
// POST /v1/images (default DefaultMaxImageBytes), granted, like the
// deploy limit, only to the admin; a larger archive is answered 413.
// Values of 0 or less keep the default.
func WithMaxImageBytes(n int) HTTPOption {
	return func(o *httpOptions) {
		if n > 0 {
			o.maxImage = n
		}
	}
}

// NewHTTPServer returns a server of a's API. Request bodies over the agent's
// limit are refused with 413.
func NewHTTPServer(a *agent.Agent, opts ...HTTPOption) *HTTPServer {
	o := httpOptions{
		log:           slog.Default(),
		conns:         newConnLimiter(DefaultMaxConns, DefaultMaxConnsPerIP),
		headerTimeout: DefaultHeaderTimeout,
		bodyTimeout:   DefaultBodyTimeout,
		maxDeploy:     DefaultMaxDeployBytes,
		maxImage:      DefaultMaxImageBytes,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	base, cancelBase := context.WithCancel(context.Background())
	s := &HTTPServer{
		base:          base,
		cancelBase:    cancelBase,
		callBase:      context.WithoutCancel(base),
		agent:         a,
		log:           o.log,
		done:          make(chan struct{}),
		gate:          gate{agent: a, adminToken: o.adminToken, required: o.required},
		metrics:       o.metrics,
		conns:         o.conns,
		tracing:       o.tracing,
		headerTimeout: o.headerTimeout,
		bodyTimeout:   o.bodyTimeout,
		maxDeploy:     o.maxDeploy,
		maxImage:      o.maxImage,
	}
	if w, err := newDisconnectWatcher(); err == nil {
		s.disconnects = w
	} else {
		s.log.Warn("client disconnects will not cancel calls", "err", err)
	}
	s.srv = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.handleParseError,
		Name:         "kiln",
		// Read a little past the limit so that a too-large body gets its
		// 413 from the agent's check rather than a reset connection.
		MaxRequestBodySize: a.MaxBodyBytes() + bodySlack,
		ReadBufferSize:     MaxHeaderBytes,
		// The answer to a request fasthttp cannot read quotes its error,
		// which otherwise holds up to MaxHeaderBytes of the request itself,
		// Authorization header included.
		SecureErrorLogMessage: true,
		// ReadTimeout bounds the headers; requestConfig gives a body its
		// own deadline once the headers are in.
		ReadTimeout:                   s.headerTimeout,
		IdleTimeout:                   idleTimeout,
		HeaderReceived:                s.requestConfig,
		ConnState:                     s.connState,
		Logger:                        fasthttpLogger{s.log},
		NoDefaultServerHeader:         false,
		NoDefaultContentType:          true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
	}
	return s
}

// Serve accepts connections on ln until Shutdown. Connections count against
// the bounds of WithConnLimits, shared by every listener Serve is given;
// accepts that fail for want of descriptors or memory are retried with
// backoff rather than returned. It returns nil after Shutdown, and an error
// only when ln fails for good.
func (s *HTTPServer) Serve(ln net.Listener) error {
	return s.srv.Serve(newLimitListener(ln, s.conns, s.log, "http", false, writeRefusal))
}

// connState is fasthttp's ConnState hook: a new connection is watched for
// its client's disconnect, and its slot is given back when fasthttp closes
// it (or hands it over, hijacked). It runs twice per request (active,
// idle) and must stay cheap.
func (s *HTTPServer) connState(c net.Conn, state fasthttp.ConnState) {
	switch state {
	case fasthttp.StateNew:
		if s.disconnects != nil {
			s.disconnects.add(c)
		}
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		if s.disconnects != nil {
			s.disconnects.remove(c)
		}
		s.conns.release(remoteIP(c))
	}
}

// fasthttpLogger gives kiln's logger, at debug level, fasthttp's own lines:
// about one client's broken connection or request, which a client can
// cause as often as it likes.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "from", "fasthttp")
}

// refusals are what the HTTP listener answers on a connection it refuses,
// by refusal, before closing it.
var refusals = [...][]byte{
	overTotal: httpRefusal(fasthttp.StatusServiceUnavailable, wire.ClassUnavailable, "kiln has too many connections open: retry later"),
	overPerIP: httpRefusal(fasthttp.StatusTooManyRequests, wire.ClassResourceExhausted, "too many connections from your address: retry later"),
}

func httpRefusal(status int, class, msg string) []byte {
	body, _ := jsonOptions.Marshal(&kilnv1.Error{Error: msg, Class: class})
	body = append(body, '\n')
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"+
		"Retry-After: 1\r\n%s: %s\r\nContent-Length: %d\r\n\r\n%s",
		status, fasthttp.StatusMessage(status), wire.HeaderError, class, len(body), body)
}

func writeRefusal(c net.Conn, why refusal) { _, _ = c.Write(refusals[why]) }

// requestConfig is fasthttp's HeaderReceived hook: once a request's
// headers are in, it sets how long its body may take and how large it may
// be. A deploy the admin sends gets the deploy limit, an image import the
// image limit, and either, from now on, at least deployBodyTimeout; any
// other request keeps the server's limit. A body over smallBody, or of unknown length (chunked), gets the body
// timeout from now on; a smaller one, or none, keeps the header deadline.
// It runs on every request, invocations included: it must not allocate.
func (s *HTTPServer) requestConfig(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	// fasthttp's request lengths: -1 chunked, -2 no Content-Length (so no
	// body).
	n := h.ContentLength()
	if n == 0 || n == -2 {
		return fasthttp.RequestConfig{}
	}
	if isDeploy(h) && s.gate.admitsAdmin(h.Peek(fasthttp.HeaderAuthorization)) {
		return fasthttp.RequestConfig{ReadTimeout: max(s.bodyTimeout, deployBodyTimeout), MaxRequestBodySize: s.maxDeploy}
	}
	if isImageImport(h) && s.gate.admitsAdmin(h.Peek(fasthttp.HeaderAuthorization)) {
		return fasthttp.RequestConfig{ReadTimeout: max(s.bodyTimeout, deployBodyTimeout), MaxRequestBodySize: s.maxImage}
	}
	if n > 0 && n <= smallBody {
		return fasthttp.RequestConfig{}
	}
	return fasthttp.RequestConfig{ReadTimeout: s.bodyTimeout}
}

var prefixFunctionsSlash = []byte("/v1/functions/")

// isDeploy reports whether h is PUT /v1/functions/{name}, judged on the raw
// request target. The router sees the cleaned path, which can differ; what
// a mistake grants is the admin's larger limit to the admin.
func isDeploy(h *fasthttp.RequestHeader) bool {
	if !h.IsPut() {
		return false
	}
	name, ok := bytes.CutPrefix(h.RequestURI(), prefixFunctionsSlash)
	if i := bytes.IndexByte(name, '?'); i >= 0 {
		name = name[:i]
	}
	return ok && len(name) > 0 && bytes.IndexByte(name, '/') < 0
}

// isImageImport reports whether h is POST /v1/images, judged on the raw
// request target as isDeploy judges a deploy.
func isImageImport(h *fasthttp.RequestHeader) bool {
	if !h.IsPost() {
		return false
	}
	rest, ok := bytes.CutPrefix(h.RequestURI(), prefixImages)
	if i := bytes.IndexByte(rest, '?'); i >= 0 {
		rest = rest[:i]
	}
	return ok && (len(rest) == 0 || string(rest) == "/")
}

// Shutdown stops accepting connections and waits, bounded by ctx, for the
// requests in flight to finish.
func (s *HTTPServer) Shutdown(ctx context.Context) error {
	s.closeDone.Do(func() { close(s.done); s.cancelBase() })
	return s.srv.ShutdownWithContext(ctx)
}

// Handler returns the request handler, for in-process use in tests and
// benchmarks.
func (s *HTTPServer) Handler() fasthttp.RequestHandler { return s.handle }

var (
	prefixInvoke    = []byte("/invoke/")
	prefixFunction  = []byte("/function/")
	prefixFunctions = []byte("/v1/functions")
	prefixRuntimes  = []byte("/v1/runtimes")
	prefixImages    = []byte("/v1/images")
)

func (s *HTTPServer) handle(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	switch {
	case bytes.HasPrefix(path, prefixInvoke):
		s.invoke(ctx, path[len(prefixInvoke):])
	case bytes.HasPrefix(path, prefixFunction):
		s.invoke(ctx, path[len(prefixFunction):])
	case bytes.HasPrefix(path, prefixFunctions):
		if s.admin(ctx) {
			s.functions(ctx, string(path[len(prefixFunctions):]))
		}
	case bytes.HasPrefix(path, prefixRuntimes):
		if s.admin(ctx) {
			s.runtimes(ctx, string(path[len(prefixRuntimes):]))
		}
	case bytes.HasPrefix(path, prefixImages):
		if s.admin(ctx) {
			s.images(ctx, string(path[len(prefixImages):]))
		}
	case bytes.HasPrefix(path, prefixKeys):
		if s.admin(ctx) {
			s.keys(ctx, string(path[len(prefixKeys):]))
		}
	case bytes.HasPrefix(path, prefixUsage):
		s.usage(ctx, string(path[len(prefixUsage):]))
	case bytes.HasPrefix(path, prefixCalls):
		s.calls(ctx, string(path[len(prefixCalls):]))
	case string(path) == "/metrics" && s.metrics != nil:
		s.metrics(ctx)
	case string(path) == "/healthz" || string(path) == "/readyz":
		ctx.SetContentType("text/plain")
		ctx.SetBodyString("ok\n")
	default:
		s.writeError(ctx, fmt.Errorf("%w: no route for %s", agent.ErrNotFound, path))
	}
}

// invoke serves /invoke/{name}[/rest] for any method.
func (s *HTTPServer) invoke(ctx *fasthttp.RequestCtx, rest []byte) {
	var trace *agent.Trace
	if s.tracing && len(ctx.Request.Header.Peek(wire.HeaderTrace)) > 0 {
		trace = new(agent.Trace)
		trace.Mark(agent.TraceEdgeReceived)
		defer func() {
			trace.Mark(agent.TraceEdgeDone)
			ctx.Response.Header.SetBytesV(wire.HeaderTrace, trace.AppendTo(nil))
		}()
	}
	name, sub := splitInvokePath(rest)
	call := &agent.Call{
		Function: string(name),
		Trigger:  "http",
		Received: ctx.Time(),
		Key:      s.gate.apiKey(bearer(ctx)),
		Method:   string(ctx.Method()),
		Path:     string(sub),
		Query:    string(ctx.URI().QueryString()),
		Body:     ctx.PostBody(),
		Trace:    trace,
	}
	call.Headers = make([]agent.Header, 0, ctx.Request.Header.Len())
	for k, v := range ctx.Request.Header.All() {
		if skipHeader(k) {
			continue
		}
		call.Headers = append(call.Headers, agent.Header{Key: string(k), Value: string(v)})
	}
	// The call outlives a server shutdown signal: in-flight calls finish
	// within the shutdown bound, and the function's timeout bounds each one.
	// A client that closes its connection cancels its call.
	callCtx := s.callBase
	if s.disconnects != nil {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithCancel(callCtx)
		s.disconnects.arm(ctx.Conn(), cancel)
		defer func() { s.disconnects.disarm(ctx.Conn()); cancel() }()
	}
	res, err := s.agent.Invoke(callCtx, call)
	if res != nil && res.CallID != "" {
		ctx.Response.Header.Set(wire.HeaderCallID, res.CallID)
		if res.Start != "" {
			ctx.Response.Header.Set(wire.HeaderStart, res.Start)
		}
	}
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	for _, h := range res.Headers {
		if skipHeaderString(h.Key) {
			continue
		}
		ctx.Response.Header.Add(h.Key, h.Value)
	}
	ctx.SetStatusCode(res.Status)
	if res.FunctionError != "" {
		ctx.Response.Header.Set(wire.HeaderError, wire.ClassFunctionError)
		if len(res.Body) == 0 {
			writeJSON(ctx, res.Status, &kilnv1.Error{Error: validUTF8(res.FunctionError), Class: wire.ClassFunctionError})
			return
		}
	}
	// The body is not copied: res.Body is the slice decoded from the
	// executor's Result for this call alone, which nothing else refers to
	// or changes, and fasthttp writes it after this handler returns and
	// drops it when it resets the response.
	ctx.Response.SetBodyRaw(res.Body)
}

// splitInvokePath splits what follows /invoke/ or /function/ in a path
// into the function's name, up to the first slash, and the path the
// function sees: the rest from that slash on, or "/" when there is none.
// The name is not checked here: the agent refuses a bad one.
func splitInvokePath(rest []byte) (name, sub []byte) {
	if i := bytes.IndexByte(rest, '/'); i >= 0 {
		return rest[:i], rest[i:]
	}
	return rest, slash
}

var slash = []byte("/")

// skipHeader reports whether a request header is the transport's business,
// not the function's.
func skipHeader(k []byte) bool {
	switch len(k) {
	case 10:
		return strings.EqualFold(string(k), "Connection")
	case 14:
		return strings.EqualFold(string(k), "Content-Length")
	case 17:
		return strings.EqualFold(string(k), "Transfer-Encoding")
	}
	return false
}

func skipHeaderString(k string) bool {
	return strings.EqualFold(k, "Connection") || strings.EqualFold(k, "Content-Length") ||
		strings.EqualFold(k, "Transfer-Encoding") || strings.HasPrefix(strings.ToLower(k), "x-kiln-")
}

// functions serves /v1/functions[/{name}].
func (s *HTTPServer) functions(ctx *fasthttp.RequestCtx, rest string) {
	method := string(ctx.Method())
	if rest == "" || rest == "/" {
		if method != fasthttp.MethodGet {
			s.methodNotAllowed(ctx, "GET")
			return
		}
		list, err := s.agent.List(s.base)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, &kilnv1.FunctionList{Functions: list})
		return
	}
	name, ok := strings.CutPrefix(rest, "/")
	if name, ok := strings.CutSuffix(name, "/containers"); ok && !strings.Contains(name, "/") {
		s.containers(ctx, name)
		return
	}
	if name, ok := strings.CutSuffix(name, "/logs"); ok && !strings.Contains(name, "/") {
		s.logs(ctx, name)
		return
	}
	if !ok || strings.Contains(name, "/") {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/functions%s", agent.ErrNotFound, rest))
		return
	}
	if err := agent.ValidateName(name); err != nil {
		s.writeError(ctx, err)
		return
	}
	switch method {
	case fasthttp.MethodGet:
		fn, err := s.agent.Get(s.base, name)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, fn)
	case fasthttp.MethodPut:
		spec := &kilnv1.FunctionSpec{}
		if err := protojson.Unmarshal(ctx.PostBody(), spec); err != nil {
			s.writeError(ctx, fmt.Errorf("%w: spec: %s", agent.ErrInvalidArgument, specError(err)))
			return
		}
		fn, err := s.agent.Deploy(s.base, name, spec)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, fn)
	case fasthttp.MethodDelete:
		if err := s.agent.Delete(s.base, name); err != nil {
			s.writeError(ctx, err)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	default:
		s.methodNotAllowed(ctx, "GET, PUT, DELETE")
	}
}

// containers serves GET /v1/functions/{name}/containers.
func (s *HTTPServer) containers(ctx *fasthttp.RequestCtx, name string) {
	if string(ctx.Method()) != fasthttp.MethodGet {
		s.methodNotAllowed(ctx, "GET")
		return
	}
	cs, err := s.agent.Containers(s.base, name)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, &kilnv1.ContainerList{Containers: cs})
}

func (s *HTTPServer) methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	ctx.Response.Header.Set(wire.HeaderError, wire.ClassInvalidArgument)
	writeJSON(ctx, fasthttp.StatusMethodNotAllowed, &kilnv1.Error{Error: "method not allowed", Class: wire.ClassInvalidArgument})
}

// writeError answers with err's status and a JSON Error body. The message
// may quote the request (a path, a parameter): bytes that are not UTF-8
// become U+FFFD, since JSON cannot carry them.
func (s *HTTPServer) writeError(ctx *fasthttp.RequestCtx, err error) {
	status, class := HTTPStatus(err)
	if status >= 500 {
		s.log.Warn("request failed", "path", string(ctx.Path()), "status", status, "err", err)
	}
	if c := errdefs.Classify(err); c.Retry {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	ctx.Response.Header.Set(wire.HeaderError, class)
	writeJSON(ctx, status, &kilnv1.Error{Error: validUTF8(err.Error()), Class: class})
}

// validUTF8 returns s with each byte that is not UTF-8 replaced by U+FFFD.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, string(utf8.RuneError))
}

// handleParseError answers requests fasthttp could not read: a body too
// large (413; 401 for a deploy or an image import by anyone but the admin), a line and
// headers over MaxHeaderBytes (431), too slow (408), or malformed (400).
// fasthttp closes the connection after the answer.
func (s *HTTPServer) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	var netErr net.Error
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		err = fmt.Errorf("%w: the request line and headers are over %d bytes", errdefs.ErrHeadersTooLarge, MaxHeaderBytes)
	case errors.Is(err, fasthttp.ErrBodyTooLarge) && isDeploy(&ctx.Request.Header):
		if aerr := s.gate.requireAdmin(bearer(ctx)); aerr != nil {
			err = aerr
		} else {
			err = fmt.Errorf("%w: a deploy's body is over the %d byte limit", agent.ErrPayloadTooLarge, s.maxDeploy)
		}
	case errors.Is(err, fasthttp.ErrBodyTooLarge) && isImageImport(&ctx.Request.Header):
		if aerr := s.gate.requireAdmin(bearer(ctx)); aerr != nil {
			err = aerr
		} else {
			err = fmt.Errorf("%w: an image archive is over the %d byte limit of an import (kilnd --max-image-bytes)", agent.ErrPayloadTooLarge, s.maxImage)
		}
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		err = fmt.Errorf("%w: body is over the %d byte limit", agent.ErrPayloadTooLarge, s.agent.MaxBodyBytes())
	case errors.As(err, &netErr) && netErr.Timeout():
		err = fmt.Errorf("%w: the request did not arrive in time", errdefs.ErrRequestTimeout)
	default:
		err = fmt.Errorf("%w: cannot read request: %v", agent.ErrInvalidArgument, err)
	}
	// A call refused this early still gets its usage record.
	path := ctx.Path()
	for _, prefix := range [][]byte{prefixInvoke, prefixFunction} {
		if rest, ok := bytes.CutPrefix(path, prefix); ok {
			name, _ := splitInvokePath(rest)
			id, rerr := s.agent.Reject(&agent.Call{Function: string(name), Trigger: "http", Received: ctx.Time()}, err)
			ctx.Response.Header.Set(wire.HeaderCallID, id)
			err = rerr
		}
	}
	s.writeError(ctx, err)
}

var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false}

// writeJSON answers status with m as JSON.
func writeJSON(ctx *fasthttp.RequestCtx, status int, m proto.Message) {
	writeMessage(ctx, status, jsonOptions, m)
}

// writeMessage answers status with m as JSON written with opts; 500 when m
// cannot be.
func writeMessage(ctx *fasthttp.RequestCtx, status int, opts protojson.MarshalOptions, m proto.Message) {
	b, err := opts.Marshal(m)
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		return
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// specError rewrites a protojson error about a FunctionSpec to name fields
// as users write them (memory_mb, not memoryMb).
func specError(err error) string {
	msg := err.Error()
	fields := (&kilnv1.FunctionSpec{}).ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		if json, name := f.JSONName(), string(f.Name()); json != name {
			msg = strings.ReplaceAll(msg, " "+json, " "+name)
		}
	}
	return msg
}
