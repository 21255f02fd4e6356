package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// testNow is the clock of the tests of relative times and ages.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// seen is one request the meter agent answered.
type seen struct {
	method, path, auth string
	query              url.Values
	body               string
}

// meterAgent is a fake of the agent's keys, usage, calls, logs and
// containers endpoints, answering as api/usage.go and api/logs.go do.
type meterAgent struct {
	mu   sync.Mutex
	reqs []seen
	// token, when set, is required as the bearer token (else 401).
	token string
	// follow feeds a followed log the text to write after its backlog;
	// closing it ends the answer.
	follow chan string
}

func newMeterAgent(t *testing.T) (*meterAgent, string) {
	t.Helper()
	m := &meterAgent{follow: make(chan string)}
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	return m, srv.URL
}

func (m *meterAgent) requests() []seen {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]seen(nil), m.reqs...)
}

func (m *meterAgent) last(t *testing.T) seen {
	t.Helper()
	r := m.requests()
	if len(r) == 0 {
		t.Fatal("no request")
	}
	return r[len(r)-1]
}

const (
	testUsageCSV = "group,count,status_2xx,status_3xx,status_4xx,status_5xx,status_other,warm,thawed,stem,cold,no_container," +
		"run_sum_ms,run_p50_ms,run_p99_ms,queue_sum_ms,gb_seconds,cpu_seconds,bytes_in,bytes_out\r\n" +
		"hello,3,3,0,0,0,0,1,1,1,0,0,3.5,1,1.5,0,0.0004,0.002,10,20\r\n"
	testLogs = "2026-03-01T10:00:00Z c1 stdout: one\n\n2026-03-01T10:00:01Z c1 stderr: two\n"
)

// The usage messages the meter agent answers, as the agent's JSON.
var (
	testCall = &kilnv1.CallRecord{
		CallId: "0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f", Function: "hello", Tenant: proto.String("acme"), Trigger: "http",
		ReceivedAt: timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 123e6, time.UTC)), QueueWaitMs: 0.5, Start: proto.String("warm"),
		RunMs: 1.25, TotalMs: 2, CpuUserMs: 1, CpuSystemMs: 0.5, MemoryPeakBytes: 1 << 20, MemoryLimitBytes: 128 << 20,
		BytesIn: 5, BytesOut: 7, Status: 200, ContainerId: proto.String("c1"), Node: "n1", GbSeconds: 0.0001, CpuSeconds: 0.0015,
	}
	testCall2 = &kilnv1.CallRecord{
		CallId: "0197a3c2-0000-7000-8000-000000000002", Function: "world", Trigger: "http",
		ReceivedAt: timestamppb.New(time.Date(2026, 3, 1, 9, 59, 59, 0, time.UTC)), TotalMs: 0.3,
		Status: 429, ErrorClass: proto.String("resource_exhausted"), Node: "n1",
	}
	usageJSON = protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}
)

// testRow is a report row of count calls, ok of them 2xx.
func testRow(group string, count, ok int64) *kilnv1.ReportRow {
	return &kilnv1.ReportRow{
		Group: group, Count: count,
		ByStatus: map[string]int64{"2xx": ok, "3xx": 0, "4xx": 1, "5xx": 0, "other": 0},
		ByStart:  map[string]int64{"warm": 7, "thawed": 2, "stem": 1, "cold": 0, "none": 1},
		RunSumMs: 20, RunP50Ms: 0.42, RunP99Ms: 1250, QueueSumMs: 1, GbSeconds: 0.000125, CpuSeconds: 12.5, BytesIn: 512, BytesOut: 1572864,
	}
}

