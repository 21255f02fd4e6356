package main

import (
	"context"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func TestUsageOverGRPC(t *testing.T) {
	k := sharedKilnd(t)
	var m []string
	waitFor(t, "the gRPC address in kilnd's log", func() bool {
		m = regexp.MustCompile(`"grpc":"([0-9.:]+)"`).FindStringSubmatch(k.logs.String())
		return m != nil
	})
	conn, err := grpc.NewClient(m[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	usage := kilnv1.NewUsageClient(conn)
	k.deploy(t, "probe-usage", probeSpec(nil))
	r := k.do(t, "POST", "/invoke/probe-usage", []byte("abc"))
	if r.status != 202 {
		t.Fatal(r.status)
	}
	id := r.header.Get("X-Kiln-Call-Id")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Without the admin token the Usage service refuses; with it, it answers.
	if _, err := usage.GetCall(ctx, &kilnv1.GetCallRequest{Id: id}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetCall without a token: %v, want UNAUTHENTICATED", err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+k.adminToken(t))
	var rec *kilnv1.CallRecord
	waitFor(t, "the call's record", func() bool {
		rec, err = usage.GetCall(ctx, &kilnv1.GetCallRequest{Id: id})
		return err == nil
	})
	if rec.Function != "probe-usage" || rec.Status != 202 || rec.BytesIn != 3 || rec.GetStart() != "cold" {
		t.Errorf("record = %v", rec)
	}
	rep, err := usage.Report(ctx, &kilnv1.ReportRequest{Function: "probe-usage", GroupBy: "function"})
	if err != nil || len(rep.Rows) != 1 || rep.Rows[0].Count < 1 {
		t.Fatalf("report = %v, %v", rep, err)
	}
	if _, err := usage.GetCall(ctx, &kilnv1.GetCallRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown call: %v", err)
	}
	if _, err := usage.Report(ctx, &kilnv1.ReportRequest{GroupBy: "week"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad group: %v", err)
	}
}
