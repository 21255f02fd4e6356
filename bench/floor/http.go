package floor

import (
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/kilnfx/kiln/executor/sdk"
)

// Handler returns the echo floor's request handler: POST /{name} runs the
// handler of that name, the least an HTTP server can do to run an
// sdk.Handler (no headers passed, no metering).
func Handler(handlers map[string]sdk.Handler) fasthttp.RequestHandler {
	byPath := make(map[string]sdk.Handler, len(handlers))
	for name, h := range handlers {
		byPath["/"+name] = h
	}
	return func(ctx *fasthttp.RequestCtx) {
		h := byPath[string(ctx.Path())]
		if h == nil {
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			return
		}
		resp, err := h(ctx, &sdk.Request{Method: string(ctx.Method()), Body: ctx.PostBody()})
		switch {
		case err != nil && (resp == nil || resp.Status == 0):
			ctx.SetStatusCode(fasthttp.StatusInternalServerError)
			ctx.SetBodyString(err.Error())
		case resp != nil:
			if resp.Status != 0 {
				ctx.SetStatusCode(resp.Status)
			}
			ctx.SetBody(resp.Body)
		}
	}
}

// RelayHandler returns the hop floors' request handler: every request's
// body goes through h and the answer comes back as the response body (502
// when the hop failed), whatever the path.
func RelayHandler(h Hop) fasthttp.RequestHandler {
	bufs := sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}
	return func(ctx *fasthttp.RequestCtx) {
		b := bufs.Get().(*[]byte)
		ans, err := h.Call(ctx, ctx.PostBody(), (*b)[:0])
		if err != nil {
			ctx.SetStatusCode(fasthttp.StatusBadGateway)
			ctx.SetBodyString(err.Error())
		} else {
			ctx.SetBody(ans)
			*b = ans[:0]
		}
		bufs.Put(b)
	}
}
