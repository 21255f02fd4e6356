package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/bench/floor"
	"github.com/kilnfx/kiln/executor/sdk"
)

// Floor is the in-process HTTP server every HTTP figure is divided by: the
// benchmark functions' own handlers behind fasthttp on loopback, in the
// harness's process, with no agent and no container. It serves POST
// /{name} for each handler it was given.
type Floor struct {
	ln  net.Listener
	srv *fasthttp.Server
}

// StartFloor starts the floor server on a free loopback port, serving each
// handler at /{name}.
func StartFloor(handlers map[string]sdk.Handler) (*Floor, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Floor{ln: ln, srv: &fasthttp.Server{Handler: FloorHandler(handlers), NoDefaultContentType: true}}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

// FloorHandler returns the floor's request handler: the least an HTTP
// server can do to run an sdk.Handler (no headers passed, no metering).
// floor-proc runs the same one in its own process.
func FloorHandler(handlers map[string]sdk.Handler) fasthttp.RequestHandler {
	return floor.Handler(handlers)
}

// Addr returns the floor's host:port.
func (f *Floor) Addr() string { return f.ln.Addr().String() }

// Close stops the floor server.
func (f *Floor) Close() error { return f.srv.Shutdown() }

// NewHostClient returns a fasthttp client of addr keeping up to conns
// connections.
func NewHostClient(addr string, conns int) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr:                addr,
		MaxConns:            conns,
		ReadTimeout:         60 * time.Second,
		WriteTimeout:        60 * time.Second,
		MaxIdleConnDuration: time.Hour,
		MaxConnWaitTimeout:  60 * time.Second,
	}
}

// HTTPTarget returns a Target that POSTs body to path on c and expects
// status 200. check, when set, verifies each answer's body.
func HTTPTarget(c *fasthttp.HostClient, path string, body []byte, check func([]byte) error) Target {
	uri := "http://" + c.Addr + path
	return func() Call {
		req := fasthttp.AcquireRequest()
		resp := fasthttp.AcquireResponse()
		req.SetRequestURI(uri)
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetBody(body)
		return func(ctx context.Context) (string, error) {
			if err := c.Do(req, resp); err != nil {
				return "", err
			}
			if resp.StatusCode() != fasthttp.StatusOK {
				return "", fmt.Errorf("status %d: %.200s", resp.StatusCode(), resp.Body())
			}
			if check != nil {
				if err := check(resp.Body()); err != nil {
					return "", err
				}
			}
			return startKind(resp.Header.Peek(wire.HeaderStart)), nil
		}
	}
}

// EchoCheck verifies that an answer is body.
func EchoCheck(body []byte) func([]byte) error {
	return func(b []byte) error {
		if !bytes.Equal(b, body) {
			return fmt.Errorf("echo answered %.80q, want %.80q", b, body)
		}
		return nil
	}
}

// startKind returns the X-Kiln-Start value b as a constant string, without
// allocating for the known ones.
func startKind(b []byte) string {
	switch string(b) {
	case "warm":
		return "warm"
	case "thawed":
		return "thawed"
	case "stem":
		return "stem"
	case "cold":
		return "cold"
	case "":
		return ""
	}
	return string(b)
}
