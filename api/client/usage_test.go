package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// meterAPI is a fake of kiln's keys, usage, calls, logs and containers
// endpoints, answering what the real server does (api/usage.go, api/logs.go).
type meterAPI struct {
	mu   sync.Mutex
	reqs []*http.Request // every request
	body [][]byte        // the body of each
	// next feeds a followed logs request the text to write, flushed, after
	// its first two lines.
	next chan string
}

func newMeterAPI(t *testing.T) (*meterAPI, *Client) {
	t.Helper()
	m := &meterAPI{next: make(chan string)}
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL+"/prefix", WithToken("tok"))
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

func (m *meterAPI) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.reqs)
}

func (m *meterAPI) last() (*http.Request, []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reqs[len(m.reqs)-1], m.body[len(m.body)-1]
}

const (
	usageJSON = `{"group_by":"hour","rows":[{"group":"2026-03-01T10:00:00Z","time":"2026-03-01T10:00:00Z","count":12,` +
		`"by_status":{"2xx":9,"3xx":0,"4xx":2,"5xx":1,"other":0},"by_start":{"warm":7,"thawed":3,"stem":1,"cold":1,"none":0},` +
		`"run_sum_ms":120.5,"run_p50_ms":8.25,"run_p99_ms":40,"queue_sum_ms":3.5,"gb_seconds":0.0151,"cpu_seconds":0.09,"bytes_in":100,"bytes_out":2048}]}` + "\n"
	usageCSV = "group,count,status_2xx\n\"a,b\",1,1\n"
	callJSON = `{"call_id":"0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f","function":"hello","revision":"r1","tenant":"acme","trigger":"http",` +
		`"received_at":"2026-03-01T10:00:00.123Z","queue_wait_ms":0.5,"start":"warm","init_ms":0,"run_ms":1.25,"total_ms":2,` +
		`"cpu_user_ms":1,"cpu_system_ms":0.5,"memory_peak_bytes":1048576,"memory_limit_bytes":134217728,"bytes_in":5,"bytes_out":7,` +
		`"status":200,"container_id":"c1","node":"n1","gb_seconds":0.0001,"cpu_seconds":0.0015}`
)