func (m *meterAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	m.mu.Lock()
	m.reqs = append(m.reqs, seen{r.Method, r.URL.Path, r.Header.Get("Authorization"), r.URL.Query(), string(body)})
	token := m.token
	m.mu.Unlock()
	if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
		writeMsg(w, http.StatusUnauthorized, &kilnv1.Error{Error: "unauthenticated: this API needs the admin token", Class: "unauthenticated"})
		return
	}
	q := r.URL.Query()
	raw := func(status int, s string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, s+"\n")
	}
	switch p := r.URL.Path; {
	case p == "/v1/keys" && r.Method == http.MethodPost:
		var req kilnv1.CreateApiKeyRequest
		if protojson.Unmarshal(body, &req) != nil || req.Tenant == "" || req.Tenant == "Bad" {
			writeMsg(w, http.StatusBadRequest, &kilnv1.Error{Error: "invalid argument: tenant", Class: "invalid_argument"})
			return
		}
		writeMsg(w, http.StatusCreated, &kilnv1.ApiKey{Id: "key-0a0b0c0d0e0f", Tenant: req.Tenant, Key: proto.String("kiln_s3cret"),
			Created: timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))})
	case p == "/v1/keys" && r.Method == http.MethodGet:
		writeMsg(w, http.StatusOK, &kilnv1.ApiKeyList{Keys: []*kilnv1.ApiKey{
			{Id: "key-1", Tenant: "acme", Created: timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))},
			{Id: "key-2", Tenant: "beta", Created: timestamppb.New(time.Date(2026, 2, 1, 10, 0, 0, 5e8, time.UTC)),
				Revoked: timestamppb.New(time.Date(2026, 2, 2, 10, 0, 0, 0, time.UTC))},
		}})
	case p == "/v1/keys/key-1" && r.Method == http.MethodDelete:
		w.WriteHeader(http.StatusNoContent)
	case strings.HasPrefix(p, "/v1/keys/"):
		writeMsg(w, http.StatusNotFound, &kilnv1.Error{Error: "not found: api key", Class: "not_found"})
	case p == "/v1/usage" && q.Get("format") == "csv":
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		io.WriteString(w, testUsageCSV)
	case p == "/v1/usage":
		rep := &kilnv1.ReportResponse{GroupBy: q.Get("group_by")}
		switch rep.GroupBy {
		case "function":
			rep.Rows = []*kilnv1.ReportRow{testRow("hello", 11, 10), testRow("world", 1, 0)}
		case "hour":
			r := testRow("2026-03-01T10:00:00Z", 11, 10)
			r.Time = timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))
			rep.Rows = []*kilnv1.ReportRow{r}
		default:
			rep.Rows = []*kilnv1.ReportRow{testRow("", 11, 10)}
		}
		raw(http.StatusOK, usageJSON.Format(rep))
	case p == "/v1/calls":
		raw(http.StatusOK, usageJSON.Format(&kilnv1.CallList{Calls: []*kilnv1.CallRecord{testCall, testCall2}}))
	case p == "/v1/calls/0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f":
		raw(http.StatusOK, usageJSON.Format(testCall))
	case strings.HasPrefix(p, "/v1/calls/"):
		writeMsg(w, http.StatusNotFound, &kilnv1.Error{Error: "not found: call", Class: "not_found"})
	case p == "/v1/functions/hello/containers":
		writeMsg(w, http.StatusOK, &kilnv1.ContainerList{Containers: []*kilnv1.Container{
			{Id: "hello-b", State: "busy", Created: timestamppb.New(testNow.Add(-3 * time.Hour)), Calls: 1200, Active: 1, MemoryBytes: 12 << 20},
			{Id: "hello-a", State: "frozen", Created: timestamppb.New(testNow.Add(-50 * 24 * time.Hour)), Calls: 7},
			{Id: "hello-c", State: "starting", Created: timestamppb.New(testNow.Add(-5 * time.Second))},
		}})
	case p == "/v1/functions/empty/containers":
		writeMsg(w, http.StatusOK, &kilnv1.ContainerList{})
	case p == "/v1/functions/hello/logs":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, testLogs)
		if q.Get("follow") != "1" {
			return
		}
		w.(http.Flusher).Flush()
		for {
			select {
			case s, ok := <-m.follow:
				if !ok {
					return
				}
				io.WriteString(w, s)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	case strings.HasPrefix(p, "/v1/functions/"):
		writeMsg(w, http.StatusNotFound, &kilnv1.Error{Error: "not found: function", Class: "not_found"})
	default:
		http.NotFound(w, r)
	}
}

