package bench

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	pb "github.com/kilnfx/kiln/proto/executorpb"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Segment is one stretch of a warm call's way, between two points stamped
// on CLOCK_MONOTONIC by whichever process passes them (the load generator,
// kilnd or the executor).
type Segment struct {
	Name string `json:"name"`
	// From and To name the points (agent.TracePoint names, or "client_sent"
	// and "client_received" for the load generator's own).
	From string `json:"from"`
	To   string `json:"to"`
	// P50 and P90 are the segment's percentiles over the traced calls, µs.
	P50 float64 `json:"p50_us"`
	P90 float64 `json:"p90_us"`
	// Share is the segment's p50 over the sum of every segment's p50.
	Share float64 `json:"share"`
}

// budgetSegments are the stretches a budget reports, in the call's order.
var budgetSegments = []struct{ name, from, to string }{
	{"client → edge: loopback, kilnd's wake-up, request parse", "client_sent", "edge_received"},
	{"edge: build the call", "edge_received", "agent_start"},
	{"agent: call id, lookup, admission", "agent_start", "acquire_start"},
	{"pool: acquire a container", "acquire_start", "acquired"},
	{"agent: build the Invoke", "acquired", "sending"},
	{"to the executor: encode, gRPC Send, write, wake-up, read, decode", "sending", "exec_received"},
	{"executor: dispatch to the handler", "exec_received", "handler_start"},
	{"handler", "handler_start", "handler_end"},
	{"executor: build the result", "handler_end", "exec_sending"},
	{"back to kilnd: send, write, wake-up, read, decode", "exec_sending", "agent_received"},
	{"kilnd: hand the result to the call", "agent_received", "agent_woke"},
	{"agent: release, meter (journal write)", "agent_woke", "metered"},
	{"edge: build the answer", "metered", "edge_done"},
	{"edge → client: write, loopback, client's wake-up", "edge_done", "client_received"},
}

// tracedCall is the points one traced call passed, by name.
type tracedCall map[string]int64

// budget turns traced calls into segments.
func budget(calls []tracedCall) []Segment {
	segs := make([]Segment, 0, len(budgetSegments))
	var total float64
	for _, b := range budgetSegments {
		var ds []float64
		for _, c := range calls {
			from, to := c[b.from], c[b.to]
			if from == 0 || to == 0 {
				continue
			}
			ds = append(ds, float64(to-from)/1e3)
		}
		if len(ds) == 0 {
			continue
		}
		sort.Float64s(ds)
		s := Segment{Name: b.name, From: b.from, To: b.to, P50: ds[len(ds)/2], P90: ds[len(ds)*9/10]}
		total += s.P50
		segs = append(segs, s)
	}
	for i := range segs {
		if total > 0 {
			segs[i].Share = segs[i].P50 / total
		}
	}
	return segs
}

// parseTraced reads an X-Kiln-Trace value into c.
func parseTraced(c tracedCall, v string) error {
	pts, err := agent.ParseTrace(v)
	if err != nil {
		return err
	}
	for p, ns := range pts {
		c[p.String()] = ns
	}
	return nil
}

// runBudget traces warm echo calls one at a time, over HTTP and over the
// unary gRPC Invoke, against a kilnd started with --trace-calls.
func runBudget(ctx context.Context, e *Env) ([]Result, error) {
	k, err := e.startKilnd(ctx, "--trace-calls")
	if err != nil {
		return nil, err
	}
	defer e.stop(k)
	if err := e.deployWarm(ctx, k, "echo"); err != nil {
		return nil, err
	}
	n, warm := e.Calls, e.Warmup
	progress := e.part(0, 2)

	hc := NewHostClient(k.Addr, 1)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + k.Addr + "/invoke/echo")
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.Set(wire.HeaderTrace, "1")
	req.SetBody(EchoBody)
	var httpCalls []tracedCall
	for i := 0; i < warm+n; i++ {
		c := tracedCall{"client_sent": pb.MonotonicNow()}
		if err := hc.Do(req, resp); err != nil {
			return nil, fmt.Errorf("traced HTTP call: %w", err)
		}
		c["client_received"] = pb.MonotonicNow()
		if resp.StatusCode() != fasthttp.StatusOK {
			return nil, fmt.Errorf("traced HTTP call: status %d: %.200s", resp.StatusCode(), resp.Body())
		}
		if err := parseTraced(c, string(resp.Header.Peek(wire.HeaderTrace))); err != nil {
			return nil, err
		}
		if i >= warm {
			httpCalls = append(httpCalls, c)
		}
		if progress != nil && i%100 == 0 {
			progress(i, 2*(warm+n))
		}
	}

	conn, err := grpc.NewClient(k.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	inv := kilnv1.NewInvokerClient(conn)
	greq := &kilnv1.InvokeRequest{Function: "echo", Body: EchoBody}
	gctx := metadata.AppendToOutgoingContext(ctx, wire.MetadataTrace, "1")
	var grpcCalls []tracedCall
	for i := 0; i < warm+n; i++ {
		var md metadata.MD
		c := tracedCall{"client_sent": pb.MonotonicNow()}
		out, err := inv.Invoke(gctx, greq, grpc.Header(&md))
		c["client_received"] = pb.MonotonicNow()
		if err != nil {
			return nil, fmt.Errorf("traced gRPC call: %w", err)
		}
		if out.Status != 200 {
			return nil, fmt.Errorf("traced gRPC call: status %d", out.Status)
		}
		if v := md.Get(wire.MetadataTrace); len(v) > 0 {
			if err := parseTraced(c, v[0]); err != nil {
				return nil, err
			}
		}
		if i >= warm {
			grpcCalls = append(grpcCalls, c)
		}
		if progress != nil && i%100 == 0 {
			progress(warm+n+i, 2*(warm+n))
		}
	}
	return []Result{
		budgetResult("budget-http", "over HTTP", httpCalls),
		budgetResult("budget-grpc", "over the unary gRPC Invoke", grpcCalls),
	}, nil
}

func budgetResult(name, how string, calls []tracedCall) Result {
	lat := NewLatencies()
	for _, c := range calls {
		lat.Started(wire.StartWarm)
		lat.Record(time.Duration(c["client_received"] - c["client_sent"]))
	}
	r := lat.Result(name)
	if r.Mean > 0 {
		r.Throughput = 1e6 / r.Mean // one call at a time
	}
	r.Mode = seqMode
	r.Floor = "floor-proc-seq"
	r.Budget = budget(calls)
	r.Note = fmt.Sprintf("function echo, one warm container, %d traced calls one at a time %s; kilnd --trace-calls", len(calls), how)
	return r
}
