package bench

import (
	"fmt"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// Floor is the in-process echo server every figure is divided by: the same
// echo handler as the benchmark function, behind fasthttp on loopback, with
// no container and no agent.
type Floor struct {
	ln  net.Listener
	srv *fasthttp.Server
}

// StartFloor starts the floor server on a free loopback port.
func StartFloor() (*Floor, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Floor{ln: ln, srv: &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetBody(ctx.PostBody())
	}}}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

// Addr returns the floor's host:port.
func (f *Floor) Addr() string { return f.ln.Addr().String() }

// Close stops the floor server.
func (f *Floor) Close() error { return f.srv.Shutdown() }

// Sequential sends n POSTs of body to url one after another over one
// keep-alive connection, after warm warm-up calls that are not recorded. It
// fails on any status other than want.
func Sequential(addr, path string, body []byte, warm, n, want int) (*Latencies, error) {
	c := &fasthttp.HostClient{Addr: addr, MaxConns: 1, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + path)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetBody(body)
	lat := NewLatencies()
	for i := 0; i < warm+n; i++ {
		if i == warm {
			lat.Begin()
		}
		t0 := time.Now()
		if err := c.Do(req, resp); err != nil {
			return nil, fmt.Errorf("call %d: %w", i, err)
		}
		d := time.Since(t0)
		if resp.StatusCode() != want {
			return nil, fmt.Errorf("call %d: status %d: %s", i, resp.StatusCode(), resp.Body())
		}
		if i >= warm {
			lat.Record(d)
		}
	}
	lat.End()
	return lat, nil
}
