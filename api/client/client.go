// Package client is a Go client of kiln's HTTP API: function management under
// /v1/functions (with each function's containers and logs), calls through
// /invoke/{name}, tenant API keys under /v1/keys, and metering under
// /v1/usage and /v1/calls.
//
// Requests and answers are kiln.v1 messages (proto/kiln/v1, which the gRPC
// API speaks too) as JSON, protojson with the proto field names: functions,
// containers, API keys, usage reports and call records alike. The names the
// client shares with the server besides (headers, error classes, groupings,
// limits) are in package api/wire. Every request carries the token of
// [WithToken], if any, as "Authorization: Bearer TOKEN": the admin
// token for the management API, or a tenant's API key, which may read that
// tenant's usage and calls. An error answered by kiln itself, as opposed to
// by a function, is returned as an *APIError:
//
//	fn, err := c.Get(ctx, "hello")
//	var apiErr *client.APIError
//	if errors.As(err, &apiErr) && apiErr.Class == wire.ClassNotFound {
//		// not deployed
//	}
//
// The package imports only the standard library and kiln's public API types.
package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/errdefs"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// ErrInvalidName is returned (wrapped) by every method given a function name
// that kiln would refuse; no request is sent.
var ErrInvalidName = errors.New("invalid function name")

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// jsonOptions write request bodies with the proto field names, as kiln's
// API documents them.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// Limits on answers read into memory.
const (
	maxManagementBody = 32 << 20 // a function list
	maxErrorBody      = 1 << 20
)

// APIError is an error answered by kiln (not by a function).
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Class is the error class (one of wire's Class constants), or empty
	// when the answer did not say.
	Class string
	// Message is kiln's human-readable message.
	Message string
}

// Unwrap returns the sentinel of the error's class (package errdefs), so
// that errors.Is(err, errdefs.ErrNotFound) works on the client's side as on
// the agent's: every class kiln answers with maps back. An answer without a
// class, or with one kiln does not know, unwraps to nothing.
func (e *APIError) Unwrap() error {
	if c, ok := errdefs.Lookup(e.Class); ok {
		return c.Err
	}
	return nil
}

// Error implements error: kiln's message, then the class and the HTTP status,
// as in "function hello not found (not_found, HTTP 404)".
func (e *APIError) Error() string {
	var b strings.Builder
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString(http.StatusText(e.Status))
	}
	b.WriteString(" (")
	if e.Class != "" {
		b.WriteString(e.Class)
		b.WriteString(", ")
	}
	fmt.Fprintf(&b, "HTTP %d)", e.Status)
	return b.String()
}

// InvokeResult is a function's answer to a call.
type InvokeResult struct {
	// Status is the HTTP status the function answered with.
	Status int
	// Header holds the answer's headers.
	Header http.Header
	// Body is the answer's body.
	Body []byte
	// FunctionError is true when the function failed the call (its handler
	// returned an error or panicked); Status is then the function's, 500 by
	// default.
	FunctionError bool
}

// Client talks to one kiln agent. It is safe for concurrent use.
type Client struct {
	base      *url.URL
	hc        *http.Client
	token     string
	userAgent string
}

type options struct {
	hc        *http.Client
	token     string
	userAgent string
}

// Option configures a Client.
type Option func(*options)

// WithHTTPClient makes the Client send its requests with hc instead of
// http.DefaultClient.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) { o.hc = hc }
}

// WithToken makes the Client authenticate with the bearer token tok.
func WithToken(tok string) Option {
	return func(o *options) { o.token = tok }
}

// WithUserAgent sets the User-Agent header of the Client's requests.
func WithUserAgent(ua string) Option {
	return func(o *options) { o.userAgent = ua }
}

// New returns a Client of the kiln agent at baseURL, such as
// "http://127.0.0.1:8080". A path in baseURL prefixes every request's path.
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("agent URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("agent URL %q: scheme must be http or https", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("agent URL %q: no host", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("agent URL %q: must have no user, query or fragment", baseURL)
	}
	o := options{hc: http.DefaultClient, userAgent: "kiln-client"}
	for _, opt := range opts {
		opt(&o)
	}
	if o.hc == nil {
		o.hc = http.DefaultClient
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return &Client{base: u, hc: o.hc, token: o.token, userAgent: o.userAgent}, nil
}

// Deploy creates the function name from spec, or replaces its spec when it
// exists, and returns the deployed function. spec.Code is a path on the
// agent's host.
func (c *Client) Deploy(ctx context.Context, name string, spec *kilnv1.FunctionSpec) (*kilnv1.Function, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if spec == nil {
		return nil, errors.New("deploy: nil spec")
	}
	body, err := jsonOptions.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	fn := new(kilnv1.Function)
	if err := c.do(ctx, http.MethodPut, "/v1/functions/"+name, nil, body, maxManagementBody, fn); err != nil {
		return nil, err
	}
	return fn, nil
}

// Get returns the function name. A function that does not exist is an
// *APIError of class wire.ClassNotFound.
func (c *Client) Get(ctx context.Context, name string) (*kilnv1.Function, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	fn := new(kilnv1.Function)
	if err := c.do(ctx, http.MethodGet, "/v1/functions/"+name, nil, nil, maxManagementBody, fn); err != nil {
		return nil, err
	}
	return fn, nil
}

