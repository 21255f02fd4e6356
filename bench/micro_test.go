package bench_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/agent/bundle"
	"github.com/kilnfx/kiln/api"
	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/bench"
	"github.com/kilnfx/kiln/bench/functions/handlers"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// The micro-benchmarks measure the hot-path pieces through public APIs
// only, with nothing installed: the HTTP edge's invoke handler over an
// agent whose pool runs the fake driver (kiln's real executor SDK
// in-process over a real unix socket), the floor's handler, the benchmark
// functions' handlers, and the load generator's own costs. Compare runs
// with benchstat:
//
//	go test -run '^$' -bench . -count 10 ./bench/ > new.txt && benchstat old.txt new.txt

var quiet = slog.New(slog.DiscardHandler)

// newAgent returns an agent backed by the fake driver serving h, with the
// function "echo" deployed and one warm container.
func newAgent(b *testing.B, h sdk.Handler, spec *kilnv1.FunctionSpec) *agent.Agent {
	b.Helper()
	dir, err := os.MkdirTemp("/tmp", "kbm")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	store, err := datastore.Open(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	p, err := pool.New(fake.New(h), filepath.Join(dir, "run"), pool.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	a, err := agent.New(ctx, store, p, dir, agent.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close(context.Background()) })
	// The fake driver runs h whatever the code; the agent only checks that
	// the code is an executable: this test binary is one.
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	if spec == nil {
		spec = &kilnv1.FunctionSpec{}
	}
	archive, err := bundle.PackBytes("", map[string]string{"handler": exe}, 0)
	if err != nil {
		b.Fatal(err)
	}
	spec.Runtime, spec.Code = "go", archive
	if _, err := a.Deploy(ctx, "echo", spec); err != nil {
		b.Fatal(err)
	}
	if _, err := a.Invoke(ctx, &agent.Call{Function: "echo", Body: []byte("warm")}); err != nil {
		b.Fatal(err)
	}
	return a
}

// serveOne runs handler on one POST of body to path, in-process, and
// fails unless it answers 200.
func serveOne(b *testing.B, handler fasthttp.RequestHandler, ctx *fasthttp.RequestCtx, path string, body []byte) {
	ctx.Request.Reset()
	ctx.Response.Reset()
	ctx.Request.Header.SetMethod(fasthttp.MethodPost)
	ctx.Request.SetRequestURI(path)
	ctx.Request.SetBody(body)
	handler(ctx)
	if ctx.Response.StatusCode() != fasthttp.StatusOK {
		b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
}

var bodySizes = []int{64, 64 << 10}

func sizeName(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("body=%dKiB", n>>10)
	}
	return fmt.Sprintf("body=%dB", n)
}

func newCtx() *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Init(&fasthttp.Request{}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4242}, nil)
	return &ctx
}

// BenchmarkHTTPInvoke measures one call through kiln's HTTP invoke handler
// (api → agent → pool → executor session → the Go SDK in-process) to a
// warm container, one at a time: kiln's per-call cost without the network
// and without containerd.
func BenchmarkHTTPInvoke(b *testing.B) {
	for _, n := range bodySizes {
		b.Run(sizeName(n), func(b *testing.B) {
			h := api.NewHTTPServer(newAgent(b, handlers.Echo, nil), api.WithHTTPLogger(quiet)).Handler()
			body := make([]byte, n)
			ctx := newCtx()
			b.ReportAllocs()
			b.SetBytes(int64(n))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				serveOne(b, h, ctx, "/invoke/echo", body)
			}
		})
	}
}

// BenchmarkHTTPServeInvoke is BenchmarkHTTPInvoke through kiln's HTTP
// server over one loopback TCP connection: it adds fasthttp's connection
// loop and what kiln hooks into it (the listener, per-request limits and
// timeouts), and the load generator's client.
func BenchmarkHTTPServeInvoke(b *testing.B) {
	for _, n := range bodySizes {
		b.Run(sizeName(n), func(b *testing.B) {
			srv := api.NewHTTPServer(newAgent(b, handlers.Echo, nil), api.WithHTTPLogger(quiet))
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go srv.Serve(ln)
			b.Cleanup(func() { srv.Shutdown(context.Background()) })
			body := make([]byte, n)
			call := bench.HTTPTarget(bench.NewHostClient(ln.Addr().String(), 1), "/invoke/echo", body, nil)()
			ctx := context.Background()
			if _, err := call(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(n))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := call(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHTTPInvokeParallel is BenchmarkHTTPInvoke with GOMAXPROCS
// callers at once on one container taking 64 calls at a time.
func BenchmarkHTTPInvokeParallel(b *testing.B) {
	h := api.NewHTTPServer(newAgent(b, handlers.Echo, &kilnv1.FunctionSpec{Concurrency: 64}), api.WithHTTPLogger(quiet)).Handler()
	body := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := newCtx()
		for pb.Next() {
			serveOne(b, h, ctx, "/invoke/echo", body)
		}
	})
}

// BenchmarkFloorHandler measures the floor's handler on the same request:
// what BenchmarkHTTPInvoke is to be compared with.
func BenchmarkFloorHandler(b *testing.B) {
	for _, n := range bodySizes {
		b.Run(sizeName(n), func(b *testing.B) {
			h := bench.FloorHandler(bench.Handlers)
			body := make([]byte, n)
			ctx := newCtx()
			b.ReportAllocs()
			b.SetBytes(int64(n))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				serveOne(b, h, ctx, "/echo", body)
			}
		})
	}
}

// BenchmarkHandler measures the benchmark functions' handlers alone, on
// the bodies the scenarios send.
func BenchmarkHandler(b *testing.B) {
	for _, fn := range []struct {
		name string
		body []byte
	}{{"echo", bench.EchoBody}, {"json", bench.JSONBody}, {"primes", bench.PrimesBody}} {
		b.Run("fn="+fn.name, func(b *testing.B) {
			h := bench.Handlers[fn.name]
			ctx := context.Background()
			req := &sdk.Request{Body: fn.body}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := h(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFloorRoundTrip measures one call of the load generator's HTTP
// target to the in-process floor over loopback TCP: the harness's own
// share of every HTTP figure.
func BenchmarkFloorRoundTrip(b *testing.B) {
	f, err := bench.StartFloor(bench.Handlers)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	call := bench.HTTPTarget(bench.NewHostClient(f.Addr(), 1), "/echo", bench.EchoBody, bench.EchoCheck(bench.EchoBody))()
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := call(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGRPCFloorRoundTrip measures one call through api/client to the
// in-process gRPC floor over loopback TCP: unary Invoke, and a call on an
// InvokeStream.
func BenchmarkGRPCFloorRoundTrip(b *testing.B) {
	f, err := bench.StartGRPCFloor()
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	c, err := client.NewGRPC(f.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	b.Run("rpc=unary", func(b *testing.B) {
		call := bench.GRPCUnaryTarget(c, "echo", bench.EchoBody)()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := call(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rpc=stream", func(b *testing.B) {
		s, err := c.OpenStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		call := bench.GRPCStreamTarget(s, "echo", bench.EchoBody)()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := call(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLatenciesRecord measures recording one open-loop call in the
// HDR histograms, from GOMAXPROCS goroutines at once.
func BenchmarkLatenciesRecord(b *testing.B) {
	l := bench.NewLatencies()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		d := 123 * time.Microsecond
		for pb.Next() {
			l.RecordOpen(d, d, time.Microsecond)
			d += 7
		}
	})
}
