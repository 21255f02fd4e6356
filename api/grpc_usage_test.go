package api

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func TestGRPCUsage(t *testing.T) {
	e := newGRPCEnv(t, WithGRPCAdminToken("admin-token-for-tests-0123456789abcdef", true))
	usage := kilnv1.NewUsageClient(e.conn)
	ctx := context.Background()
	if _, err := usage.Report(ctx, &kilnv1.ReportRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("report without a token: %v", err)
	}
	admin := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer admin-token-for-tests-0123456789abcdef")
	rep, err := usage.Report(admin, &kilnv1.ReportRequest{GroupBy: "function"})
	if err != nil || rep == nil {
		t.Fatalf("report as admin: %v", err)
	}
	if _, err := usage.Report(admin, &kilnv1.ReportRequest{GroupBy: "week"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad group_by: %v", err)
	}
	if _, err := usage.GetCall(admin, &kilnv1.GetCallRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown call: %v", err)
	}
	key, _, err := e.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	tenant := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	if _, err := usage.Report(tenant, &kilnv1.ReportRequest{Tenant: "globex"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a tenant asking for another's usage: %v", err)
	}
	if _, err := usage.Report(tenant, &kilnv1.ReportRequest{}); err != nil {
		t.Errorf("a tenant's own usage: %v", err)
	}
}
