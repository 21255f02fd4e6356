package api

import (
	"bufio"
	"fmt"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// runtimes serves /v1/runtimes: GET lists the built runtimes, POST
// /v1/runtimes/{name} builds one (its answer is newline-delimited JSON
// RuntimeBuildEvents: progress, then the runtime or the error), DELETE
// /v1/runtimes/{name} removes the builds no function uses.
func (s *HTTPServer) runtimes(ctx *fasthttp.RequestCtx, rest string) {
	method := string(ctx.Method())
	if rest == "" || rest == "/" {
		if method != fasthttp.MethodGet {
			s.methodNotAllowed(ctx, "GET")
			return
		}
		list, err := s.agent.Runtimes(s.base)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeJSON(ctx, fasthttp.StatusOK, &kilnv1.RuntimeList{Runtimes: list})
		return
	}
	name, ok := strings.CutPrefix(rest, "/")
	if !ok || name == "" || strings.Contains(name, "/") {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/runtimes%s", agent.ErrNotFound, rest))
		return
	}
	switch method {
	case fasthttp.MethodPost:
		s.buildRuntime(ctx, name)
	case fasthttp.MethodDelete:
		if err := s.agent.RemoveRuntime(s.base, name); err != nil {
			s.writeError(ctx, err)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	default:
		s.methodNotAllowed(ctx, "POST, DELETE")
	}
}

// buildRuntime answers POST /v1/runtimes/{name}: 200 with a stream of
// events, each flushed as it happens, so a client sees a build of a
// minute progress. A build's own failure is the last event, not the
// status.
func (s *HTTPServer) buildRuntime(ctx *fasthttp.RequestCtx, name string) {
	ctx.SetContentType("application/x-ndjson")
	ctx.SetStatusCode(fasthttp.StatusOK)
	base := s.base
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		events := &eventWriter{w: w}
		rt, err := s.agent.BuildRuntime(base, name, events)
		last := &kilnv1.RuntimeBuildEvent{Stage: "done", Runtime: rt}
		if err != nil {
			status, class := HTTPStatus(err)
			if status >= 500 {
				s.log.Warn("runtime build failed", "runtime", name, "err", err)
			}
			last = &kilnv1.RuntimeBuildEvent{Stage: "failed", Error: &kilnv1.Error{Error: err.Error(), Class: class}}
		}
		events.write(last)
	})
}

// eventWriter turns the agent's progress lines ("stage elapsed") into
// RuntimeBuildEvents on w, flushed one by one.
type eventWriter struct {
	w *bufio.Writer
}

func (e *eventWriter) Write(p []byte) (int, error) {
	for line := range strings.Lines(string(p)) {
		stage, elapsed, _ := strings.Cut(strings.TrimSpace(line), " ")
		d, _ := time.ParseDuration(elapsed)
		e.write(&kilnv1.RuntimeBuildEvent{Stage: stage, Elapsed: durationpb.New(d)})
	}
	return len(p), nil
}

func (e *eventWriter) write(ev *kilnv1.RuntimeBuildEvent) {
	b, err := jsonOptions.Marshal(ev)
	if err != nil {
		return
	}
	e.w.Write(b)
	e.w.WriteByte('\n')
	e.w.Flush()
}