func (m *meterAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	m.mu.Lock()
	m.reqs = append(m.reqs, r)
	m.body = append(m.body, body)
	m.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer tok" {
		writeError(w, http.StatusUnauthorized, wire.ClassUnauthenticated, "this API needs a token")
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/prefix")
	w.Header().Set("Content-Type", "application/json")
	switch {
	case path == "/v1/keys" && r.Method == http.MethodPost:
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"key-0a0b0c0d0e0f","tenant":"acme","key":"kiln_secret","created":"2026-03-01T10:00:00Z"}`)
	case path == "/v1/keys" && r.Method == http.MethodGet:
		io.WriteString(w, `{"keys":[{"id":"key-1","tenant":"acme","created":"2026-03-01T10:00:00Z"},`+
			`{"id":"key-2","tenant":"beta","created":"2026-03-01T10:00:00Z","revoked":"2026-03-02T10:00:00Z"}]}`)
	case path == "/v1/keys/key-1" && r.Method == http.MethodDelete:
		w.WriteHeader(http.StatusNoContent)
	case strings.HasPrefix(path, "/v1/keys/"):
		writeError(w, http.StatusNotFound, wire.ClassNotFound, "api key not found")
	case path == "/v1/usage":
		if r.URL.Query().Get("format") == "csv" {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			io.WriteString(w, usageCSV)
			return
		}
		io.WriteString(w, usageJSON)
	case path == "/v1/calls":
		io.WriteString(w, `{"calls":[`+callJSON+`]}`)
	case path == "/v1/calls/0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f":
		io.WriteString(w, callJSON)
	case path == "/v1/calls/nope":
		writeError(w, http.StatusNotFound, wire.ClassNotFound, `call "nope" not found`)
	case path == "/v1/functions/hello/containers":
		writeJSON(w, &kilnv1.ContainerList{Containers: []*kilnv1.Container{
			{Id: "hello-1", State: "frozen", Created: timestamppb.New(time.Unix(100, 0)), Calls: 3, MemoryBytes: 4 << 20},
		}})
	case path == "/v1/functions/hello/logs":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "2026-03-01T10:00:00Z c1 stdout: one\n\n2026-03-01T10:00:01Z c1 stderr: two\n")
		if r.URL.Query().Get("follow") != "1" {
			return
		}
		w.(http.Flusher).Flush()
		for {
			select {
			case line, ok := <-m.next:
				if !ok {
					return
				}
				io.WriteString(w, line)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	default:
		writeError(w, http.StatusNotFound, wire.ClassNotFound, "no route for "+path)
	}
}

func TestKeys(t *testing.T) {
	m, c := newMeterAPI(t)
	ctx := t.Context()

	k, err := c.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	want := &kilnv1.ApiKey{Id: "key-0a0b0c0d0e0f", Tenant: "acme", Key: proto.String("kiln_secret"), Created: timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))}
	if !proto.Equal(k, want) {
		t.Errorf("CreateKey = %v, want %v", k, want)
	}
	r, body := m.last()
	if r.Method != http.MethodPost || r.URL.Path != "/prefix/v1/keys" || string(body) != `{"tenant":"acme"}` || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("CreateKey sent %s %s %q (%s)", r.Method, r.URL.Path, body, r.Header.Get("Content-Type"))
	}
	if _, err := c.CreateKey(ctx, ""); err == nil {
		t.Error("CreateKey of an empty tenant succeeded")
	}

	keys, err := c.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].Id != "key-1" || keys[0].Revoked != nil || keys[0].GetKey() != "" ||
		!keys[1].Revoked.AsTime().Equal(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("ListKeys = %+v", keys)
	}

	if err := c.RevokeKey(ctx, "key-1"); err != nil {
		t.Fatal(err)
	}
	if r, _ := m.last(); r.Method != http.MethodDelete || r.URL.Path != "/prefix/v1/keys/key-1" {
		t.Errorf("RevokeKey sent %s %s", r.Method, r.URL.Path)
	}
	var apiErr *APIError
	if err := c.RevokeKey(ctx, "key-9"); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassNotFound || apiErr.Status != 404 {
		t.Errorf("RevokeKey of an unknown key = %v", err)
	}
	n := m.count()
	for _, bad := range []string{"", "a/b", "..", "."} {
		if err := c.RevokeKey(ctx, bad); err == nil {
			t.Errorf("RevokeKey(%q) succeeded", bad)
		}
		if _, err := c.GetCall(ctx, bad); err == nil {
			t.Errorf("GetCall(%q) succeeded", bad)
		}
	}
	if m.count() != n {
		t.Error("a request was sent for an invalid id")
	}
}

func TestUsage(t *testing.T) {
	m, c := newMeterAPI(t)
	from := time.Date(2026, 3, 1, 11, 0, 0, 0, time.FixedZone("CET", 3600))
	q := UsageQuery{From: from, To: from.Add(90 * time.Minute), Function: "hello", Tenant: "acme", GroupBy: wire.GroupByHour}
	rep, err := c.Usage(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := m.last()
	wantQuery := url.Values{
		"from": {"2026-03-01T10:00:00Z"}, "to": {"2026-03-01T11:30:00Z"}, "function": {"hello"},
		"tenant": {"acme"}, "group_by": {"hour"}, "format": {"json"},
	}
	if r.URL.RawQuery != wantQuery.Encode() {
		t.Errorf("query %q, want %q", r.URL.RawQuery, wantQuery.Encode())
	}
	if r.Header.Get("Accept") != "application/json" {
		t.Errorf("Accept %q", r.Header.Get("Accept"))
	}
	want := &kilnv1.ReportRow{
		Group: "2026-03-01T10:00:00Z", Time: timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)), Count: 12,
		ByStatus: map[string]int64{"2xx": 9, "3xx": 0, "4xx": 2, "5xx": 1, "other": 0},
		ByStart:  map[string]int64{"warm": 7, "thawed": 3, "stem": 1, "cold": 1, "none": 0},
		RunSumMs: 120.5, RunP50Ms: 8.25, RunP99Ms: 40, QueueSumMs: 3.5, GbSeconds: 0.0151, CpuSeconds: 0.09, BytesIn: 100, BytesOut: 2048,
	}
	if rep.GroupBy != "hour" || len(rep.Rows) != 1 || !proto.Equal(rep.Rows[0], want) {
		t.Errorf("Usage = %+v", rep)
	}

	// An empty query sends only the format.
	if _, err := c.Usage(t.Context(), UsageQuery{}); err != nil {
		t.Fatal(err)
	}
	if r, _ := m.last(); r.URL.RawQuery != "format=json" {
		t.Errorf("empty query sent %q", r.URL.RawQuery)
	}

	csv, err := c.UsageCSV(t.Context(), UsageQuery{GroupBy: wire.GroupByFunction})
	if err != nil {
		t.Fatal(err)
	}
	if string(csv) != usageCSV {
		t.Errorf("UsageCSV = %q, want %q", csv, usageCSV)
	}
	if r, _ := m.last(); r.URL.RawQuery != "format=csv&group_by=function" || r.Header.Get("Accept") != "text/csv" {
		t.Errorf("UsageCSV sent %q, Accept %q", r.URL.RawQuery, r.Header.Get("Accept"))
	}
}

func TestCalls(t *testing.T) {
	m, c := newMeterAPI(t)
	ctx := t.Context()
	want := &kilnv1.CallRecord{
		CallId: "0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f", Function: "hello", Revision: proto.String("r1"), Tenant: proto.String("acme"), Trigger: "http",
		ReceivedAt: timestamppb.New(time.Date(2026, 3, 1, 10, 0, 0, 123e6, time.UTC)), QueueWaitMs: 0.5, Start: proto.String("warm"), RunMs: 1.25, TotalMs: 2,
		CpuUserMs: 1, CpuSystemMs: 0.5, MemoryPeakBytes: 1 << 20, MemoryLimitBytes: 128 << 20, BytesIn: 5, BytesOut: 7, Status: 200,
		ContainerId: proto.String("c1"), Node: "n1", GbSeconds: 0.0001, CpuSeconds: 0.0015,
	}
	call, err := c.GetCall(ctx, want.CallId)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(call, want) {
		t.Errorf("GetCall = %v\nwant %v", call, want)
	}
	var apiErr *APIError
	if _, err := c.GetCall(ctx, "nope"); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassNotFound {
		t.Errorf("GetCall(nope) = %v", err)
	}

	calls, err := c.ListCalls(ctx, CallQuery{Function: "hello", Tenant: "acme", Since: time.Unix(1772359200, 0), Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || !proto.Equal(calls[0], want) {
		t.Errorf("ListCalls = %+v", calls)
	}
	r, _ := m.last()
	if want := "function=hello&limit=5&since=2026-03-01T10%3A00%3A00Z&tenant=acme"; r.URL.RawQuery != want {
		t.Errorf("query %q, want %q", r.URL.RawQuery, want)
	}
	if _, err := c.ListCalls(ctx, CallQuery{}); err != nil {
		t.Fatal(err)
	}
	if r, _ := m.last(); r.URL.RawQuery != "" {
		t.Errorf("empty query sent %q", r.URL.RawQuery)
	}
	for _, bad := range []int{-1, wire.MaxCallLimit + 1} {
		if _, err := c.ListCalls(ctx, CallQuery{Limit: bad}); err == nil {
			t.Errorf("ListCalls with limit %d succeeded", bad)
		}
	}
}

func TestContainers(t *testing.T) {
	_, c := newMeterAPI(t)
	cs, err := c.Containers(t.Context(), "hello")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].GetId() != "hello-1" || cs[0].GetState() != "frozen" || cs[0].GetCalls() != 3 ||
		cs[0].GetMemoryBytes() != 4<<20 || cs[0].GetCreated().AsTime() != time.Unix(100, 0).UTC() {
		t.Errorf("Containers = %v", cs)
	}
	if _, err := c.Containers(t.Context(), "Bad"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Containers(Bad) = %v", err)
	}
	var apiErr *APIError
	if _, err := c.Containers(t.Context(), "nope"); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassNotFound {
		t.Errorf("Containers(nope) = %v", err)
	}
}

func TestLogs(t *testing.T) {
	m, c := newMeterAPI(t)
	body, err := c.Logs(t.Context(), "hello", 10, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := "2026-03-01T10:00:00Z c1 stdout: one\n2026-03-01T10:00:01Z c1 stderr: two\n"; string(got) != want {
		t.Errorf("logs %q, want %q", got, want)
	}
	if r, _ := m.last(); r.URL.RawQuery != "tail=10" {
		t.Errorf("query %q", r.URL.RawQuery)
	}
	// A negative tail is the agent's default.
	body, err = c.Logs(t.Context(), "hello", -1, false)
	if err != nil {
		t.Fatal(err)
	}
	body.Close()
	if r, _ := m.last(); r.URL.RawQuery != "" {
		t.Errorf("query %q", r.URL.RawQuery)
	}
	var apiErr *APIError
	if _, err := c.Logs(t.Context(), "nope", 0, false); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassNotFound {
		t.Errorf("Logs(nope) = %v", err)
	}
}

// TestLogsFollow reads a followed log line by line while the agent writes
// it, keep-alives included, and stops it by cancelling the context.
func TestLogsFollow(t *testing.T) {
	m, c := newMeterAPI(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	body, err := c.Logs(ctx, "hello", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if r, _ := m.last(); r.URL.RawQuery != "follow=1&tail=0" {
		t.Errorf("query %q", r.URL.RawQuery)
	}
	br := bufio.NewReader(body)
	readLine := func() string {
		t.Helper()
		s, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading %q: %v", s, err)
		}
		return s
	}
	if l := readLine(); l != "2026-03-01T10:00:00Z c1 stdout: one\n" {
		t.Errorf("line 1 %q", l)
	}
	if l := readLine(); l != "2026-03-01T10:00:01Z c1 stderr: two\n" {
		t.Errorf("line 2 %q", l)
	}
	// Lines come one at a time, each read before the next is written.
	m.next <- "\n" // keep-alive
	m.next <- "2026-03-01T10:00:02Z c2 stdout: three\n"
	if l := readLine(); l != "2026-03-01T10:00:02Z c2 stdout: three\n" {
		t.Errorf("line 3 %q", l)
	}
	m.next <- "\n"
	m.next <- "\n"
	m.next <- "2026-03-01T10:00:03Z c2 stdout: \n" // an empty line of the function is kept
	if l := readLine(); l != "2026-03-01T10:00:03Z c2 stdout: \n" {
		t.Errorf("line 4 %q", l)
	}
	cancel()
	if _, err := io.ReadAll(br); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v", err)
	}
}

func TestLogReader(t *testing.T) {
	long := strings.Repeat("x", 4096) // exactly bufio's default buffer
	in := "\n" + long + "\n\n\r\nshort\n" + long + "y\n\n" + "last without newline"
	want := long + "\nshort\n" + long + "y\n" + "last without newline"
	for name, r := range map[string]io.Reader{
		"whole":    strings.NewReader(in),
		"one byte": iotest.OneByteReader(strings.NewReader(in)),
	} {
		lr := &logReader{body: io.NopCloser(nil), r: bufio.NewReader(r)}
		got, err := io.ReadAll(lr)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s: got %d bytes, want %d", name, len(got), len(want))
		}
	}
	// Small reads get everything too.
	lr := &logReader{body: io.NopCloser(nil), r: bufio.NewReader(strings.NewReader(in))}
	var b bytes.Buffer
	p := make([]byte, 3)
	for {
		n, err := lr.Read(p)
		b.Write(p[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if b.String() != want {
		t.Errorf("small reads: got %d bytes, want %d", b.Len(), len(want))
	}
}

// TestTokenEveryRequest checks that every method sends the token, and that
// a refused one is an unauthenticated *APIError.
func TestTokenEveryRequest(t *testing.T) {
	m, c := newMeterAPI(t)
	ctx := t.Context()
	calls := map[string]func(*Client) error{
		"CreateKey":  func(c *Client) error { _, err := c.CreateKey(ctx, "acme"); return err },
		"ListKeys":   func(c *Client) error { _, err := c.ListKeys(ctx); return err },
		"RevokeKey":  func(c *Client) error { return c.RevokeKey(ctx, "key-1") },
		"Usage":      func(c *Client) error { _, err := c.Usage(ctx, UsageQuery{}); return err },
		"UsageCSV":   func(c *Client) error { _, err := c.UsageCSV(ctx, UsageQuery{}); return err },
		"GetCall":    func(c *Client) error { _, err := c.GetCall(ctx, "0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f"); return err },
		"ListCalls":  func(c *Client) error { _, err := c.ListCalls(ctx, CallQuery{}); return err },
		"Containers": func(c *Client) error { _, err := c.Containers(ctx, "hello"); return err },
		"Logs": func(c *Client) error {
			b, err := c.Logs(ctx, "hello", 1, false)
			if err == nil {
				b.Close()
			}
			return err
		},
	}
	noToken, err := New(c.base.String())
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range calls {
		if err := call(c); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if r, _ := m.last(); r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("User-Agent") != "kiln-client" {
			t.Errorf("%s sent Authorization %q, User-Agent %q", name, r.Header.Get("Authorization"), r.Header.Get("User-Agent"))
		}
		var apiErr *APIError
		if err := call(noToken); !errors.As(err, &apiErr) || apiErr.Class != wire.ClassUnauthenticated || apiErr.Status != 401 {
			t.Errorf("%s without a token: %v", name, err)
		}
	}
}
