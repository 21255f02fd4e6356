package api

import (
	"context"

	"github.com/kilnfx/kiln/agent"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// usageServer implements kiln.v1.Usage with the same rules as the HTTP
// usage API: the admin sees everything, a tenant's key its own calls.
type usageServer struct {
	kilnv1.UnimplementedUsageServer
	agent *agent.Agent
	gate  gate
}

// Report implements kiln.v1.Usage.
func (s *usageServer) Report(ctx context.Context, req *kilnv1.ReportRequest) (*kilnv1.ReportResponse, error) {
	who, err := s.gate.identify(grpcBearer(ctx))
	if err != nil {
		return nil, grpcError(err)
	}
	rep, err := report(ctx, s.agent, who, req)
	return rep, grpcError(err)
}

// GetCall implements kiln.v1.Usage.
func (s *usageServer) GetCall(ctx context.Context, req *kilnv1.GetCallRequest) (*kilnv1.CallRecord, error) {
	who, err := s.gate.identify(grpcBearer(ctx))
	if err != nil {
		return nil, grpcError(err)
	}
	rec, err := getCall(ctx, s.agent, who, req.Id)
	return rec, grpcError(err)
}
