package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

var (
	prefixKeys  = []byte("/v1/keys")
	prefixUsage = []byte("/v1/usage")
	prefixCalls = []byte("/v1/calls")
)

// bearer returns the credential of an "Authorization: Bearer X" header.
func bearer(ctx *fasthttp.RequestCtx) string {
	h := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization)
	if len(h) > 7 && strings.EqualFold(string(h[:7]), "bearer ") {
		return string(bytes.TrimSpace(h[7:]))
	}
	return ""
}

// identify authenticates a management request. It answers 401 itself and
// returns ok=false when the request may not proceed.
func (s *HTTPServer) identify(ctx *fasthttp.RequestCtx) (caller, bool) {
	c, err := s.gate.identify(bearer(ctx))
	if err != nil {
		s.writeError(ctx, err)
		return caller{}, false
	}
	return c, true
}

// admin admits only the admin; it answers 401 otherwise.
func (s *HTTPServer) admin(ctx *fasthttp.RequestCtx) bool {
	if err := s.gate.requireAdmin(bearer(ctx)); err != nil {
		s.writeError(ctx, err)
		return false
	}
	return true
}

// keys serves /v1/keys: POST a kiln.v1.CreateApiKeyRequest creates a key
// (201, the kiln.v1.ApiKey with its secret), GET lists them (a
// kiln.v1.ApiKeyList, without secrets), DELETE /v1/keys/{id} revokes one.
func (s *HTTPServer) keys(ctx *fasthttp.RequestCtx, rest string) {
	if rest != "" && (rest[0] != '/' || strings.Contains(rest[1:], "/")) {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/keys%s", agent.ErrNotFound, rest))
		return
	}
	method := string(ctx.Method())
	switch {
	case (rest == "" || rest == "/") && method == fasthttp.MethodPost:
		var req kilnv1.CreateApiKeyRequest
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(ctx.PostBody(), &req); err != nil {
			s.writeError(ctx, fmt.Errorf("%w: body: %v", agent.ErrInvalidArgument, err))
			return
		}
		secret, k, err := s.agent.CreateKey(s.base, req.Tenant)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		out := apiKey(k)
		out.Key = &secret
		writeCompleteJSON(ctx, fasthttp.StatusCreated, out)
	case (rest == "" || rest == "/") && method == fasthttp.MethodGet:
		ks, err := s.agent.ListKeys(s.base)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		out := &kilnv1.ApiKeyList{Keys: make([]*kilnv1.ApiKey, len(ks))}
		for i, k := range ks {
			out.Keys[i] = apiKey(k)
		}
		writeCompleteJSON(ctx, fasthttp.StatusOK, out)
	case strings.HasPrefix(rest, "/") && method == fasthttp.MethodDelete:
		if err := s.agent.RevokeKey(s.base, rest[1:]); err != nil {
			s.writeError(ctx, err)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	default:
		s.methodNotAllowed(ctx, "GET, POST, DELETE")
	}
}

// apiKey is k as the API shows it, without its secret.
func apiKey(k agent.Key) *kilnv1.ApiKey {
	out := &kilnv1.ApiKey{Id: k.ID, Tenant: k.Tenant, Created: timestamppb.New(k.Created)}
	if !k.Revoked.IsZero() {
		out.Revoked = timestamppb.New(k.Revoked)
	}
	return out
}

// Bounds of the times a usage query may name: those the store can hold,
// which keeps times as int64 nanoseconds since 1970.
var (
	minQueryTime = time.Unix(0, math.MinInt64)
	maxQueryTime = time.Unix(0, math.MaxInt64)
)

// parseTime reads an RFC 3339 time or unix seconds; "" is the zero time.
// Errors wrap agent.ErrInvalidArgument and name field, as for a time
// outside the store's range (years 1678 to 2262), which the store cannot
// compare with its records.
func parseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		n, nerr := strconv.ParseInt(v, 10, 64)
		if nerr != nil {
			return time.Time{}, fmt.Errorf("%w: %s: %q is neither an RFC 3339 time nor unix seconds", agent.ErrInvalidArgument, field, v)
		}
		t = time.Unix(n, 0)
	}
	if err := checkQueryTime(field, t); err != nil {
		return time.Time{}, err
	}
	return t, nil
}

// checkQueryTime refuses a time of a usage query outside the store's
// range (see minQueryTime), naming field. Errors wrap
// agent.ErrInvalidArgument.
func checkQueryTime(field string, t time.Time) error {
	if t.Before(minQueryTime) || t.After(maxQueryTime) {
		return fmt.Errorf("%w: %s: %s is outside %s..%s", agent.ErrInvalidArgument, field, t.UTC().Format(time.RFC3339),
			minQueryTime.UTC().Format(time.RFC3339), maxQueryTime.UTC().Format(time.RFC3339))
	}
	return nil
}

