package floor

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// NewInvoker returns kiln's Invoker service relaying every call's body
// through h, whatever the function named: the gRPC edge of the grpc-hop
// floor. Invoke fails with UNAVAILABLE when the hop does; InvokeStream runs
// the calls of a stream concurrently, each answered as soon as its answer
// comes back (status 502 when the hop failed).
func NewInvoker(h Hop) kilnv1.InvokerServer { return &invoker{hop: h} }

type invoker struct {
	kilnv1.UnimplementedInvokerServer
	hop Hop
}

func (v *invoker) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	ans, err := v.hop.Call(ctx, req.Body, nil)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &kilnv1.InvokeResponse{Id: req.Id, Status: 200, Body: ans, Start: kilnv1.Start_START_WARM}, nil
}

func (v *invoker) InvokeStream(st kilnv1.Invoker_InvokeStreamServer) error {
	var (
		sendMu sync.Mutex // guards st's sends
		calls  sync.WaitGroup
	)
	defer calls.Wait()
	ctx := st.Context()
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
		calls.Add(1)
		go func() {
			defer calls.Done()
			resp := &kilnv1.InvokeResponse{Id: req.Id, Status: 200, Start: kilnv1.Start_START_WARM}
			ans, err := v.hop.Call(ctx, req.Body, nil)
			if err != nil {
				resp.Status, resp.FunctionError = 502, err.Error()
			}
			resp.Body = ans
			sendMu.Lock()
			_ = st.Send(resp)
			sendMu.Unlock()
		}()
	}
}
