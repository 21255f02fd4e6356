package datastore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReportValidation(t *testing.T) {
	s := openTest(t)
	t0 := testBase
	cases := []struct {
		name    string
		q       ReportQuery
		wantErr bool
	}{
		{"from after to", ReportQuery{From: t0.Add(time.Second), To: t0}, true},
		{"unknown group_by", ReportQuery{GroupBy: "week"}, true},
		{"group_by is case-sensitive", ReportQuery{GroupBy: "Function"}, true},
		{"from equals to", ReportQuery{From: t0, To: t0}, false},
		{"open range", ReportQuery{}, false},
		{"only from", ReportQuery{From: t0, GroupBy: GroupByDay}, false},
		{"only to", ReportQuery{To: t0, GroupBy: GroupByTenant}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rows, err := s.Report(t.Context(), c.q)
			if c.wantErr {
				if !errors.Is(err, ErrInvalidQuery) {
					t.Fatalf("error = %v, want one wrapping ErrInvalidQuery", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rows == nil || len(rows) != 0 {
				t.Errorf("empty store gave %#v, want an empty non-nil slice", rows)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Report(ctx, ReportQuery{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Report with a cancelled ctx = %v", err)
	}
}

// expectReport computes q's answer from the records themselves.
func expectReport(recs []UsageRecord, q ReportQuery) (map[string]*ReportRow, map[string][]int64) {
	rows := map[string]*ReportRow{}
	runs := map[string][]int64{}
	for i := range recs {
		r := &recs[i]
		m := minuteOf(r.ReceivedAt.UnixNano())
		if !q.From.IsZero() && m < minuteOf(q.From.UnixNano()) || !q.To.IsZero() && m >= q.To.UnixNano() ||
			q.Function != "" && r.Function != q.Function || q.Tenant != "" && r.Tenant != q.Tenant {
			continue
		}
		var key string
		var bucket time.Time
		switch q.GroupBy {
		case GroupByFunction:
			key = r.Function
		case GroupByTenant:
			key = r.Tenant
		case GroupByMinute, GroupByHour, GroupByDay:
			unit := map[string]time.Duration{GroupByMinute: time.Minute, GroupByHour: time.Hour, GroupByDay: 24 * time.Hour}[q.GroupBy]
			bucket = r.ReceivedAt.UTC().Truncate(unit)
			key = bucket.Format(time.RFC3339)
		}
		row := rows[key]
		if row == nil {
			row = &ReportRow{Group: key, Time: bucket}
			rows[key] = row
		}
		row.Count++
		switch {
		case r.Status >= 200 && r.Status < 300:
			row.Status2xx++
		case r.Status >= 300 && r.Status < 400:
			row.Status3xx++
		case r.Status >= 400 && r.Status < 500:
			row.Status4xx++
		case r.Status >= 500 && r.Status < 600:
			row.Status5xx++
		default:
			row.StatusOther++
		}
		switch r.Start {
		case "warm":
			row.Warm++
		case "thawed":
			row.Thawed++
		case "stem":
			row.Stem++
		case "cold":
			row.Cold++
		default:
			row.NoContainer++
		}
		row.RunTime += r.RunTime
		row.QueueWait += r.QueueWait
		row.TotalTime += r.TotalTime
		row.GBSeconds += r.GBSeconds()
		row.CPUSeconds += r.CPUSeconds()
		row.BytesIn += r.BytesIn
		row.BytesOut += r.BytesOut
		runs[key] = append(runs[key], int64(r.RunTime))
	}
	return rows, runs
}

func checkReport(t *testing.T, got []ReportRow, recs []UsageRecord, q ReportQuery) {
	t.Helper()
	want, runs := expectReport(recs, q)
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i, g := range got {
		if i > 0 && (g.Time.Before(got[i-1].Time) || g.Time.Equal(got[i-1].Time) && g.Group <= got[i-1].Group) {
			t.Errorf("rows out of order at %d: %q after %q", i, g.Group, got[i-1].Group)
		}
		w := want[g.Group]
		if w == nil {
			t.Errorf("unexpected group %q", g.Group)
			continue
		}
		if !g.Time.Equal(w.Time) || (g.Time.IsZero() != w.Time.IsZero()) {
			t.Errorf("group %q: Time %v, want %v", g.Group, g.Time, w.Time)
		}
		exact := *w
		exact.Time, exact.GBSeconds, exact.CPUSeconds = g.Time, g.GBSeconds, g.CPUSeconds
		exact.RunP50, exact.RunP99 = g.RunP50, g.RunP99
		if g != exact {
			t.Errorf("group %q:\n got  %+v\n want %+v", g.Group, g, exact)
		}
		if math.Abs(g.GBSeconds-w.GBSeconds) > 1e-9*w.GBSeconds || math.Abs(g.CPUSeconds-w.CPUSeconds) > 1e-9*w.CPUSeconds {
			t.Errorf("group %q: GB-s %v CPU-s %v, want %v %v", g.Group, g.GBSeconds, g.CPUSeconds, w.GBSeconds, w.CPUSeconds)
		}
		vs := runs[g.Group]
		slices.Sort(vs)
		for _, p := range []struct {
			q   float64
			got time.Duration
		}{{0.5, g.RunP50}, {0.99, g.RunP99}} {
			ex := exactQuantile(vs, p.q)
			if d := histBucket(int64(p.got)) - histBucket(ex); d < -1 || d > 1 {
				t.Errorf("group %q: p%v = %v, exact %v: %d buckets apart", g.Group, p.q*100, p.got, time.Duration(ex), d)
			}
		}
	}
}

func TestReport(t *testing.T) {
	s := openTest(t)
	rng := rand.New(rand.NewPCG(10, 10))
	var recs []UsageRecord
	for i := range 4000 {
		recs = append(recs, randRecord(rng, testBase.Add(-2*time.Hour), 30*time.Hour, i))
	}
	ingestBatches(t, s, 500, recs)

	from := testBase.Add(90 * time.Second) // mid-minute: its minute counts
	to := testBase.Add(20 * time.Hour)     // on a minute: its minute does not
	day := testBase.Truncate(24 * time.Hour)
	var queries []ReportQuery
	for _, g := range []string{GroupByNone, GroupByFunction, GroupByTenant, GroupByMinute, GroupByHour, GroupByDay} {
		queries = append(queries,
			ReportQuery{GroupBy: g},
			ReportQuery{GroupBy: g, From: from, To: to},
			// Ranges read from day, hour and minute rollups together.
			ReportQuery{GroupBy: g, From: day, To: day.Add(48 * time.Hour)},
			ReportQuery{GroupBy: g, From: day.Add(9*time.Hour + 17*time.Minute + 30*time.Second), To: day.Add(37*time.Hour + 42*time.Minute + 10*time.Second)},
			ReportQuery{GroupBy: g, From: day.Add(24 * time.Hour)},
			ReportQuery{GroupBy: g, From: day.Add(11 * time.Hour), To: day.Add(13*time.Hour + time.Nanosecond)},
			ReportQuery{GroupBy: g, Function: "thumb"},
			ReportQuery{GroupBy: g, Tenant: "acme", From: from},
			ReportQuery{GroupBy: g, Tenant: "ac%", To: to},
			ReportQuery{GroupBy: g, Tenant: "ac_e", Function: "a%b"},
		)
	}
	for _, q := range queries {
		name := fmt.Sprintf("by %q fn %q tenant %q from %v to %v", q.GroupBy, q.Function, q.Tenant, !q.From.IsZero(), !q.To.IsZero())
		t.Run(name, func(t *testing.T) {
			got, err := s.Report(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 {
				t.Fatal("no rows")
			}
			checkReport(t, got, recs, q)
		})
	}
}

func TestReportTenantIsStrict(t *testing.T) {
	s := openTest(t)
	var recs []UsageRecord
	tenants := []string{"acme", "ACME", "acme ", "ac%", "ac_e", "acm", "acmeX", ""}
	for i, tn := range tenants {
		recs = append(recs, UsageRecord{
			CallID: fmt.Sprintf("id-%d", i), Function: "f", Tenant: tn, ReceivedAt: testBase,
			Status: 200, Start: "warm", RunTime: time.Duration(i+1) * time.Millisecond,
		})
	}
	ingestBatches(t, s, 100, recs)
	for _, tn := range tenants[:len(tenants)-1] {
		for _, g := range []string{GroupByNone, GroupByTenant, GroupByFunction, GroupByMinute} {
			rows, err := s.Report(t.Context(), ReportQuery{Tenant: tn, GroupBy: g})
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 || rows[0].Count != 1 {
				t.Fatalf("tenant %q by %q: %+v, want one row of one call", tn, g, rows)
			}
			if g == GroupByTenant && rows[0].Group != tn {
				t.Errorf("tenant %q: group %q", tn, rows[0].Group)
			}
		}
		calls, err := s.ListCalls(t.Context(), CallFilter{Tenant: tn})
		if err != nil {
			t.Fatal(err)
		}
		if len(calls) != 1 || calls[0].Tenant != tn {
			t.Errorf("ListCalls(tenant %q) = %d calls", tn, len(calls))
		}
	}
	rows, err := s.Report(t.Context(), ReportQuery{Tenant: "nobody", GroupBy: GroupByTenant})
	if err != nil || len(rows) != 0 {
		t.Errorf("unknown tenant: %v, %v", rows, err)
	}
}

func TestReportRowGroupNames(t *testing.T) {
	s := openTest(t)
	ingestBatches(t, s, 10, []UsageRecord{{
		CallID: "x", Function: "f", Tenant: "t", ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Status: 200,
	}})
	want := map[string]string{
		GroupByNone:     "",
		GroupByFunction: "f",
		GroupByTenant:   "t",
		GroupByMinute:   "2026-01-02T03:04:00Z",
		GroupByHour:     "2026-01-02T03:00:00Z",
		GroupByDay:      "2026-01-02T00:00:00Z",
	}
	for g, name := range want {
		rows, err := s.Report(t.Context(), ReportQuery{GroupBy: g})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || rows[0].Group != name {
			t.Errorf("by %q: %+v, want group %q", g, rows, name)
		}
		if strings.HasSuffix(name, "Z") != !rows[0].Time.IsZero() {
			t.Errorf("by %q: Time %v", g, rows[0].Time)
		}
	}
}

func TestPlanRollups(t *testing.T) {
	const (
		m = int64(time.Minute)
		h = int64(time.Hour)
		d = 24 * h
	)
	day := testBase.Truncate(24 * time.Hour).UnixNano()
	cases := []struct {
		name     string
		lo, hi   int64
		maxLevel int
		want     string // level:from-to, relative to day, in minutes
	}{
		{"whole day", day, day + d, 2, "[2:0-1440]"},
		{"minutes, hours, minutes", day + 10*h + 30*m, day + 14*h + 15*m, 2, "[0:630-660 1:660-840 0:840-855]"},
		{"days in the middle", day + 23*h + 59*m, day + 2*d + 1*h, 2, "[0:1439-1440 2:1440-2880 1:2880-2940]"},
		{"hours only when grouping by hour", day, day + 2*d, 1, "[1:0-2880]"},
		{"minutes only when grouping by minute", day + 10*h, day + 12*h, 0, "[0:600-720]"},
		{"under an hour", day + 10*h + 5*m, day + 10*h + 50*m, 2, "[0:605-650]"},
		{"empty", day + h, day + h, 2, "[]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, p := range planRollups(c.lo, c.hi, c.maxLevel, nil) {
				got = append(got, fmt.Sprintf("%d:%d-%d", p.level, (p.from-day)/m, (p.to-day)/m))
			}
			if s := "[" + strings.Join(got, " ") + "]"; s != c.want {
				t.Errorf("plan = %s, want %s", s, c.want)
			}
		})
	}

	// Random ranges: parts are contiguous, cover the range and are aligned
	// to their level.
	rng := rand.New(rand.NewPCG(11, 11))
	for range 1000 {
		lo := day + rng.Int64N(3*d)/m*m
		hi := lo + rng.Int64N(3*d)/m*m
		if rng.IntN(10) == 0 {
			hi = math.MaxInt64
		}
		if rng.IntN(10) == 0 {
			lo = math.MinInt64
		}
		parts := planRollups(lo, hi, 2, nil)
		at := lo
		for _, p := range parts {
			w := rollupLevels[p.level].width
			if p.from != at || p.from >= p.to ||
				p.from != math.MinInt64 && p.from%w != 0 || p.to != math.MaxInt64 && p.to%w != 0 {
				t.Fatalf("plan of [%d, %d): bad part %+v at %d", lo, hi, p, at)
			}
			at = p.to
		}
		if at != hi && !(lo >= hi && len(parts) == 0) {
			t.Fatalf("plan of [%d, %d) ends at %d", lo, hi, at)
		}
	}
}
