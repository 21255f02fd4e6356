package api

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// checkTrace fails unless v holds every trace point, in order.
func checkTrace(t *testing.T, v string) {
	t.Helper()
	pts, err := agent.ParseTrace(v)
	if err != nil {
		t.Fatalf("trace %q: %v", v, err)
	}
	var last int64
	for _, p := range agent.TracePoints() {
		if pts[p] == 0 || pts[p] < last {
			t.Errorf("trace %q: %s at %d, after %d", v, p, pts[p], last)
		}
		last = pts[p]
	}
}

// TestHTTPTrace checks that a call asking for its trace gets it only from
// a server that allows tracing, and that an error answer carries it too.
func TestHTTPTrace(t *testing.T) {
	off := newHTTPEnv(t)
	if a := off.do(t, "POST", "/invoke/echo", "", []byte("hi"), wire.HeaderTrace+": 1"); a.status != 200 || a.header.Get(wire.HeaderTrace) != "" {
		t.Errorf("without tracing: %d, trace %q", a.status, a.header.Get(wire.HeaderTrace))
	}
	on := newHTTPEnv(t, WithCallTracing(true))
	if a := on.do(t, "POST", "/invoke/echo", "", []byte("hi")); a.header.Get(wire.HeaderTrace) != "" {
		t.Errorf("a call that did not ask got trace %q", a.header.Get(wire.HeaderTrace))
	}
	for range 2 { // cold, then warm
		a := on.do(t, "POST", "/invoke/echo", "", []byte("hi"), wire.HeaderTrace+": 1")
		if a.status != 200 {
			t.Fatalf("traced call: %d %s", a.status, a.body)
		}
		checkTrace(t, a.header.Get(wire.HeaderTrace))
	}
	a := on.do(t, "POST", "/invoke/nope", "", nil, wire.HeaderTrace+": 1")
	pts, err := agent.ParseTrace(a.header.Get(wire.HeaderTrace))
	if a.status != 404 || err != nil || pts[agent.TraceEdgeReceived] == 0 || pts[agent.TraceEdgeDone] == 0 || pts[agent.TraceAcquired] != 0 {
		t.Errorf("refused call: %d, trace %q (%v)", a.status, a.header.Get(wire.HeaderTrace), err)
	}
}

func TestGRPCTrace(t *testing.T) {
	ctx := metadata.AppendToOutgoingContext(context.Background(), wire.MetadataTrace, "1")
	req := &kilnv1.InvokeRequest{Function: "echo", Body: []byte("hi")}
	var md metadata.MD
	off := newGRPCEnv(t)
	if _, err := off.invoker.Invoke(ctx, req, grpc.Header(&md)); err != nil || len(md.Get(wire.MetadataTrace)) != 0 {
		t.Errorf("without tracing: %v, trace %v", err, md.Get(wire.MetadataTrace))
	}
	on := newGRPCEnv(t, WithGRPCCallTracing(true))
	for range 2 {
		md = nil
		if _, err := on.invoker.Invoke(ctx, req, grpc.Header(&md)); err != nil {
			t.Fatal(err)
		}
		v := md.Get(wire.MetadataTrace)
		if len(v) != 1 {
			t.Fatalf("trace metadata %v", v)
		}
		checkTrace(t, v[0])
	}
}