// kilnNow runs the command line as kiln does, with the clock at testNow and
// the admin token file looked for in an empty directory.
func kilnNow(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := &cli{
		stdin:  strings.NewReader(""),
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return env[k] },
		now:    func() time.Time { return testNow },
	}
	args = append([]string{"--data-dir", t.TempDir()}, args...)
	code := run(t.Context(), args, c)
	return result{code, stdout.String(), stderr.String()}
}

func TestKeysCmd(t *testing.T) {
	m, base := newMeterAgent(t)
	env := agentEnv(base)

	r := kilnNow(t, env, "keys", "create", "--tenant", "acme")
	if r.code != 0 || r.stdout != "kiln_s3cret\n" {
		t.Fatalf("keys create: %+v", r)
	}
	for _, want := range []string{"key-0a0b0c0d0e0f", "acme", "not shown again"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("keys create: stderr %q does not say %q", r.stderr, want)
		}
	}
	if s := m.last(t); s.method != http.MethodPost || s.path != "/v1/keys" || s.body != `{"tenant":"acme"}` {
		t.Errorf("keys create sent %+v", s)
	}

	r = kilnNow(t, env, "keys", "list")
	want := `ID     TENANT  CREATED               REVOKED
key-1  acme    2026-03-01T10:00:00Z  -
key-2  beta    2026-02-01T10:00:00Z  2026-02-02T10:00:00Z
`
	if r.code != 0 || r.stdout != want {
		t.Errorf("keys list: %+v\nwant:\n%s", r, want)
	}

	r = kilnNow(t, env, "keys", "revoke", "key-1")
	if r.code != 0 || r.stdout != "Revoked key-1\n" || r.stderr != "" {
		t.Errorf("keys revoke: %+v", r)
	}
	if s := m.last(t); s.method != http.MethodDelete || s.path != "/v1/keys/key-1" {
		t.Errorf("keys revoke sent %+v", s)
	}
	r = kilnNow(t, env, "keys", "revoke", "key-9", "key-1")
	if r.code != 1 || r.stdout != "Revoked key-1\n" || !strings.Contains(r.stderr, "kiln: keys revoke key-9: not found: api key (not_found, HTTP 404)") {
		t.Errorf("keys revoke of an unknown key: %+v", r)
	}

	n := len(m.requests())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "create"}, "--tenant is required"},
		{[]string{"keys", "create", "acme"}, "Run 'kiln keys create --help' for usage."},
		{[]string{"keys", "revoke"}, "Run 'kiln keys revoke --help' for usage."},
		{[]string{"keys", "lsit"}, `unknown command "lsit" for kiln keys (did you mean list?)`},
		{[]string{"keys", "list", "extra"}, "Run 'kiln keys list --help' for usage."},
		{[]string{"keys", "revoke", "a/b"}, `invalid key id "a/b"`},
	} {
		if r := kilnNow(t, env, tt.args...); r.code != 1 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("kiln %v: %+v, want exit 1 and stderr containing %q", tt.args, r, tt.want)
		}
	}
	if len(m.requests()) != n {
		t.Error("a mistaken command line sent a request")
	}
	if r := kilnNow(t, env, "keys", "create", "--tenant", "Bad"); r.code != 1 || !strings.Contains(r.stderr, "keys create: invalid argument: tenant (invalid_argument, HTTP 400)") {
		t.Errorf("keys create of a bad tenant: %+v", r)
	}
	if r := kilnNow(t, env, "keys"); r.code != 0 || !strings.Contains(r.stdout, "revoke") {
		t.Errorf("keys alone: %+v", r)
	}
}

