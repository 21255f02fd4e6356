package agent

import (
	"strconv"
	"strings"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// TracePoint is a point a traced call passes on its way through kilnd and
// the executor. The points are in the order a warm call passes them.
type TracePoint int

// The points of a call's trace. Each is stamped by the side that passes
// it, in nanoseconds of the host's CLOCK_MONOTONIC.
const (
	// TraceEdgeReceived: the edge's handler has the parsed request.
	TraceEdgeReceived TracePoint = iota
	// TraceAgentStart: Invoke is called with the call built.
	TraceAgentStart
	// TraceAcquireStart: the function is resolved and the caller admitted.
	TraceAcquireStart
	// TraceAcquired: the pool handed over a container.
	TraceAcquired
	// TraceSending: the Invoke is built and handed to the session stream's
	// Send.
	TraceSending
	// TraceExecReceived: the executor has read and decoded the Invoke.
	TraceExecReceived
	// TraceHandlerStart and TraceHandlerEnd bracket the handler.
	TraceHandlerStart
	TraceHandlerEnd
	// TraceExecSending: the executor's Result is built, about to be sent.
	TraceExecSending
	// TraceAgentReceived: kilnd's session reader has read the Result.
	TraceAgentReceived
	// TraceAgentWoke: the calling goroutine has the Result.
	TraceAgentWoke
	// TraceMetered: the usage record is written and the container released.
	TraceMetered
	// TraceEdgeDone: the edge has set the answer, about to write it.
	TraceEdgeDone

	numTracePoints
)

var tracePointNames = [numTracePoints]string{
	"edge_received", "agent_start", "acquire_start", "acquired", "sending",
	"exec_received", "handler_start", "handler_end", "exec_sending",
	"agent_received", "agent_woke", "metered", "edge_done",
}

// String returns the point's name as AppendTo writes it.
func (p TracePoint) String() string {
	if p < 0 || p >= numTracePoints {
		return "point" + strconv.Itoa(int(p))
	}
	return tracePointNames[p]
}

// TracePoints lists every point in order.
func TracePoints() []TracePoint {
	ps := make([]TracePoint, numTracePoints)
	for i := range ps {
		ps[i] = TracePoint(i)
	}
	return ps
}

// Trace records when one call passed each TracePoint. An edge that wants
// a call traced sets Call.Trace to a new Trace; a nil *Trace records
// nothing, so untraced calls pay one nil check per point. A Trace is
// written by the call's own goroutine only.
type Trace struct {
	at [numTracePoints]int64
}

// Mark stamps p with the time now.
func (t *Trace) Mark(p TracePoint) {
	if t != nil {
		t.at[p] = pb.MonotonicNow()
	}
}

// At returns when the call passed p, in CLOCK_MONOTONIC nanoseconds, or 0
// if it was not stamped.
func (t *Trace) At(p TracePoint) int64 {
	if t == nil || p < 0 || p >= numTracePoints {
		return 0
	}
	return t.at[p]
}

// setExecutor copies the executor's stamps.
func (t *Trace) setExecutor(ct *pb.CallTrace) {
	if t == nil || ct == nil {
		return
	}
	t.at[TraceSending] = ct.AgentSendingNs
	t.at[TraceExecReceived] = ct.ReceivedNs
	t.at[TraceHandlerStart] = ct.HandlerStartNs
	t.at[TraceHandlerEnd] = ct.HandlerEndNs
	t.at[TraceExecSending] = ct.SendingNs
	t.at[TraceAgentReceived] = ct.AgentReceivedNs
}

// AppendTo appends the stamped points to dst as "name=ns" pairs joined by
// commas, in order, and returns the extended slice: the value of the
// X-Kiln-Trace answer header.
func (t *Trace) AppendTo(dst []byte) []byte {
	if t == nil {
		return dst
	}
	first := true
	for p, at := range t.at {
		if at == 0 {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, tracePointNames[p]...)
		dst = append(dst, '=')
		dst = strconv.AppendInt(dst, at, 10)
	}
	return dst
}

// ParseTrace reads what AppendTo wrote: the CLOCK_MONOTONIC nanoseconds of
// each point named. Unknown names are skipped, so that a reader outlives a
// new point.
func ParseTrace(s string) (map[TracePoint]int64, error) {
	out := make(map[TracePoint]int64, numTracePoints)
	for len(s) > 0 {
		var pair string
		if i := strings.IndexByte(s, ','); i >= 0 {
			pair, s = s[:i], s[i+1:]
		} else {
			pair, s = s, ""
		}
		i := strings.IndexByte(pair, '=')
		if i < 0 {
			return nil, &traceSyntaxError{pair}
		}
		ns, err := strconv.ParseInt(pair[i+1:], 10, 64)
		if err != nil {
			return nil, &traceSyntaxError{pair}
		}
		for p, name := range tracePointNames {
			if name == pair[:i] {
				out[TracePoint(p)] = ns
			}
		}
	}
	return out, nil
}

type traceSyntaxError struct{ pair string }

func (e *traceSyntaxError) Error() string {
	return "trace: want name=nanoseconds, got " + strconv.Quote(e.pair)
}
