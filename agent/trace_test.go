package agent_test

import (
	"context"
	"strings"
	"testing"

	"github.com/kilnfx/kiln/agent"
)

func TestTraceRoundTrip(t *testing.T) {
	var tr agent.Trace
	tr.Mark(agent.TraceEdgeReceived)
	tr.Mark(agent.TraceMetered)
	s := string(tr.AppendTo(nil))
	if strings.Count(s, ",") != 1 || !strings.HasPrefix(s, "edge_received=") || !strings.Contains(s, ",metered=") {
		t.Fatalf("AppendTo = %q", s)
	}
	got, err := agent.ParseTrace(s + ",a_later_point=7")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[agent.TraceEdgeReceived] != tr.At(agent.TraceEdgeReceived) || got[agent.TraceMetered] != tr.At(agent.TraceMetered) {
		t.Errorf("ParseTrace(%q) = %v", s, got)
	}
	if tr.At(agent.TraceEdgeReceived) <= 0 || tr.At(agent.TraceMetered) < tr.At(agent.TraceEdgeReceived) {
		t.Errorf("stamps out of order: %d then %d", tr.At(agent.TraceEdgeReceived), tr.At(agent.TraceMetered))
	}
	for _, bad := range []string{"edge_received", "edge_received=x", "=", "edge_received=1,,"} {
		if _, err := agent.ParseTrace(bad); err == nil {
			t.Errorf("ParseTrace(%q) succeeded", bad)
		}
	}
	var none *agent.Trace
	none.Mark(agent.TraceAcquired) // must not panic
	if none.At(agent.TraceAcquired) != 0 || len(none.AppendTo(nil)) != 0 {
		t.Error("a nil Trace recorded something")
	}
	for i, p := range agent.TracePoints() {
		if int(p) != i || p.String() == "" || strings.HasPrefix(p.String(), "point") {
			t.Errorf("point %d is %q", i, p)
		}
	}
}

// TestInvokeTrace checks that a traced call is stamped at every point from
// the agent's start to its metering, the executor's included, in order;
// the edge's own points are the edge's to stamp.
func TestInvokeTrace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.agent.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}
	for _, start := range []string{"cold", "warm"} {
		tr := new(agent.Trace)
		res, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("hi"), Trace: tr})
		if err != nil || res.Start != start {
			t.Fatalf("call: %+v %v", res, err)
		}
		var last int64
		for _, p := range agent.TracePoints() {
			if p == agent.TraceEdgeReceived || p == agent.TraceEdgeDone {
				if tr.At(p) != 0 {
					t.Errorf("%s call: the agent stamped the edge's %s", start, p)
				}
				continue
			}
			at := tr.At(p)
			if at == 0 || at < last {
				t.Errorf("%s call: %s at %d, after %d", start, p, at, last)
			}
			last = at
		}
	}
	// An untraced call asks the executor for nothing.
	if _, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
}