func TestUsageCmd(t *testing.T) {
	m, base := newMeterAgent(t)
	env := agentEnv(base)

	r := kilnNow(t, env, "usage", "--group-by", "function", "--from", "1h", "--to", "now", "--function", "hello", "--tenant", "acme")
	want := `FUNCTION  COUNT  2XX  4XX  5XX  WARM  THAWED  STEM  COLD  RUN P50  RUN P99  GB-S      CPU-S  BYTES IN  BYTES OUT
hello     11     10   1    0    7     2       1     0     420µs    1.25s    0.000125  12.5   512B      1.5MiB
world     1      0    1    0    7     2       1     0     420µs    1.25s    0.000125  12.5   512B      1.5MiB
`
	if r.code != 0 || r.stdout != want {
		t.Errorf("usage: %+v\nwant:\n%s", r, want)
	}
	s := m.last(t)
	wantQuery := url.Values{
		"from": {"2026-03-01T11:00:00Z"}, "to": {"2026-03-01T12:00:00Z"}, "function": {"hello"}, "tenant": {"acme"},
		"group_by": {"function"}, "format": {"json"},
	}
	if s.path != "/v1/usage" || s.query.Encode() != wantQuery.Encode() {
		t.Errorf("usage sent %s?%s, want ?%s", s.path, s.query.Encode(), wantQuery.Encode())
	}

	// Time groupings show the bucket; no grouping one row of everything;
	// the tenant of anonymous calls is "-".
	r = kilnNow(t, env, "usage", "--group-by", "hour")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "TIME ") || !strings.Contains(r.stdout, "\n2026-03-01T10:00:00Z  11 ") {
		t.Errorf("usage by hour: %+v", r)
	}
	r = kilnNow(t, env, "usage")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "GROUP ") || !strings.Contains(r.stdout, "\nall    11 ") {
		t.Errorf("usage: %+v", r)
	}
	if q := m.last(t).query; q.Encode() != "format=json" {
		t.Errorf("usage without flags sent %q", q.Encode())
	}
	r = kilnNow(t, env, "usage", "--group-by", "tenant")
	if r.code != 0 || !strings.Contains(r.stdout, "\n-       11 ") {
		t.Errorf("usage by tenant: %+v", r)
	}

	// JSON has every field.
	r = kilnNow(t, env, "usage", "-o", "json", "--group-by", "hour")
	var rep kilnv1.ReportResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 {
		t.Fatalf("usage -o json: %+v: %v", r, err)
	}
	if len(rep.Rows) != 1 || rep.GroupBy != "hour" || rep.Rows[0].Count != 11 || rep.Rows[0].ByStart["none"] != 1 ||
		rep.Rows[0].BytesOut != 1572864 || !rep.Rows[0].Time.AsTime().Equal(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("usage -o json: %+v", &rep)
	}
	// Zero counts are written, as the agent writes them.
	if !strings.Contains(r.stdout, `"3xx"`) || !strings.Contains(r.stdout, `"cold"`) {
		t.Errorf("usage -o json leaves zero counts out:\n%s", r.stdout)
	}

	// CSV passes through unchanged.
	r = kilnNow(t, env, "usage", "-o", "csv", "--from", "2026-02-01", "--to", "1772366400")
	if r.code != 0 || r.stdout != testUsageCSV {
		t.Errorf("usage -o csv: %+v", r)
	}
	if q := m.last(t).query; q.Get("format") != "csv" || q.Get("from") != "2026-02-01T00:00:00Z" || q.Get("to") != "2026-03-01T12:00:00Z" {
		t.Errorf("usage -o csv sent %q", q.Encode())
	}

	n := len(m.requests())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"usage", "-o", "yaml"}, `-o "yaml": want table, json or csv`},
		{[]string{"usage", "--from", "yesterday"}, `--from "yesterday": want an RFC 3339 time`},
		{[]string{"usage", "--to", "-1h"}, `--to "-1h": want a positive duration`},
		{[]string{"usage", "--to", "2026-13-01"}, `--to "2026-13-01"`},
		{[]string{"usage", "--from", "1h", "--to", "2h"}, "--from 2026-03-01T11:00:00Z is after --to 2026-03-01T10:00:00Z"},
		{[]string{"usage", "--group-by", "week"}, `--group-by "week": want function, tenant, minute, hour or day`},
		{[]string{"usage", "extra"}, "Run 'kiln usage --help' for usage."},
	} {
		r := kilnNow(t, env, tt.args...)
		if r.code != 1 || !strings.Contains(r.stderr, tt.want) || r.stdout != "" {
			t.Errorf("kiln %v: %+v, want exit 1 and stderr containing %q", tt.args, r, tt.want)
		}
	}
	if len(m.requests()) != n {
		t.Error("a mistaken command line sent a request")
	}
}

