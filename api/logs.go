package api

import (
	"bufio"
	"fmt"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kilnfx/kiln/agent"
)

// logHeartbeat is how often a followed log stream is written to while the
// function is silent, to notice a client that went away.
const logHeartbeat = 15 * time.Second

// logs serves GET /v1/functions/{name}/logs?tail=N&follow=1: the function's
// recent stdout and stderr as text lines "TIME CONTAINER STREAM: TEXT";
// with follow the answer stays open and new lines are streamed as they come,
// with an empty line every 15 s of silence to notice a client that left.
func (s *HTTPServer) logs(ctx *fasthttp.RequestCtx, name string) {
	if string(ctx.Method()) != fasthttp.MethodGet {
		s.methodNotAllowed(ctx, "GET")
		return
	}
	args := ctx.QueryArgs()
	tail := 100
	if v := args.Peek("tail"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 0 || n > 100000 {
			s.writeError(ctx, fmt.Errorf("%w: tail: %q is outside 0..100000 (0: all)", agent.ErrInvalidArgument, v))
			return
		}
		tail = n
	}
	follow := false
	switch string(args.Peek("follow")) {
	case "", "0", "false":
	case "1", "true":
		follow = true
	default:
		s.writeError(ctx, fmt.Errorf("%w: follow: want 1 or 0", agent.ErrInvalidArgument))
		return
	}
	ring, err := s.agent.Logs(name)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	lines, wake := ring.Tail(tail)
	ctx.SetContentType("text/plain; charset=utf-8")
	if !follow {
		for _, l := range lines {
			writeLogLine(ctx, l)
		}
		return
	}
	done := s.done
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		var last uint64
		heartbeat := time.NewTimer(logHeartbeat)
		defer heartbeat.Stop()
		for {
			for _, l := range lines {
				writeLogLine(w, l)
				last = l.Seq
			}
			if err := w.Flush(); err != nil {
				return // the client went away
			}
			select {
			case <-wake:
			case <-heartbeat.C:
				heartbeat.Reset(logHeartbeat)
				_ = w.WriteByte('\n')
			case <-done:
				return
			}
			lines, wake = ring.After(last)
		}
	})
}

func writeLogLine(w interface{ WriteString(string) (int, error) }, l agent.LogLine) {
	_, _ = w.WriteString(l.Time.UTC().Format(time.RFC3339Nano))
	_, _ = w.WriteString(" ")
	_, _ = w.WriteString(l.Container)
	_, _ = w.WriteString(" ")
	_, _ = w.WriteString(l.Stream)
	_, _ = w.WriteString(": ")
	_, _ = w.WriteString(l.Text)
	_, _ = w.WriteString("\n")
}
