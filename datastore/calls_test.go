package datastore

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGetCall(t *testing.T) {
	s := openTest(t)
	rec := UsageRecord{
		CallID: "0190c0de-aaaa-7bbb-8ccc-000000000001", Function: "resize", Revision: "v3",
		Tenant: "acme", Trigger: "grpc-stream",
		ReceivedAt: time.Date(2026, 11, 23, 4, 5, 6, 789012345, time.FixedZone("X", 3600)),
		QueueWait:  17 * time.Microsecond, Start: "thawed", InitTime: 3 * time.Millisecond,
		RunTime: 1234567 * time.Nanosecond, TotalTime: 2 * time.Millisecond,
		CPUUser: 900 * time.Microsecond, CPUSystem: 100 * time.Microsecond,
		MemoryPeakBytes: 12 << 20, MemoryLimitBytes: 128 << 20, Shared: true,
		BytesIn: 10, BytesOut: 20000, Status: 502, ErrorClass: "executor_failure",
		ContainerID: "c-1", Node: "node-a",
	}
	ingestBatches(t, s, 10, []UsageRecord{rec})

	got, err := s.GetCall(t.Context(), rec.CallID)
	if err != nil {
		t.Fatal(err)
	}
	if !sameRecord(got, rec) {
		t.Errorf("GetCall = %+v\nwant      %+v", got, rec)
	}
	if got.ReceivedAt.Location() != time.UTC {
		t.Errorf("ReceivedAt in %v, want UTC", got.ReceivedAt.Location())
	}

	_, err = s.GetCall(t.Context(), "0190c0de-aaaa-7bbb-8ccc-000000000002")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "000000000002") {
		t.Errorf("GetCall(absent) = %v, want ErrNotFound naming the id", err)
	}
}

func TestListCalls(t *testing.T) {
	ctx := t.Context()
	s := openTest(t)
	rng := rand.New(rand.NewPCG(8, 8))
	var recs []UsageRecord
	for i := range 500 {
		recs = append(recs, randRecord(rng, testBase, time.Hour, i))
	}
	// Two calls received at the same instant order by id.
	recs[1].ReceivedAt = recs[0].ReceivedAt
	ingestBatches(t, s, 1000, recs)

	newestFirst := func(rs []UsageRecord) []UsageRecord {
		rs = slices.Clone(rs)
		slices.SortFunc(rs, func(a, b UsageRecord) int {
			if c := b.ReceivedAt.Compare(a.ReceivedAt); c != 0 {
				return c
			}
			return strings.Compare(b.CallID, a.CallID)
		})
		return rs
	}
	filter := func(keep func(*UsageRecord) bool) []UsageRecord {
		var out []UsageRecord
		for i := range recs {
			if keep(&recs[i]) {
				out = append(out, recs[i])
			}
		}
		return newestFirst(out)
	}
	since := testBase.Add(20 * time.Minute)
	cases := []struct {
		name string
		f    CallFilter
		want []UsageRecord
	}{
		{"default limit", CallFilter{}, filter(func(*UsageRecord) bool { return true })[:DefaultCallLimit]},
		{"all", CallFilter{Limit: 1000}, filter(func(*UsageRecord) bool { return true })},
		{"function", CallFilter{Function: "echo", Limit: 1000}, filter(func(r *UsageRecord) bool { return r.Function == "echo" })},
		{"function is case-sensitive", CallFilter{Function: "Echo", Limit: 1000}, filter(func(r *UsageRecord) bool { return r.Function == "Echo" })},
		{"tenant is exact", CallFilter{Tenant: "ac%", Limit: 1000}, filter(func(r *UsageRecord) bool { return r.Tenant == "ac%" })},
		{"since", CallFilter{Since: since, Limit: 1000}, filter(func(r *UsageRecord) bool { return !r.ReceivedAt.Before(since) })},
		{"all filters", CallFilter{Function: "resize", Tenant: "acme", Since: since, Limit: 3},
			filter(func(r *UsageRecord) bool {
				return r.Function == "resize" && r.Tenant == "acme" && !r.ReceivedAt.Before(since)
			})[:3]},
		{"no match", CallFilter{Tenant: "nobody"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.ListCalls(ctx, c.f)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("nil slice")
			}
			if len(got) != len(c.want) {
				t.Fatalf("%d calls, want %d", len(got), len(c.want))
			}
			for i := range got {
				if !sameRecord(got[i], c.want[i]) {
					t.Fatalf("call %d = %s at %v, want %s at %v", i, got[i].CallID, got[i].ReceivedAt, c.want[i].CallID, c.want[i].ReceivedAt)
				}
			}
		})
	}
}

func TestPruneCallsKeepsRollups(t *testing.T) {
	ctx := t.Context()
	s := openTest(t)
	rng := rand.New(rand.NewPCG(9, 9))
	var recs []UsageRecord
	for i := range 2000 {
		recs = append(recs, randRecord(rng, testBase, 10*time.Hour, i))
	}
	defer func(n int64) { pruneChunk = n }(pruneChunk)
	pruneChunk = 128 // several transactions
	ingestBatches(t, s, 1000, recs)
	before, err := s.Report(ctx, ReportQuery{GroupBy: GroupByHour})
	if err != nil {
		t.Fatal(err)
	}

	cut := testBase.Add(5 * time.Hour)
	var old int64
	for i := range recs {
		if recs[i].ReceivedAt.Before(cut) {
			old++
		}
	}
	n, err := s.PruneCalls(ctx, cut)
	if err != nil {
		t.Fatal(err)
	}
	if n != old {
		t.Errorf("PruneCalls deleted %d, want %d", n, old)
	}
	if got := queryInt(t, s, `SELECT COUNT(*) FROM calls WHERE received_ns < ?`, cut.UnixNano()); got != 0 {
		t.Errorf("%d old calls left", got)
	}
	if got := queryInt(t, s, `SELECT COUNT(*) FROM calls`); got != int64(len(recs))-old {
		t.Errorf("%d calls left, want %d", got, int64(len(recs))-old)
	}
	after, err := s.Report(ctx, ReportQuery{GroupBy: GroupByHour})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) {
		t.Error("report changed after pruning raw calls")
	}
	if n, err := s.PruneCalls(ctx, cut); err != nil || n != 0 {
		t.Errorf("second prune = %d, %v", n, err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.PruneCalls(cctx, testBase.Add(24*time.Hour)); !errors.Is(err, context.Canceled) {
		t.Errorf("PruneCalls with a cancelled ctx = %v", err)
	}
}