func TestCallsCmd(t *testing.T) {
	m, base := newMeterAgent(t)
	env := agentEnv(base)

	r := kilnNow(t, env, "calls", "--function", "hello", "--since", "30m", "--limit", "5")
	want := `CALL ID                               RECEIVED                  FUNCTION  TENANT  STATUS  START  RUN     TOTAL  ERROR
0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f  2026-03-01T10:00:00.123Z  hello     acme    200     warm   1.25ms  2ms    -
0197a3c2-0000-7000-8000-000000000002  2026-03-01T09:59:59.000Z  world     -       429     -      0       300µs  resource_exhausted
`
	if r.code != 0 || r.stdout != want {
		t.Errorf("calls: %+v\nwant:\n%s", r, want)
	}
	if s := m.last(t); s.path != "/v1/calls" || s.query.Encode() != "function=hello&limit=5&since=2026-03-01T11%3A30%3A00Z" {
		t.Errorf("calls sent %s?%s", s.path, s.query.Encode())
	}

	r = kilnNow(t, env, "calls", "-o", "json")
	var list kilnv1.CallList
	if err := protojson.Unmarshal([]byte(r.stdout), &list); err != nil || r.code != 0 || len(list.Calls) != 2 || list.Calls[1].GetErrorClass() != "resource_exhausted" {
		t.Errorf("calls -o json: %+v (%v)", r, err)
	}

	r = kilnNow(t, env, "calls", "0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f")
	if r.code != 0 {
		t.Fatalf("calls ID: %+v", r)
	}
	for _, line := range []string{
		"call_id:             0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f\n",
		"revision:            -\n",
		"received_at:         2026-03-01T10:00:00.123Z\n",
		"run_ms:              1.25\n",
		"memory_peak_bytes:   1048576\n",
		"shared:              false\n",
		"status:              200\n",
		"gb_seconds:          0.0001\n",
	} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("calls ID: no line %q in\n%s", line, r.stdout)
		}
	}
	if strings.Count(r.stdout, "\n") != 24 {
		t.Errorf("calls ID: %d lines, want 24:\n%s", strings.Count(r.stdout, "\n"), r.stdout)
	}

	r = kilnNow(t, env, "calls", "0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f", "-o", "json")
	var call kilnv1.CallRecord
	if err := protojson.Unmarshal([]byte(r.stdout), &call); err != nil || r.code != 0 || call.Function != "hello" || call.MemoryLimitBytes != 128<<20 {
		t.Errorf("calls ID -o json: %+v (%v)", r, err)
	}

	r = kilnNow(t, env, "calls", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "kiln: calls nope: not found: call (not_found, HTTP 404)") {
		t.Errorf("calls of an unknown id: %+v", r)
	}

	n := len(m.requests())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"calls", "-o", "csv"}, `-o "csv": want table or json`},
		{[]string{"calls", "--limit", "0"}, "--limit 0: want 1..10000"},
		{[]string{"calls", "--limit", "10001"}, "--limit 10001: want 1..10000"},
		{[]string{"calls", "--limit", "x"}, `invalid argument "x" for "--limit"`},
		{[]string{"calls", "--since", "soon"}, `--since "soon"`},
		{[]string{"calls", "some-id", "--limit", "3"}, "--limit selects calls to list: not with a call ID"},
		{[]string{"calls", "a", "b"}, "Run 'kiln calls --help' for usage."},
	} {
		r := kilnNow(t, env, tt.args...)
		if r.code != 1 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("kiln %v: %+v, want exit 1 and stderr containing %q", tt.args, r, tt.want)
		}
	}
	if len(m.requests()) != n {
		t.Error("a mistaken command line sent a request")
	}
}

