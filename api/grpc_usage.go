package api

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/datastore"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// usageServer implements kiln.v1.Usage with the same rules as the HTTP
// usage API: the admin sees everything, a tenant's key its own calls.
type usageServer struct {
	kilnv1.UnimplementedUsageServer
	agent *agent.Agent
	gate  gate
}

// tenant identifies the caller of the RPC of ctx: the admin, or a tenant.
func (s *usageServer) tenant(ctx context.Context) (admin bool, tenant string, err error) {
	c, err := s.gate.identify(grpcBearer(ctx))
	if err != nil {
		return false, "", grpcError(err)
	}
	return c.admin, c.tenant, nil
}

// Report implements kiln.v1.Usage.
func (s *usageServer) Report(ctx context.Context, req *kilnv1.ReportRequest) (*kilnv1.ReportResponse, error) {
	admin, tenant, err := s.tenant(ctx)
	if err != nil {
		return nil, err
	}
	q := datastore.ReportQuery{Function: req.Function, Tenant: req.Tenant, GroupBy: req.GroupBy}
	if req.From != nil {
		q.From = req.From.AsTime()
	}
	if req.To != nil {
		q.To = req.To.AsTime()
	}
	if !admin {
		if q.Tenant != "" && q.Tenant != tenant {
			return nil, grpcError(fmt.Errorf("%w: a tenant's key sees only its own usage", agent.ErrUnauthenticated))
		}
		q.Tenant = tenant
	}
	rows, err := s.agent.Report(ctx, q)
	if err != nil {
		return nil, grpcError(err)
	}
	out := &kilnv1.ReportResponse{Rows: make([]*kilnv1.ReportRow, len(rows))}
	for i, r := range rows {
		row := &kilnv1.ReportRow{
			Group: r.Group, Count: r.Count,
			Status_2Xx: r.Status2xx, Status_3Xx: r.Status3xx, Status_4Xx: r.Status4xx, Status_5Xx: r.Status5xx, StatusOther: r.StatusOther,
			Warm: r.Warm, Thawed: r.Thawed, Stem: r.Stem, Cold: r.Cold, NoContainer: r.NoContainer,
			RunSum: durationpb.New(r.RunTime), RunP50: durationpb.New(r.RunP50), RunP99: durationpb.New(r.RunP99),
			QueueSum: durationpb.New(r.QueueWait), GbSeconds: r.GBSeconds, CpuSeconds: r.CPUSeconds,
			BytesIn: r.BytesIn, BytesOut: r.BytesOut,
		}
		if !r.Time.IsZero() {
			row.Time = timestamppb.New(r.Time)
		}
		out.Rows[i] = row
	}
	return out, nil
}

// GetCall implements kiln.v1.Usage.
func (s *usageServer) GetCall(ctx context.Context, req *kilnv1.GetCallRequest) (*kilnv1.CallRecord, error) {
	admin, tenant, err := s.tenant(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.agent.GetCall(ctx, req.Id)
	if err == nil && !admin && r.Tenant != tenant {
		err = fmt.Errorf("%w: call %q", agent.ErrNotFound, req.Id)
	}
	if err != nil {
		return nil, grpcError(err)
	}
	return &kilnv1.CallRecord{
		CallId: r.CallID, Function: r.Function, Revision: r.Revision, Tenant: r.Tenant, Trigger: r.Trigger,
		ReceivedAt: timestamppb.New(r.ReceivedAt), QueueWait: durationpb.New(r.QueueWait), Start: r.Start,
		Init: durationpb.New(r.InitTime), Run: durationpb.New(r.RunTime), Total: durationpb.New(r.TotalTime),
		CpuUser: durationpb.New(r.CPUUser), CpuSystem: durationpb.New(r.CPUSystem),
		MemoryPeakBytes: r.MemoryPeakBytes, MemoryLimitBytes: r.MemoryLimitBytes, Shared: r.Shared,
		BytesIn: r.BytesIn, BytesOut: r.BytesOut, Status: int32(r.Status), ErrorClass: r.ErrorClass,
		ContainerId: r.ContainerID, Node: r.Node, GbSeconds: r.GBSeconds(), CpuSeconds: r.CPUSeconds(),
	}, nil
}
