package api

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/client"
)

// untuned makes NewGRPCServer use grpc-go's defaults (benchmarks only).
func untuned() GRPCOption { return func(o *grpcOptions) { o.untuned = true } }

// tuning is one set of grpc-go options compared by BenchmarkGRPCInvoke.
type tuning struct {
	name string
	// kiln: NewGRPCServer's and NewGRPC's own options; else grpc-go's
	// defaults plus server and dial.
	kiln   bool
	server []grpc.ServerOption
	dial   []grpc.DialOption
}

var tunings = []tuning{
	{name: "grpc-default"},
	// kiln's windows plus 64 KiB read and write buffers on both sides: no
	// consistent gain over kiln's, so not taken.
	{name: "windows+buffers", server: []grpc.ServerOption{
		grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(8 << 20),
		grpc.ReadBufferSize(64 << 10), grpc.WriteBufferSize(64 << 10),
	}, dial: []grpc.DialOption{
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(8 << 20),
		grpc.WithReadBufferSize(64 << 10), grpc.WithWriteBufferSize(64 << 10),
	}},
	{name: "kiln", kiln: true},
}

// benchClient returns a client of a fresh agent whose function "echo" is
// warm, with the server and client options of tu.
func benchClient(b *testing.B, tu tuning) *client.GRPCClient {
	b.Helper()
	var sopts []GRPCOption
	if !tu.kiln {
		sopts = append(sopts, untuned(), WithGRPCServerOptions(tu.server...))
	}
	e := newGRPCEnvLimit(b, 1<<20, sopts...)
	var c *client.GRPCClient
	if tu.kiln {
		var err error
		if c, err = client.NewGRPC(e.addr); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
	} else {
		conn, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, tu.dial...)...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		c = client.NewGRPCConn(conn)
	}
	if _, err := c.Invoke(context.Background(), "echo", []byte("warm"), nil); err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkGRPCInvoke measures one call at a time (latency) from a client
// to the function "echo" of an agent backed by the fake driver (an
// in-process executor over a real unix socket), through a real TCP loopback
// gRPC connection: unary Invoke and InvokeStream, small and 64 KiB bodies,
// under each tuning (grpc-go's defaults, kiln's, kiln's plus larger
// buffers). ns/op is the mean round trip; p50-ns and p99-ns
// its percentiles. Compare tunings with benchstat.
func BenchmarkGRPCInvoke(b *testing.B) {
	for _, tu := range tunings {
		for _, size := range []int{64, 64 << 10} {
			for _, mode := range []string{"unary", "stream"} {
				name := fmt.Sprintf("tuning=%s/body=%d/%s", tu.name, size, mode)
				b.Run(name, func(b *testing.B) { benchSerial(b, tu, mode, size) })
			}
		}
	}
}

// BenchmarkAgentInvoke is the baseline of BenchmarkGRPCInvoke: the same
// calls made in-process through agent.Invoke, without the gRPC edge.
func BenchmarkAgentInvoke(b *testing.B) {
	for _, size := range []int{64, 64 << 10} {
		b.Run(fmt.Sprintf("body=%d", size), func(b *testing.B) {
			e := newGRPCEnvLimit(b, 1<<20)
			benchLatency(b, size, func(ctx context.Context, body []byte) error {
				_, err := e.agent.Invoke(ctx, &agent.Call{Function: "echo", Trigger: "bench", Body: body})
				return err
			})
		})
	}
}

func benchSerial(b *testing.B, tu tuning, mode string, size int) {
	c := benchClient(b, tu)
	ctx := context.Background()
	call := func(ctx context.Context, body []byte) error {
		_, err := c.Invoke(ctx, "echo", body, nil)
		return err
	}
	if mode == "stream" {
		s, err := c.OpenStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		call = func(ctx context.Context, body []byte) error {
			_, err := s.Invoke(ctx, "echo", body)
			return err
		}
	}
	benchLatency(b, size, call)
}

// benchLatency runs call one at a time with a body of size bytes and
// reports its latency percentiles.
func benchLatency(b *testing.B, size int, call func(context.Context, []byte) error) {
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), size)
	if err := call(ctx, body); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, b.N)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if err := call(ctx, body); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkGRPCInvokeParallel measures throughput: 32 callers per
// GOMAXPROCS, each on its own unary RPCs or all sharing one client Stream,
// with kiln's tuning and a small body. ns/op is the inverse of calls per
// second.
func BenchmarkGRPCInvokeParallel(b *testing.B) {
	for _, mode := range []string{"unary", "stream"} {
		b.Run(mode, func(b *testing.B) {
			c := benchClient(b, tuning{kiln: true})
			ctx := context.Background()
			body := []byte("hello")
			var s *client.Stream
			if mode == "stream" {
				var err error
				if s, err = c.OpenStream(ctx); err != nil {
					b.Fatal(err)
				}
				defer s.Close()
			}
			b.ReportAllocs()
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var err error
					if s != nil {
						_, err = s.Invoke(ctx, "echo", body)
					} else {
						_, err = c.Invoke(ctx, "echo", body, nil)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