func TestPsCmd(t *testing.T) {
	_, base := newMeterAgent(t)
	env := agentEnv(base)
	r := kilnNow(t, env, "ps", "hello")
	want := `ID       STATE     AGE  CALLS  MEMORY
hello-a  frozen    50d  7      -
hello-b  busy      3h   1200   12MiB
hello-c  starting  5s   0      -
`
	if r.code != 0 || r.stdout != want {
		t.Errorf("ps: %+v\nwant:\n%s", r, want)
	}
	if r := kilnNow(t, env, "ps", "empty"); r.code != 0 || r.stdout != "ID  STATE  AGE  CALLS  MEMORY\n" {
		t.Errorf("ps of no containers: %+v", r)
	}
	if r := kilnNow(t, env, "ps", "nope"); r.code != 1 || !strings.Contains(r.stderr, "kiln: ps nope: not found: function (not_found, HTTP 404)") {
		t.Errorf("ps of an unknown function: %+v", r)
	}
	if r := kilnNow(t, env, "ps"); r.code != 1 || !strings.Contains(r.stderr, "Run 'kiln ps --help' for usage.") {
		t.Errorf("ps without a name: %+v", r)
	}
	if r := kilnNow(t, env, "ps", "Bad"); r.code != 1 || !strings.Contains(r.stderr, "invalid function name") {
		t.Errorf("ps of a bad name: %+v", r)
	}
}

func TestLogsCmd(t *testing.T) {
	m, base := newMeterAgent(t)
	env := agentEnv(base)
	r := kilnNow(t, env, "logs", "hello", "--tail", "0")
	if want := "2026-03-01T10:00:00Z c1 stdout: one\n2026-03-01T10:00:01Z c1 stderr: two\n"; r.code != 0 || r.stdout != want {
		t.Errorf("logs: %+v", r)
	}
	if q := m.last(t).query; q.Encode() != "tail=0" {
		t.Errorf("logs sent %q", q.Encode())
	}
	if r := kilnNow(t, env, "logs", "hello"); r.code != 0 || m.last(t).query.Encode() != "tail=100" {
		t.Errorf("logs with the default tail: %+v, sent %q", r, m.last(t).query.Encode())
	}
	if r := kilnNow(t, env, "logs", "nope"); r.code != 1 || !strings.Contains(r.stderr, "kiln: logs nope: not found: function (not_found, HTTP 404)") {
		t.Errorf("logs of an unknown function: %+v", r)
	}
	if r := kilnNow(t, env, "logs", "hello", "--tail", "-1"); r.code != 1 || !strings.Contains(r.stderr, "--tail -1: want 0 (all) or more") {
		t.Errorf("logs --tail -1: %+v", r)
	}
	if r := kilnNow(t, env, "logs"); r.code != 1 || !strings.Contains(r.stderr, "Run 'kiln logs --help' for usage.") {
		t.Errorf("logs without a name: %+v", r)
	}
}

// syncBuffer is a buffer written by the command and read by the test, which
// is told of each write.
type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	select {
	case s.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits until the output holds want.
func (s *syncBuffer) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(s.String(), want) {
		select {
		case <-s.wrote:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("output %q never held %q", s.String(), want)
		}
	}
}