// List returns the deployed functions, in the agent's order.
func (c *Client) List(ctx context.Context) ([]*kilnv1.Function, error) {
	list := new(kilnv1.FunctionList)
	if err := c.do(ctx, http.MethodGet, "/v1/functions", nil, nil, maxManagementBody, list); err != nil {
		return nil, err
	}
	return list.GetFunctions(), nil
}

// Delete removes the function name. A function that does not exist is an
// *APIError of class wire.ClassNotFound.
func (c *Client) Delete(ctx context.Context, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/functions/"+name, nil, nil, maxManagementBody, nil)
}

// Containers returns the containers of the function name, in the agent's
// order. A function that does not exist is an *APIError of class
// wire.ClassNotFound.
func (c *Client) Containers(ctx context.Context, name string) ([]*kilnv1.Container, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	list := new(kilnv1.ContainerList)
	if err := c.do(ctx, http.MethodGet, "/v1/functions/"+name+"/containers", nil, nil, maxManagementBody, list); err != nil {
		return nil, err
	}
	return list.GetContainers(), nil
}

// Logs returns the recent output of the function name's containers: text
// lines "TIME CONTAINER STREAM: TEXT", oldest first. tail is the number of
// recent lines, 0 for all the agent keeps, negative for the agent's default
// (100). With follow the body stays open and yields new lines as the
// function writes them, until ctx is cancelled, the body is closed or the
// agent stops; the agent's keep-alive empty lines are left out, and a
// Timeout of the http.Client of WithHTTPClient cuts it too. The caller must
// close the body. A function that does not exist is an *APIError of class
// wire.ClassNotFound.
func (c *Client) Logs(ctx context.Context, name string, tail int, follow bool) (io.ReadCloser, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	q := url.Values{}
	if tail >= 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	if follow {
		q.Set("follow", "1")
	}
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/functions/"+name+"/logs", q, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, readAPIError(resp)
	}
	return &logReader{body: resp.Body, r: bufio.NewReader(resp.Body)}, nil
}

// logReader is a log body without its empty keep-alive lines.
type logReader struct {
	body io.Closer
	r    *bufio.Reader
	line []byte // the rest of the current line, not yet read
	err  error  // the error after line
	mid  bool   // line is the start or middle of a line longer than r's buffer
}

// Read implements io.Reader: it returns the bytes of at most one line, so
// that a followed line is seen as soon as it comes.
func (l *logReader) Read(p []byte) (int, error) {
	for len(l.line) == 0 {
		if l.err != nil {
			return 0, l.err
		}
		line, err := l.r.ReadSlice('\n')
		cont := l.mid
		l.mid = errors.Is(err, bufio.ErrBufferFull)
		if l.mid {
			err = nil // a long line: pass it on in pieces
		} else if !cont && len(bytes.TrimRight(line, "\r\n")) == 0 {
			line = nil // keep-alive
		}
		l.line, l.err = line, err
	}
	n := copy(p, l.line)
	l.line = l.line[n:]
	return n, nil
}

// Close implements io.Closer.
func (l *logReader) Close() error { return l.body.Close() }

// Invoke calls the function name with body and header and returns its answer.
// A function's answer is never an error, whatever its status: a failed call
// has InvokeResult.FunctionError set. Errors from kiln itself (unknown
// function, overload, timeout, ...) are *APIError. Cancelling ctx abandons
// the call.
func (c *Client) Invoke(ctx context.Context, name string, body []byte, header http.Header) (*InvokeResult, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	req, err := c.newRequest(ctx, http.MethodPost, "/invoke/"+name, nil, body)
	if err != nil {
		return nil, err
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	class := resp.Header.Get(wire.HeaderError)
	if class != "" && class != wire.ClassFunctionError {
		return nil, readAPIError(resp)
	}
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("invoke %s: reading the answer: %w", name, err)
	}
	return &InvokeResult{
		Status:        resp.StatusCode,
		Header:        resp.Header,
		Body:          out,
		FunctionError: class == wire.ClassFunctionError,
	}, nil
}

// do sends a request with the JSON of a message as its body (none when
// body is nil) and decodes a successful answer of at most limit bytes into
// out (ignored when nil). Fields a newer agent added are ignored.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body []byte, limit int64, out proto.Message) error {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	data, err := c.send(req, limit)
	if err != nil || out == nil {
		return err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// newRequest returns a request of path (unescaped, below the base URL) with
// the query (none when nil) and the body (none when nil), carrying the
// client's User-Agent and token. Every request of the Client is made here.
func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body []byte) (*http.Request, error) {
	u := *c.base
	u.Path += path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), r)
	if err != nil {
		return nil, err
	}
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// readAPIError turns an error answer of kiln into an *APIError. The body is
// a kilnv1.Error as JSON; an answer that is not (say, from a proxy in
// between) keeps its text as the message.
func readAPIError(resp *http.Response) *APIError {
	e := &APIError{Status: resp.StatusCode, Class: resp.Header.Get(wire.HeaderError)}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body kilnv1.Error
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &body); err == nil && (body.Error != "" || body.Class != "") {
		e.Message = body.Error
		if body.Class != "" {
			e.Class = body.Class
		}
		return e
	}
	e.Message = strings.TrimSpace(string(data))
	if len(e.Message) > 512 {
		e.Message = strings.ToValidUTF8(e.Message[:512], "") + "..."
	}
	return e
}

func validName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w %q: want a lowercase letter, then at most 62 lowercase letters, digits or '-'", ErrInvalidName, name)
	}
	return nil
}
