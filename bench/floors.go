package bench

import (
	"context"
	"fmt"
	"runtime"
	"strings"

	"github.com/kilnfx/kiln/api/client"
)

// EdgeProcs is the GOMAXPROCS of the floors' edge processes: FloorGOMAXPROCS,
// else kilnd's default, half the CPUs (at least 1).
func (c Config) EdgeProcs() int {
	if c.FloorGOMAXPROCS > 0 {
		return c.FloorGOMAXPROCS
	}
	return max(1, runtime.NumCPU()/2)
}

// FnProcs is the GOMAXPROCS of the floors' function processes: the
// functions' (FnGOMAXPROCS), else kiln's default for a Go function without
// a CPU quota, 1.
func (c Config) FnProcs() int {
	if c.FnGOMAXPROCS > 0 {
		return c.FnGOMAXPROCS
	}
	return 1
}

// startProcFloor starts the out-of-process floor kind.
func (e *Env) startProcFloor(ctx context.Context, kind string) (*ProcFloor, error) {
	if e.Floor == "" {
		return nil, fmt.Errorf("no kiln-floor binary")
	}
	return StartProcFloor(ctx, e.Floor, kind, e.EdgeProcs(), e.FnProcs())
}

// httpFloorRows says which rows httpFloor measures and how to name them.
type httpFloorRows struct {
	// prefix names the rows: prefix (echo), prefix-json, prefix-primes,
	// prefix-seq.
	prefix string
	// functions is how many of echo, json and primes to measure.
	functions int
	// floor, when set, is the prefix of the rows these are divided by
	// (their own, by default).
	floor string
	note  string
	// parts is how many parts the scenario has, these rows the first
	// functions+1 (for the progress bar; default functions+1).
	parts int
}

// httpFloor measures the HTTP floor at addr, serving /echo, /json and
// /primes: an open-loop row for each function, then echo one call at a
// time.
func (e *Env) httpFloor(ctx context.Context, addr string, rows httpFloorRows) ([]Result, error) {
	c := NewHostClient(addr, 8)
	floor := rows.floor
	if floor == "" {
		floor = rows.prefix
	}
	if rows.parts == 0 {
		rows.parts = rows.functions + 1
	}
	var out []Result
	for _, fn := range []struct {
		suffix, path string
		body         []byte
		check        func([]byte) error
	}{
		{"", "/echo", EchoBody, EchoCheck(EchoBody)},
		{"-json", "/json", JSONBody, nil},
		{"-primes", "/primes", PrimesBody, nil},
	}[:rows.functions] {
		name := rows.prefix + fn.suffix
		ol := e.openLoop("")
		ol.Progress = e.part(len(out), rows.parts)
		lat, err := ol.Run(ctx, HTTPTarget(c, fn.path, fn.body, fn.check))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		r := lat.Result(name)
		r.Floor, r.Mode = floor+fn.suffix, e.openMode()
		r.Note = rows.note + ", handler " + strings.TrimPrefix(fn.path, "/")
		out = append(out, r)
	}
	// The floor of the one-call-at-a-time rows (thawed, stem, cold...).
	lat, err := oneAtATime(ctx, e.part(rows.functions, rows.parts), e.Warmup, e.Calls, "",
		HTTPTarget(c, "/echo", EchoBody, EchoCheck(EchoBody)), nil)
	if err != nil {
		return nil, fmt.Errorf("%s-seq: %w", rows.prefix, err)
	}
	r := lat.Result(rows.prefix + "-seq")
	r.Floor, r.Mode, r.Note = floor+"-seq", seqMode, rows.note+", handler echo, back to back"
	return append(out, r), nil
}

func runFloorProc(ctx context.Context, e *Env) ([]Result, error) {
	f, err := e.startProcFloor(ctx, "echo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return e.httpFloor(ctx, f.Addr, httpFloorRows{
		prefix: "floor-proc", functions: e.functions(), note: "kiln-floor echo: fasthttp in its own process (" + f.Procs() + ")",
	})
}

func runFloorHop(ctx context.Context, e *Env) ([]Result, error) {
	f, err := e.startProcFloor(ctx, "hop")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return e.httpFloor(ctx, f.Addr, httpFloorRows{
		prefix: "floor-hop", functions: 1, floor: "floor-proc",
		note: "kiln-floor hop: fasthttp relaying over one unix-socket frame connection to an echoing process (" + f.Procs() + ")",
	})
}

func runFloorGRPCHop(ctx context.Context, e *Env) ([]Result, error) {
	f, err := e.startProcFloor(ctx, "grpc-hop")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	note := "kiln-floor grpc-hop: relaying over one gRPC bidi stream on a unix socket to an echoing process (" + f.Procs() + ")"
	// HTTP in: the shape of warm-http, one gRPC hop behind fasthttp.
	out, err := e.httpFloor(ctx, f.Addr, httpFloorRows{prefix: "floor-grpc-hop", functions: 1, floor: "floor-proc", note: note, parts: 4})
	if err != nil {
		return nil, err
	}
	// gRPC in: kiln's Invoker service at the edge, as warm-grpc and
	// warm-stream reach kilnd.
	c, err := client.NewGRPC(f.GRPCAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ol := e.openLoop("")
	ol.Progress = e.part(2, 4)
	lat, err := ol.Run(ctx, GRPCUnaryTarget(c, "echo", EchoBody))
	if err != nil {
		return nil, fmt.Errorf("floor-grpc-hop-unary: %w", err)
	}
	unary := lat.Result("floor-grpc-hop-unary")
	unary.Floor, unary.Mode, unary.Note = "floor-grpc-hop-unary", e.openMode(), note+"; unary Invoke at the edge"
	stream, err := e.streamLoop(ctx, c, "floor-grpc-hop-stream", e.part(3, 4))
	if err != nil {
		return nil, err
	}
	stream.Floor, stream.Note = "floor-grpc-hop-stream", note+"; InvokeStream at the edge"
	return append(out, unary, stream), nil
}