// TestLogsFollow follows a streamed log: lines are printed as they come,
// keep-alives are not, and an interrupt (the context's cancellation, as
// main's on SIGINT) exits 0; so does the end of the stream.
func TestLogsFollow(t *testing.T) {
	m, base := newMeterAgent(t)
	follow := func(ctx context.Context, out *syncBuffer) chan result {
		done := make(chan result, 1)
		go func() {
			var stderr bytes.Buffer
			c := &cli{stdin: strings.NewReader(""), stdout: out, stderr: &stderr, getenv: func(string) string { return "" }}
			code := run(ctx, []string{"logs", "-f", "hello", "--agent", base, "--data-dir", t.TempDir()}, c)
			done <- result{code: code, stderr: stderr.String()}
		}()
		return done
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &syncBuffer{wrote: make(chan struct{}, 1)}
	done := follow(ctx, out)
	out.waitFor(t, "stderr: two\n")
	m.follow <- "\n" // keep-alive
	m.follow <- "2026-03-01T10:00:02Z c2 stdout: three\n"
	out.waitFor(t, "three\n")
	if q := m.last(t).query; q.Get("follow") != "1" {
		t.Errorf("logs -f sent %q", q.Encode())
	}
	cancel()
	select {
	case r := <-done:
		if r.code != 0 || r.stderr != "" {
			t.Errorf("interrupted logs -f: %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs -f did not stop when interrupted")
	}
	if want := "2026-03-01T10:00:00Z c1 stdout: one\n2026-03-01T10:00:01Z c1 stderr: two\n2026-03-01T10:00:02Z c2 stdout: three\n"; out.String() != want {
		t.Errorf("logs -f printed %q, want %q", out.String(), want)
	}

	// The agent ending the stream ends the command.
	out = &syncBuffer{wrote: make(chan struct{}, 1)}
	done = follow(t.Context(), out)
	out.waitFor(t, "stderr: two\n")
	close(m.follow)
	select {
	case r := <-done:
		if r.code != 0 {
			t.Errorf("logs -f of an ended stream: %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs -f did not stop at the end of the stream")
	}
}

// TestToken checks where the bearer token comes from: --token, else
// $KILN_TOKEN, else DATA_DIR/admin.token; and that every command sends it.
func TestToken(t *testing.T) {
	m, base := newMeterAgent(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noFile := t.TempDir()
	badFile := t.TempDir()
	if err := os.Mkdir(filepath.Join(badFile, "admin.token"), 0o700); err != nil { // unreadable as a file
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"flag over env and file", map[string]string{envToken: "from-env"}, []string{"--data-dir", dir, "--token", "from-flag"}, "Bearer from-flag"},
		{"env over file", map[string]string{envToken: "from-env"}, []string{"--data-dir", dir}, "Bearer from-env"},
		{"file", nil, []string{"--data-dir", dir}, "Bearer from-file"},
		{"empty flag sends none", map[string]string{envToken: "from-env"}, []string{"--data-dir", dir, "--token="}, ""},
		{"no file", nil, []string{"--data-dir", noFile}, ""},
		{"unreadable file", nil, []string{"--data-dir", badFile}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{envAgent: base}
			for k, v := range tt.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			c := &cli{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return env[k] }}
			if code := run(t.Context(), append(tt.args, "keys", "list"), c); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			if got := m.last(t).auth; got != tt.want {
				t.Errorf("Authorization %q, want %q", got, tt.want)
			}
		})
	}

	// Every command that talks to the agent sends it, the existing ones
	// included.
	m.mu.Lock()
	m.token = "from-file"
	m.mu.Unlock()
	fns, fnURL := newFakeAgentToken(t, "from-file")
	for _, args := range [][]string{
		{"keys", "list"}, {"keys", "create", "--tenant", "acme"}, {"keys", "revoke", "key-1"},
		{"usage"}, {"usage", "-o", "csv"}, {"calls"}, {"calls", "0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f"},
		{"ps", "hello"}, {"logs", "hello"},
	} {
		if r := kilnNow(t, agentEnv(base), append([]string{"--data-dir", dir}, args...)...); r.code != 0 {
			t.Errorf("kiln %v with the file's token: %+v", args, r)
		}
	}
	for _, args := range [][]string{{"list"}, {"rm", "hello"}, {"invoke", "hello", "-d", "x"}} {
		if r := kilnNow(t, agentEnv(fnURL), append([]string{"--data-dir", dir}, args...)...); r.code != 0 {
			t.Errorf("kiln %v with the file's token: %+v", args, r)
		}
	}
	fns.mu.Lock()
	if fns.sawAuth != "Bearer from-file" {
		t.Errorf("function API saw Authorization %q", fns.sawAuth)
	}
	fns.mu.Unlock()

	// A refused or missing token says where it came from.
	r := kilnNow(t, map[string]string{envAgent: base, envToken: "wrong"}, "usage")
	if r.code != 1 || !strings.Contains(r.stderr, "(unauthenticated, HTTP 401); the token sent came from $KILN_TOKEN") {
		t.Errorf("refused token: %+v", r)
	}
	r = kilnNow(t, agentEnv(base), "--data-dir", noFile, "keys", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "no token was sent: "+filepath.Join(noFile, "admin.token")+" does not exist") {
		t.Errorf("no token: %+v", r)
	}
	r = kilnNow(t, agentEnv(base), "--data-dir", badFile, "keys", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "no token was sent") || !strings.Contains(r.stderr, "is a directory") {
		t.Errorf("unreadable token file: %+v", r)
	}
}

// tokenAgent wraps fakeAgent to require a bearer token.
type tokenAgent struct {
	*fakeAgent
	token   string
	sawAuth string
}

func newFakeAgentToken(t *testing.T, token string) (*tokenAgent, string) {
	t.Helper()
	f := &tokenAgent{fakeAgent: &fakeAgent{fns: map[string]*kilnv1.Function{"hello": {Name: "hello"}}}, token: token}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *tokenAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		writeMsg(w, http.StatusUnauthorized, &kilnv1.Error{Error: "unauthenticated", Class: "unauthenticated"})
		return
	}
	f.mu.Lock()
	f.sawAuth = r.Header.Get("Authorization")
	f.mu.Unlock()
	f.fakeAgent.ServeHTTP(w, r)
}

