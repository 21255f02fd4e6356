package api

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
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

// keys serves /v1/keys: POST {"tenant": ...} creates, GET lists, DELETE
// /v1/keys/{id} revokes.
func (s *HTTPServer) keys(ctx *fasthttp.RequestCtx, rest string) {
	method := string(ctx.Method())
	switch {
	case (rest == "" || rest == "/") && method == fasthttp.MethodPost:
		var req struct {
			Tenant string `json:"tenant"`
		}
		if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
			s.writeError(ctx, fmt.Errorf("%w: body: %v", agent.ErrInvalidArgument, err))
			return
		}
		key, k, err := s.agent.CreateKey(ctx, req.Tenant)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeAny(ctx, fasthttp.StatusCreated, map[string]any{"id": k.ID, "tenant": k.Tenant, "key": key, "created": k.Created})
	case (rest == "" || rest == "/") && method == fasthttp.MethodGet:
		ks, err := s.agent.ListKeys(ctx)
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		out := make([]map[string]any, 0, len(ks))
		for _, k := range ks {
			m := map[string]any{"id": k.ID, "tenant": k.Tenant, "created": k.Created}
			if !k.Revoked.IsZero() {
				m["revoked"] = k.Revoked
			}
			out = append(out, m)
		}
		writeAny(ctx, fasthttp.StatusOK, map[string]any{"keys": out})
	case strings.HasPrefix(rest, "/") && method == fasthttp.MethodDelete:
		if err := s.agent.RevokeKey(ctx, rest[1:]); err != nil {
			s.writeError(ctx, err)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	default:
		s.methodNotAllowed(ctx, "GET, POST, DELETE")
	}
}

// parseTime reads an RFC 3339 time or unix seconds.
func parseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Unix(n, 0), nil
	}
	return time.Time{}, fmt.Errorf("%w: %s: %q is neither an RFC 3339 time nor unix seconds", agent.ErrInvalidArgument, field, v)
}

// usage serves GET /v1/usage?from=&to=&function=&tenant=&group_by=&format=.
func (s *HTTPServer) usage(ctx *fasthttp.RequestCtx) {
	if string(ctx.Method()) != fasthttp.MethodGet {
		s.methodNotAllowed(ctx, "GET")
		return
	}
	who, ok := s.identify(ctx)
	if !ok {
		return
	}
	args := ctx.QueryArgs()
	var q datastore.ReportQuery
	var err error
	if q.From, err = parseTime("from", string(args.Peek("from"))); err != nil {
		s.writeError(ctx, err)
		return
	}
	if q.To, err = parseTime("to", string(args.Peek("to"))); err != nil {
		s.writeError(ctx, err)
		return
	}
	q.Function = string(args.Peek("function"))
	q.Tenant = string(args.Peek("tenant"))
	q.GroupBy = string(args.Peek("group_by"))
	format := string(args.Peek("format"))
	if format != "" && format != "json" && format != "csv" {
		s.writeError(ctx, fmt.Errorf("%w: format: %q is not json or csv", agent.ErrInvalidArgument, format))
		return
	}
	if !who.admin {
		if q.Tenant != "" && q.Tenant != who.tenant {
			s.writeError(ctx, fmt.Errorf("%w: a tenant's key sees only its own usage", agent.ErrUnauthenticated))
			return
		}
		q.Tenant = who.tenant
	}
	rows, err := s.agent.Report(ctx, q)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	if format == "csv" {
		writeCSV(ctx, rows)
		return
	}
	out := make([]reportRowJSON, len(rows))
	for i, r := range rows {
		out[i] = toReportJSON(r)
	}
	writeAny(ctx, fasthttp.StatusOK, map[string]any{"group_by": q.GroupBy, "rows": out})
}

