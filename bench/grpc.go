package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"google.golang.org/grpc"

	"github.com/kilnfx/kiln/api/client"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// GRPCFloor is the in-process gRPC server every gRPC figure is divided by:
// kiln's own Invoker service answering every call with its body, on
// loopback TCP in the harness's process, with no agent and no container.
// The harness reaches it through the same client (api/client) as kilnd.
type GRPCFloor struct {
	ln  net.Listener
	srv *grpc.Server
}

// StartGRPCFloor starts the gRPC floor on a free loopback port, with the
// flow-control windows and buffers api/client dials with.
func StartGRPCFloor() (*GRPCFloor, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(8<<20),
		grpc.ReadBufferSize(64<<10),
		grpc.WriteBufferSize(64<<10),
	)
	kilnv1.RegisterInvokerServer(srv, echoInvoker{})
	go func() { _ = srv.Serve(ln) }()
	return &GRPCFloor{ln: ln, srv: srv}, nil
}

// Addr returns the floor's host:port.
func (f *GRPCFloor) Addr() string { return f.ln.Addr().String() }

// Close stops the floor.
func (f *GRPCFloor) Close() { f.srv.Stop() }

// echoInvoker answers every call with its body.
type echoInvoker struct {
	kilnv1.UnimplementedInvokerServer
}

func (echoInvoker) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	return &kilnv1.InvokeResponse{Id: req.Id, Status: 200, Body: req.Body, Start: kilnv1.Start_START_WARM}, nil
}

// InvokeStream answers each request in the receiving goroutine: the least a
// stream server can do.
func (echoInvoker) InvokeStream(st kilnv1.Invoker_InvokeStreamServer) error {
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.Cancel {
			continue
		}
		if err := st.Send(&kilnv1.InvokeResponse{Id: req.Id, Status: 200, Body: req.Body, Start: kilnv1.Start_START_WARM}); err != nil {
			return err
		}
	}
}

// GRPCUnaryTarget returns a Target calling function fn with body through
// c's unary Invoke and expecting status 200.
func GRPCUnaryTarget(c *client.GRPCClient, fn string, body []byte) Target {
	return func() Call {
		return func(ctx context.Context) (string, error) {
			resp, err := c.Invoke(ctx, fn, body, nil)
			return grpcAnswer(resp, err)
		}
	}
}

// GRPCStreamTarget returns a Target calling function fn with body on the
// stream s (shared by every worker) and expecting status 200.
func GRPCStreamTarget(s *client.Stream, fn string, body []byte) Target {
	return func() Call {
		return func(ctx context.Context) (string, error) {
			resp, err := s.Invoke(ctx, fn, body)
			return grpcAnswer(resp, err)
		}
	}
}

func grpcAnswer(resp *kilnv1.InvokeResponse, err error) (string, error) {
	if err != nil {
		return "", err
	}
	if resp.Status != 200 {
		return "", fmt.Errorf("status %d: %s", resp.Status, resp.FunctionError)
	}
	switch resp.Start {
	case kilnv1.Start_START_WARM:
		return "warm", nil
	case kilnv1.Start_START_THAWED:
		return "thawed", nil
	case kilnv1.Start_START_STEM:
		return "stem", nil
	case kilnv1.Start_START_COLD:
		return "cold", nil
	}
	return "", nil
}