func TestParseTimeFlag(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"now", testNow},
		{"1h", testNow.Add(-time.Hour)},
		{"90m", testNow.Add(-90 * time.Minute)},
		{"1h30m", testNow.Add(-90 * time.Minute)},
		{"45s", testNow.Add(-45 * time.Second)},
		{"7d", testNow.Add(-7 * 24 * time.Hour)},
		{"1d12h", testNow.Add(-36 * time.Hour)},
		{"2026-02-01", time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-02-01T10:00:00+01:00", time.Date(2026, 2, 1, 9, 0, 0, 0, time.UTC)},
		{"2026-02-01T10:00:00.5Z", time.Date(2026, 2, 1, 10, 0, 0, 5e8, time.UTC)},
		{"1772359200", time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)},
	} {
		got, err := parseTimeFlag("from", tt.in, testNow)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseTimeFlag(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"yesterday", "-1h", "0s", "0d", "1w", "d", "2026-02-30", "10:00", "-5", "1h-"} {
		if got, err := parseTimeFlag("from", bad, testNow); err == nil {
			t.Errorf("parseTimeFlag(%q) = %v, want an error", bad, got)
		} else if _, ok := err.(usageError); !ok {
			t.Errorf("parseTimeFlag(%q): %v is not a usage error", bad, err)
		}
	}
}

func TestFormat(t *testing.T) {
	for in, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1KiB", 1536: "1.5KiB", 1802240: "1.7MiB", 12 << 20: "12MiB", 512<<10 + 400: "512KiB", 5 << 40: "5TiB", 2000 << 40: "2000TiB"} {
		if got := fmtBytes(in); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0: "0", 0.000125: "0.000125", 12.3456: "12.35", 1234.6: "1235", 99999: "99999", 1e-12: "0"} {
		if got := fmtFloat(in); got != want {
			t.Errorf("fmtFloat(%v) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0: "0", 0.01604: "16µs", 0.42: "420µs", 0.998: "998µs", 1: "1ms", 3.227: "3.23ms", 424.7: "425ms", 1250: "1.25s", 90000: "90s"} {
		if got := fmtMs(in); got != want {
			t.Errorf("fmtMs(%v) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[time.Duration]string{0: "0s", 119 * time.Second: "119s", 2 * time.Minute: "2m", 47 * time.Hour: "47h", 49 * time.Hour: "2d", -time.Hour: "0s"} {
		if got := fmtAge(testNow, testNow.Add(-in)); got != want {
			t.Errorf("fmtAge(%v) = %q, want %q", in, got, want)
		}
	}
}