type reportRowJSON struct {
	Group      string           `json:"group"`
	Time       *time.Time       `json:"time,omitempty"`
	Count      int64            `json:"count"`
	ByStatus   map[string]int64 `json:"by_status"`
	ByStart    map[string]int64 `json:"by_start"`
	RunSumMs   float64          `json:"run_sum_ms"`
	RunP50Ms   float64          `json:"run_p50_ms"`
	RunP99Ms   float64          `json:"run_p99_ms"`
	QueueSumMs float64          `json:"queue_sum_ms"`
	GBSeconds  float64          `json:"gb_seconds"`
	CPUSeconds float64          `json:"cpu_seconds"`
	BytesIn    int64            `json:"bytes_in"`
	BytesOut   int64            `json:"bytes_out"`
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func toReportJSON(r datastore.ReportRow) reportRowJSON {
	out := reportRowJSON{
		Group: r.Group, Count: r.Count,
		ByStatus: map[string]int64{"2xx": r.Status2xx, "3xx": r.Status3xx, "4xx": r.Status4xx, "5xx": r.Status5xx, "other": r.StatusOther},
		ByStart:  map[string]int64{"warm": r.Warm, "thawed": r.Thawed, "stem": r.Stem, "cold": r.Cold, "none": r.NoContainer},
		RunSumMs: ms(r.RunTime), RunP50Ms: ms(r.RunP50), RunP99Ms: ms(r.RunP99), QueueSumMs: ms(r.QueueWait),
		GBSeconds: r.GBSeconds, CPUSeconds: r.CPUSeconds, BytesIn: r.BytesIn, BytesOut: r.BytesOut,
	}
	if !r.Time.IsZero() {
		t := r.Time
		out.Time = &t
	}
	return out
}

func writeCSV(ctx *fasthttp.RequestCtx, rows []datastore.ReportRow) {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"group", "count", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "status_other",
		"warm", "thawed", "stem", "cold", "no_container", "run_sum_ms", "run_p50_ms", "run_p99_ms", "queue_sum_ms",
		"gb_seconds", "cpu_seconds", "bytes_in", "bytes_out"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	for _, r := range rows {
		_ = w.Write([]string{r.Group, i(r.Count), i(r.Status2xx), i(r.Status3xx), i(r.Status4xx), i(r.Status5xx), i(r.StatusOther),
			i(r.Warm), i(r.Thawed), i(r.Stem), i(r.Cold), i(r.NoContainer), f(ms(r.RunTime)), f(ms(r.RunP50)), f(ms(r.RunP99)),
			f(ms(r.QueueWait)), f(r.GBSeconds), f(r.CPUSeconds), i(r.BytesIn), i(r.BytesOut)})
	}
	w.Flush()
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/csv; charset=utf-8")
	ctx.SetBody(b.Bytes())
}

// callJSON is one usage record as the calls API shows it.
type callJSON struct {
	CallID      string    `json:"call_id"`
	Function    string    `json:"function"`
	Revision    string    `json:"revision,omitempty"`
	Tenant      string    `json:"tenant,omitempty"`
	Trigger     string    `json:"trigger"`
	ReceivedAt  time.Time `json:"received_at"`
	QueueWaitMs float64   `json:"queue_wait_ms"`
	Start       string    `json:"start,omitempty"`
	InitMs      float64   `json:"init_ms"`
	RunMs       float64   `json:"run_ms"`
	TotalMs     float64   `json:"total_ms"`
	CPUUserMs   float64   `json:"cpu_user_ms"`
	CPUSystemMs float64   `json:"cpu_system_ms"`
	MemoryPeak  int64     `json:"memory_peak_bytes"`
	MemoryLimit int64     `json:"memory_limit_bytes"`
	Shared      bool      `json:"shared,omitempty"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
	Status      int       `json:"status"`
	ErrorClass  string    `json:"error_class,omitempty"`
	ContainerID string    `json:"container_id,omitempty"`
	Node        string    `json:"node"`
	GBSeconds   float64   `json:"gb_seconds"`
	CPUSeconds  float64   `json:"cpu_seconds"`
}

func toCallJSON(r *datastore.UsageRecord) callJSON {
	return callJSON{
		CallID: r.CallID, Function: r.Function, Revision: r.Revision, Tenant: r.Tenant, Trigger: r.Trigger,
		ReceivedAt: r.ReceivedAt.UTC(), QueueWaitMs: ms(r.QueueWait), Start: r.Start, InitMs: ms(r.InitTime),
		RunMs: ms(r.RunTime), TotalMs: ms(r.TotalTime), CPUUserMs: ms(r.CPUUser), CPUSystemMs: ms(r.CPUSystem),
		MemoryPeak: r.MemoryPeakBytes, MemoryLimit: r.MemoryLimitBytes, Shared: r.Shared, BytesIn: r.BytesIn,
		BytesOut: r.BytesOut, Status: r.Status, ErrorClass: r.ErrorClass, ContainerID: r.ContainerID, Node: r.Node,
		GBSeconds: r.GBSeconds(), CPUSeconds: r.CPUSeconds(),
	}
}

// calls serves GET /v1/calls/{id} and GET /v1/calls?function=&since=&limit=.
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
		r, err := s.agent.GetCall(ctx, id)
		if err == nil && !who.admin && r.Tenant != who.tenant {
			err = fmt.Errorf("%w: call %q", agent.ErrNotFound, id)
		}
		if err != nil {
			s.writeError(ctx, err)
			return
		}
		writeAny(ctx, fasthttp.StatusOK, toCallJSON(&r))
		return
	}
	if rest != "" && rest != "/" {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/calls%s", agent.ErrNotFound, rest))
		return
	}
	args := ctx.QueryArgs()
	f := datastore.CallFilter{Function: string(args.Peek("function")), Tenant: string(args.Peek("tenant"))}
	var err error
	if f.Since, err = parseTime("since", string(args.Peek("since"))); err != nil {
		s.writeError(ctx, err)
		return
	}
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > wire.MaxCallLimit {
			s.writeError(ctx, fmt.Errorf("%w: limit: %q is outside 1..%d", agent.ErrInvalidArgument, v, wire.MaxCallLimit))
			return
		}
		f.Limit = n
	}
	if !who.admin {
		if f.Tenant != "" && f.Tenant != who.tenant {
			s.writeError(ctx, fmt.Errorf("%w: a tenant's key sees only its own calls", agent.ErrUnauthenticated))
			return
		}
		f.Tenant = who.tenant
	}
	rs, err := s.agent.ListCalls(ctx, f)
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	out := make([]callJSON, len(rs))
	for i := range rs {
		out[i] = toCallJSON(&rs[i])
	}
	writeAny(ctx, fasthttp.StatusOK, map[string]any{"calls": out})
}

func writeAny(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		return
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}