// reportQuery reads the query of GET /v1/usage: the report asked for and
// the answer's format, "json" (also for none) or "csv". Function, tenant
// and group_by are taken as they are: the tenant is scoped by the caller
// (report) and group_by checked by the store. Errors wrap
// agent.ErrInvalidArgument and name the parameter.
func reportQuery(args *fasthttp.Args) (req *kilnv1.ReportRequest, format string, err error) {
	req = &kilnv1.ReportRequest{
		Function: string(args.Peek("function")),
		Tenant:   string(args.Peek("tenant")),
		GroupBy:  string(args.Peek("group_by")),
	}
	if req.From, err = parseTimestamp("from", string(args.Peek("from"))); err != nil {
		return nil, "", err
	}
	if req.To, err = parseTimestamp("to", string(args.Peek("to"))); err != nil {
		return nil, "", err
	}
	switch format = string(args.Peek("format")); format {
	case "", "json":
		format = "json"
	case "csv":
	default:
		return nil, "", fmt.Errorf("%w: format: %q is not json or csv", agent.ErrInvalidArgument, format)
	}
	return req, format, nil
}

// callQuery reads the query of GET /v1/calls into a filter: function and
// tenant as they are (the tenant is scoped by the caller), since a time,
// limit 1..wire.MaxCallLimit (0, the store's default, when absent).
// Errors wrap agent.ErrInvalidArgument and name the parameter.
func callQuery(args *fasthttp.Args) (datastore.CallFilter, error) {
	f := datastore.CallFilter{Function: string(args.Peek("function")), Tenant: string(args.Peek("tenant"))}
	var err error
	if f.Since, err = parseTime("since", string(args.Peek("since"))); err != nil {
		return datastore.CallFilter{}, err
	}
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > wire.MaxCallLimit {
			return datastore.CallFilter{}, fmt.Errorf("%w: limit: %q is outside 1..%d", agent.ErrInvalidArgument, v, wire.MaxCallLimit)
		}
		f.Limit = n
	}
	return f, nil
}

// usage serves GET /v1/usage?from=&to=&function=&tenant=&group_by=&format=:
// a kiln.v1.ReportResponse as JSON (format json, the default) or the same
// rows as CSV.
func (s *HTTPServer) usage(ctx *fasthttp.RequestCtx, rest string) {
	if rest != "" && rest != "/" {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/usage%s", agent.ErrNotFound, rest))
		return
	}
	if string(ctx.Method()) != fasthttp.MethodGet {
		s.methodNotAllowed(ctx, "GET")
		return
	}
	who, ok := s.identify(ctx)
	if !ok {
		return
	}
	req, format, err := reportQuery(ctx.QueryArgs())
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	rep, err := report(s.base, s.agent, who, req)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if format == "csv" {
		writeCSV(ctx, rep.Rows)
		return
	}
	writeCompleteJSON(ctx, fasthttp.StatusOK, rep)
}

// parseTimestamp reads an RFC 3339 time or unix seconds; "" is nil. Errors
// wrap agent.ErrInvalidArgument and name field.
func parseTimestamp(field, v string) (*timestamppb.Timestamp, error) {
	t, err := parseTime(field, v)
	if err != nil || t.IsZero() {
		return nil, err
	}
	return timestamppb.New(t), nil
}

// report answers req for who, on both edges: the admin sees every tenant, a
// tenant's key only its own. Errors wrap the agent's classes.
func report(ctx context.Context, a *agent.Agent, who caller, req *kilnv1.ReportRequest) (*kilnv1.ReportResponse, error) {
	q := datastore.ReportQuery{Function: req.Function, Tenant: req.Tenant, GroupBy: req.GroupBy}
	for _, b := range []struct {
		field string
		ts    *timestamppb.Timestamp
		t     *time.Time
	}{{"from", req.From, &q.From}, {"to", req.To, &q.To}} {
		if b.ts == nil {
			continue
		}
		*b.t = b.ts.AsTime()
		if err := checkQueryTime(b.field, *b.t); err != nil {
			return nil, err
		}
	}
	var err error
	if q.Tenant, err = who.scopeTenant(q.Tenant); err != nil {
		return nil, err
	}
	rows, err := a.Report(ctx, q)
	if err != nil {
		return nil, err
	}
	out := &kilnv1.ReportResponse{GroupBy: q.GroupBy, Rows: make([]*kilnv1.ReportRow, len(rows))}
	for i := range rows {
		out.Rows[i] = reportRow(&rows[i])
	}
	return out, nil
}

