// Command kiln-floor runs one process of the benchmark's out-of-process
// floors (package bench/floor); kiln-bench starts it, with the GOMAXPROCS
// of the part of kiln each process stands for.
//
//	kiln-floor echo -http ADDR                        fasthttp serving /echo, /json, /primes
//	kiln-floor hop -http ADDR -unix SOCK              fasthttp relaying every call over one frame connection
//	kiln-floor grpc-hop -http ADDR -grpc ADDR -unix SOCK
//	                                                  the same over one gRPC stream; also kiln's Invoker on -grpc
//	kiln-floor sink -unix SOCK [-proto grpc]          dials an edge's SOCK and echoes every call
//
// The edges listen on SOCK and print "listening unix=SOCK", then wait for
// the sink to connect; every edge prints "ready http=ADDR [grpc=ADDR]
// gomaxprocs=N" on stdout once it serves. The sink exits when its edge
// ends the connection.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"

	"github.com/kilnfx/kiln/bench/floor"
	"github.com/kilnfx/kiln/bench/functions/handlers"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kiln-floor echo|hop|grpc-hop|sink [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("kiln-floor "+os.Args[1], flag.ExitOnError)
	sock := fs.String("unix", "", "unix `socket` of the hop")
	var err error
	switch os.Args[1] {
	case "echo":
		httpAddr := fs.String("http", "127.0.0.1:0", "HTTP `address`")
		_ = fs.Parse(os.Args[2:])
		err = echo(ctx, *httpAddr)
	case "hop":
		httpAddr := fs.String("http", "127.0.0.1:0", "HTTP `address`")
		_ = fs.Parse(os.Args[2:])
		err = hop(ctx, *httpAddr, *sock)
	case "grpc-hop":
		httpAddr := fs.String("http", "127.0.0.1:0", "HTTP `address`")
		grpcAddr := fs.String("grpc", "127.0.0.1:0", "`address` of kiln's Invoker service")
		_ = fs.Parse(os.Args[2:])
		err = grpcHop(ctx, *httpAddr, *grpcAddr, *sock)
	case "sink":
		proto := fs.String("proto", "frames", "what the hop speaks: frames or grpc")
		_ = fs.Parse(os.Args[2:])
		err = sink(ctx, *sock, *proto)
	default:
		err = fmt.Errorf("unknown subcommand %q: want echo, hop, grpc-hop or sink", os.Args[1])
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "kiln-floor:", err)
		os.Exit(1)
	}
}

func echo(ctx context.Context, addr string) error {
	return serveHTTP(ctx, addr, floor.Handler(handlers.ByName), "")
}

func hop(ctx context.Context, addr, sock string) error {
	l, err := listenUnix(sock)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); l.Close() }()
	conn, err := l.Accept()
	l.Close()
	if err != nil {
		return err
	}
	h := floor.NewFrameHop(conn)
	defer h.Close()
	return serveHTTP(ctx, addr, floor.RelayHandler(h), "")
}

func grpcHop(ctx context.Context, addr, grpcAddr, sock string) error {
	l, err := listenUnix(sock)
	if err != nil {
		return err
	}
	g := floor.ListenGRPC(l)
	defer g.Close()
	h, err := g.Accept(ctx)
	if err != nil {
		return err
	}
	gl, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return err
	}
	// The windows and buffers of bench's in-process gRPC floor, and of
	// api/client.
	srv := grpc.NewServer(
		grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(8<<20),
		grpc.ReadBufferSize(64<<10), grpc.WriteBufferSize(64<<10),
	)
	kilnv1.RegisterInvokerServer(srv, floor.NewInvoker(h))
	go func() { _ = srv.Serve(gl) }()
	defer srv.Stop()
	return serveHTTP(ctx, addr, floor.RelayHandler(h), " grpc="+gl.Addr().String())
}

func sink(ctx context.Context, sock, proto string) error {
	switch proto {
	case "grpc":
		return floor.ServeGRPC(ctx, sock, floor.Echo)
	case "frames":
	default:
		return fmt.Errorf("-proto %q: want frames or grpc", proto)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	return floor.ServeFrames(conn, floor.Echo)
}

// listenUnix listens on sock and says so.
func listenUnix(sock string) (net.Listener, error) {
	if sock == "" {
		return nil, fmt.Errorf("-unix is required")
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	fmt.Printf("listening unix=%s\n", sock)
	return l, nil
}

// serveHTTP serves h on addr until ctx ends, after printing the ready line.
func serveHTTP(ctx context.Context, addr string, h fasthttp.RequestHandler, extra string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &fasthttp.Server{Handler: h, NoDefaultContentType: true}
	fmt.Printf("ready http=%s%s gomaxprocs=%d\n", l.Addr(), extra, runtime.GOMAXPROCS(0))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return srv.Shutdown()
	}
}
