package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

const (
	// defaultGRPCAddr is the agent's gRPC address when neither --grpc-addr
	// nor KILN_GRPC is set.
	defaultGRPCAddr = "127.0.0.1:9090"
	// envGRPC names the environment variable holding the agent's gRPC
	// address.
	envGRPC = "KILN_GRPC"
)

// invokeFunc calls a function and returns its answer; errors are ready to
// print.
type invokeFunc func(ctx context.Context, name string, body []byte, header http.Header) (*client.InvokeResult, error)

// addGRPCFlags adds invoke's --grpc and --grpc-addr.
func addGRPCFlags(cmd *cobra.Command) {
	cmd.Flags().Bool("grpc", false, "call over the agent's gRPC API instead of HTTP")
	cmd.Flags().String("grpc-addr", defaultGRPCAddr, "gRPC address of the kiln agent, with --grpc (overrides $"+envGRPC+")")
}

// invoker returns how invoke calls a function: over gRPC with --grpc, else
// over HTTP. Both give the same InvokeResult, so the output and the exit
// status do not depend on the transport.
func (c *cli) invoker(cmd *cobra.Command) (invokeFunc, error) {
	if useGRPC, _ := cmd.Flags().GetBool("grpc"); !useGRPC {
		cl, err := c.client(cmd)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, name string, body []byte, header http.Header) (*client.InvokeResult, error) {
			res, err := cl.Invoke(ctx, name, body, header)
			if err != nil {
				return nil, c.agentError(cmd, err)
			}
			return res, nil
		}, nil
	}
	addr := c.grpcAddr(cmd)
	cl, err := client.NewGRPC(addr, client.WithGRPCToken(c.resolveToken(cmd).token))
	if err != nil {
		return nil, usageError{fmt.Errorf("--grpc-addr or $%s: %w", envGRPC, err)}
	}
	return func(ctx context.Context, name string, body []byte, header http.Header) (*client.InvokeResult, error) {
		defer cl.Close()
		resp, err := cl.Invoke(ctx, name, body, header)
		if err != nil {
			return nil, grpcError(addr, err)
		}
		return invokeResult(resp), nil
	}, nil
}

// grpcAddr is the agent's gRPC address: --grpc-addr when given, else
// $KILN_GRPC, else that of the agent an explicit --data-dir belongs to,
// else the default.
func (c *cli) grpcAddr(cmd *cobra.Command) string {
	f := cmd.Flag("grpc-addr")
	if f.Changed {
		return f.Value.String()
	}
	if v := c.getenv(envGRPC); v != "" {
		return v
	}
	if dir, ok := c.explicitDataDir(cmd); ok {
		if ai, err := readAgentInfo(dir); err == nil && ai.GRPC != "" {
			return ai.GRPC
		}
	}
	return f.Value.String()
}

// grpcError makes a transport error say which agent could not be reached.
func grpcError(addr string, err error) error {
	var ge *client.GRPCError
	if errors.As(err, &ge) || errors.Is(err, client.ErrInvalidName) {
		return err
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		return fmt.Errorf("cannot reach the kiln agent's gRPC API at %s (see --grpc-addr and $%s): %s", addr, envGRPC, st.Message())
	}
	return err
}

// invokeResult is what the HTTP API would have answered with resp: a failed
// function without a body of its own answers kiln's JSON error.
func invokeResult(resp *kilnv1.InvokeResponse) *client.InvokeResult {
	res := &client.InvokeResult{
		Status:        int(resp.GetStatus()),
		Header:        make(http.Header, len(resp.GetHeaders())),
		Body:          resp.GetBody(),
		FunctionError: resp.GetFunctionError() != "",
	}
	for _, h := range resp.GetHeaders() {
		res.Header.Add(h.GetKey(), h.GetValue())
	}
	if res.FunctionError && len(res.Body) == 0 {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&kilnv1.Error{Error: resp.GetFunctionError(), Class: wire.ClassFunctionError})
		if err == nil {
			res.Body = append(b, '\n')
		}
	}
	return res
}