// getCall returns the record of the call id for who, on both edges:
// another tenant's call is not found, as an unknown one is.
func getCall(ctx context.Context, a *agent.Agent, who caller, id string) (*kilnv1.CallRecord, error) {
	r, err := a.GetCall(ctx, id)
	if err == nil && !who.mayRead(r.Tenant) {
		err = fmt.Errorf("%w: call %q", agent.ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return callRecord(&r), nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// reportRow is r as the API shows it.
func reportRow(r *datastore.ReportRow) *kilnv1.ReportRow {
	out := &kilnv1.ReportRow{
		Group: r.Group, Count: r.Count,
		ByStatus: map[string]int64{
			wire.Status2xx: r.Status2xx, wire.Status3xx: r.Status3xx, wire.Status4xx: r.Status4xx,
			wire.Status5xx: r.Status5xx, wire.StatusOther: r.StatusOther,
		},
		ByStart: map[string]int64{
			wire.StartWarm: r.Warm, wire.StartThawed: r.Thawed, wire.StartStem: r.Stem,
			wire.StartCold: r.Cold, wire.StartNone: r.NoContainer,
		},
		RunSumMs: ms(r.RunTime), RunP50Ms: ms(r.RunP50), RunP99Ms: ms(r.RunP99), QueueSumMs: ms(r.QueueWait),
		GbSeconds: r.GBSeconds, CpuSeconds: r.CPUSeconds, BytesIn: r.BytesIn, BytesOut: r.BytesOut,
	}
	if !r.Time.IsZero() {
		out.Time = timestamppb.New(r.Time)
	}
	return out
}

// callRecord is r as the API shows it; its empty optional fields are left
// unset.
func callRecord(r *datastore.UsageRecord) *kilnv1.CallRecord {
	return &kilnv1.CallRecord{
		CallId: r.CallID, Function: r.Function, Revision: optional(r.Revision), Tenant: optional(r.Tenant),
		Trigger: r.Trigger, ReceivedAt: timestamppb.New(r.ReceivedAt), QueueWaitMs: ms(r.QueueWait),
		Start: optional(r.Start), InitMs: ms(r.InitTime), RunMs: ms(r.RunTime), TotalMs: ms(r.TotalTime),
		CpuUserMs: ms(r.CPUUser), CpuSystemMs: ms(r.CPUSystem),
		MemoryPeakBytes: r.MemoryPeakBytes, MemoryLimitBytes: r.MemoryLimitBytes, Shared: r.Shared,
		BytesIn: r.BytesIn, BytesOut: r.BytesOut, Status: int32(r.Status), ErrorClass: optional(r.ErrorClass),
		ContainerId: optional(r.ContainerID), Node: r.Node, GbSeconds: r.GBSeconds(), CpuSeconds: r.CPUSeconds(),
	}
}

// optional returns a pointer to s, or nil when s is empty.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// writeCSV answers rows as CSV, one line per row after a header line.
func writeCSV(ctx *fasthttp.RequestCtx, rows []*kilnv1.ReportRow) {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"group", "count", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "status_other",
		"warm", "thawed", "stem", "cold", "no_container", "run_sum_ms", "run_p50_ms", "run_p99_ms", "queue_sum_ms",
		"gb_seconds", "cpu_seconds", "bytes_in", "bytes_out"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	for _, r := range rows {
		st, sk := r.ByStatus, r.ByStart
		_ = w.Write([]string{r.Group, i(r.Count),
			i(st[wire.Status2xx]), i(st[wire.Status3xx]), i(st[wire.Status4xx]), i(st[wire.Status5xx]), i(st[wire.StatusOther]),
			i(sk[wire.StartWarm]), i(sk[wire.StartThawed]), i(sk[wire.StartStem]), i(sk[wire.StartCold]), i(sk[wire.StartNone]),
			f(r.RunSumMs), f(r.RunP50Ms), f(r.RunP99Ms), f(r.QueueSumMs), f(r.GbSeconds), f(r.CpuSeconds),
			i(r.BytesIn), i(r.BytesOut)})
	}
	w.Flush()
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/csv; charset=utf-8")
	ctx.SetBody(b.Bytes())
}

// calls serves GET /v1/calls/{id} (a kiln.v1.CallRecord) and GET
// /v1/calls?function=&tenant=&since=&limit= (a kiln.v1.CallList), as JSON.
func (s *HTTPServer) calls(ctx *fasthttp.RequestCtx, rest string) {
	if string(ctx.Method()) != fasthttp.MethodGet {
		s.methodNotAllowed(ctx, "GET")
		return
	}
	who, ok := s.identify(ctx)
	if !ok {
		return
	}
	if id, ok := strings.CutPrefix(rest, "/"); ok && id != "" {
		rec, err := getCall(s.base, s.agent, who, id)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeCompleteJSON(ctx, fasthttp.StatusOK, rec)
		return
	}
	if rest != "" && rest != "/" {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/calls%s", agent.ErrNotFound, rest))
		return
	}
	f, err := callQuery(ctx.QueryArgs())
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if f.Tenant, err = who.scopeTenant(f.Tenant); err != nil {
		s.writeError(ctx, err)
		return
	}
	rs, err := s.agent.ListCalls(s.base, f)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	out := &kilnv1.CallList{Calls: make([]*kilnv1.CallRecord, len(rs))}
	for i := range rs {
		out.Calls[i] = callRecord(&rs[i])
	}
	writeCompleteJSON(ctx, fasthttp.StatusOK, out)
}

// completeJSON writes a message with every field present, zero or empty
// or not, except optional fields and messages left unset: the JSON the
// usage and keys APIs have always answered, so that a listing of nothing
// is an empty list and a count of nothing is 0.
var completeJSON = protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}

// writeCompleteJSON answers status with m written by completeJSON.
func writeCompleteJSON(ctx *fasthttp.RequestCtx, status int, m proto.Message) {
	writeMessage(ctx, status, completeJSON, m)
}
