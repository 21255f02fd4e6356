package client

// These tests are of the client's transport: what it makes of answers kiln
// would not give (a proxy's, a newer agent's, none at all) and what it sends
// on every request. What kiln's server answers is checked against the real
// server in contract_test.go.

import (
	"context"
	"errors"
	"github.com/kilnfx/kiln/errdefs"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func writeJSON(w http.ResponseWriter, m proto.Message) {
	w.Header().Set("Content-Type", "application/json")
	b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	w.Write(b)
}

func TestNew(t *testing.T) {
	for _, bad := range []string{"", "127.0.0.1:8080", "ftp://x", "http://", "http://h/?a=b", "http://u:p@h", "http://h/#f", "://"} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
	for _, ok := range []string{"http://127.0.0.1:8080", "https://kiln.example/", "http://h/prefix/"} {
		if _, err := New(ok); err != nil {
			t.Errorf("New(%q) = %v", ok, err)
		}
	}
}

func TestInvalidName(t *testing.T) {
	c, err := New("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"", "Hello", "../v1/functions", "a/b", "a?b"} {
		if _, err := c.Get(ctx, name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Get(%q) = %v", name, err)
		}
		if _, err := c.Deploy(ctx, name, &kilnv1.FunctionSpec{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Deploy(%q) = %v", name, err)
		}
		if err := c.Delete(ctx, name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Delete(%q) = %v", name, err)
		}
		if _, err := c.Invoke(ctx, name, nil, nil); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Invoke(%q) = %v", name, err)
		}
	}
}

// TestInvokeAnswersNotKilns checks Invoke's reading of answers: an error
// class only when kiln set one, a function's own status as its answer, and
// a proxy's error page kept as the message.
func TestInvokeAnswersNotKilns(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/invoke/teapot":
			w.WriteHeader(http.StatusTeapot)
			w.Write([]byte("short and stout"))
		case "/invoke/fails":
			w.Header().Set(wire.HeaderError, wire.ClassFunctionError)
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte("boom"))
		case "/invoke/proxy":
			w.Header().Set(wire.HeaderError, wire.ClassUnavailable)
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("<html>bad gateway</html>"))
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if res, err := c.Invoke(ctx, "teapot", nil, nil); err != nil || res.Status != http.StatusTeapot || res.FunctionError || string(res.Body) != "short and stout" {
		t.Errorf("Invoke(teapot) = %+v, %v", res, err)
	}
	if res, err := c.Invoke(ctx, "fails", nil, nil); err != nil || res.Status != 500 || !res.FunctionError || string(res.Body) != "boom" {
		t.Errorf("Invoke(fails) = %+v, %v", res, err)
	}
	var apiErr *APIError
	_, err = c.Invoke(ctx, "proxy", nil, nil)
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadGateway || apiErr.Class != wire.ClassUnavailable || apiErr.Message != "<html>bad gateway</html>" {
		t.Errorf("Invoke(proxy) = %#v", err)
	}
}

func TestBasePathPrefix(t *testing.T) {
	var gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.Path
		writeJSON(w, &kilnv1.FunctionList{})
	}))
	defer srv.Close()
	c, err := New(srv.URL + "/kiln/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	if gotPath != "/kiln/v1/functions" {
		t.Errorf("path = %q", gotPath)
	}
}

func TestBadAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/functions":
			w.Write([]byte("not json"))
		case "/v1/functions/plain":
			http.Error(w, "upstream exploded", http.StatusServiceUnavailable)
		case "/v1/functions/empty":
			w.WriteHeader(http.StatusInternalServerError)
		default:
			// Unknown fields from a newer agent are ignored.
			w.Write([]byte(`{"name":"new","revision":"r9","future_field":1}`))
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.List(ctx); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Errorf("List of a non-JSON answer = %v", err)
	}
	var apiErr *APIError
	if _, err := c.Get(ctx, "plain"); !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.Message != "upstream exploded" || apiErr.Class != "" {
		t.Errorf("Get(plain) = %#v", err)
	}
	if _, err := c.Get(ctx, "empty"); !errors.As(err, &apiErr) || apiErr.Error() != "Internal Server Error (HTTP 500)" {
		t.Errorf("Get(empty) = %v", err)
	}
	fn, err := c.Get(ctx, "new")
	if err != nil || fn.Revision != "r9" {
		t.Errorf("Get(new) = %v, %v", fn, err)
	}
}

func TestContextCancel(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Invoke(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Invoke = %v, want DeadlineExceeded", err)
	}
}

// recorder is a server that answers every request with an empty message
// (or text, for CSV and logs) and keeps what it was sent.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.body = append(r.body, b)
	r.mu.Unlock()
	switch {
	case strings.HasSuffix(req.URL.Path, "/logs"), req.URL.Query().Get("format") == "csv":
		w.Write([]byte("text\n"))
	case req.Method == http.MethodDelete:
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Write([]byte("{}"))
	}
}

func (r *recorder) last() (*http.Request, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reqs[len(r.reqs)-1], string(r.body[len(r.body)-1])
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// TestEveryRequest checks what every method sends: its method and path
// below the base URL's, the token, the User-Agent, the Accept and
// Content-Type it means, the query it was given (times in UTC), and bodies
// with the proto field names.
func TestEveryRequest(t *testing.T) {
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	c, err := New(srv.URL+"/prefix/", WithToken("tok"), WithUserAgent("test/1"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	from := time.Date(2026, 3, 1, 11, 0, 0, 0, time.FixedZone("CET", 3600))
	spec := &kilnv1.FunctionSpec{Runtime: "go", Code: []byte("archive"), MemoryMb: 128, Timeout: durationpb.New(30 * time.Second)}
	for _, tt := range []struct {
		call                 func() error
		method, path, accept string
		query                url.Values
		body                 string // what the body holds, spaces left out
	}{
		{func() error { _, err := c.Deploy(ctx, "hello", spec); return err }, "PUT", "/v1/functions/hello", "application/json", nil, `"memory_mb":128`},
		{func() error { _, err := c.Deploy(ctx, "hello", spec); return err }, "PUT", "/v1/functions/hello", "application/json", nil, `"timeout":"30s"`},
		{func() error { _, err := c.Get(ctx, "hello"); return err }, "GET", "/v1/functions/hello", "application/json", nil, ""},
		{func() error { _, err := c.List(ctx); return err }, "GET", "/v1/functions", "application/json", nil, ""},
		{func() error { return c.Delete(ctx, "hello") }, "DELETE", "/v1/functions/hello", "application/json", nil, ""},
		{func() error { _, err := c.Containers(ctx, "hello"); return err }, "GET", "/v1/functions/hello/containers", "application/json", nil, ""},
		{func() error {
			b, err := c.Logs(ctx, "hello", 10, false)
			if err == nil {
				b.Close()
			}
			return err
		}, "GET", "/v1/functions/hello/logs", "text/plain", url.Values{"tail": {"10"}}, ""},
		{func() error {
			b, err := c.Logs(ctx, "hello", -1, true)
			if err == nil {
				b.Close()
			}
			return err
		}, "GET", "/v1/functions/hello/logs", "text/plain", url.Values{"follow": {"1"}}, ""},
		{func() error { _, err := c.CreateKey(ctx, "acme"); return err }, "POST", "/v1/keys", "application/json", nil, `{"tenant":"acme"}`},
		{func() error { _, err := c.ListKeys(ctx); return err }, "GET", "/v1/keys", "application/json", nil, ""},
		{func() error { return c.RevokeKey(ctx, "key-1") }, "DELETE", "/v1/keys/key-1", "application/json", nil, ""},
		{func() error {
			_, err := c.Usage(ctx, UsageQuery{From: from, To: from.Add(90 * time.Minute), Function: "hello", Tenant: "acme", GroupBy: wire.GroupByHour})
			return err
		}, "GET", "/v1/usage", "application/json", url.Values{
			"from": {"2026-03-01T10:00:00Z"}, "to": {"2026-03-01T11:30:00Z"}, "function": {"hello"},
			"tenant": {"acme"}, "group_by": {"hour"}, "format": {"json"},
		}, ""},
		{func() error { _, err := c.Usage(ctx, UsageQuery{}); return err }, "GET", "/v1/usage", "application/json", url.Values{"format": {"json"}}, ""},
		{func() error { _, err := c.UsageCSV(ctx, UsageQuery{GroupBy: wire.GroupByFunction}); return err }, "GET", "/v1/usage", "text/csv",
			url.Values{"format": {"csv"}, "group_by": {"function"}}, ""},
		{func() error { _, err := c.GetCall(ctx, "call-1"); return err }, "GET", "/v1/calls/call-1", "application/json", nil, ""},
		{func() error {
			_, err := c.ListCalls(ctx, CallQuery{Function: "hello", Tenant: "acme", Since: time.Unix(1772359200, 0), Limit: 5})
			return err
		}, "GET", "/v1/calls", "application/json", url.Values{
			"function": {"hello"}, "tenant": {"acme"}, "since": {"2026-03-01T10:00:00Z"}, "limit": {"5"},
		}, ""},
		{func() error { _, err := c.ListCalls(ctx, CallQuery{}); return err }, "GET", "/v1/calls", "application/json", nil, ""},
		{func() error { _, err := c.Invoke(ctx, "hello", []byte("x"), http.Header{"X-A": {"1"}}); return err }, "POST", "/invoke/hello", "", nil, "x"},
	} {
		if err := tt.call(); err != nil {
			t.Errorf("%s %s: %v", tt.method, tt.path, err)
			continue
		}
		r, body := rec.last()
		if r.Method != tt.method || r.URL.Path != "/prefix"+tt.path || r.URL.RawQuery != tt.query.Encode() {
			t.Errorf("sent %s %s?%s, want %s /prefix%s?%s", r.Method, r.URL.Path, r.URL.RawQuery, tt.method, tt.path, tt.query.Encode())
		}
		if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("User-Agent") != "test/1" || r.Header.Get("Accept") != tt.accept {
			t.Errorf("%s %s sent Authorization %q, User-Agent %q, Accept %q", tt.method, tt.path,
				r.Header.Get("Authorization"), r.Header.Get("User-Agent"), r.Header.Get("Accept"))
		}
		if !strings.Contains(strings.ReplaceAll(body, " ", ""), tt.body) {
			t.Errorf("%s %s sent the body %q, want it to hold %q", tt.method, tt.path, body, tt.body)
		}
		// Message bodies say they are JSON; a call's body is the caller's.
		wantCT := ""
		if tt.method == "PUT" || tt.method == "POST" && tt.path == "/v1/keys" {
			wantCT = "application/json"
		}
		if ct := r.Header.Get("Content-Type"); ct != wantCT {
			t.Errorf("%s %s sent Content-Type %q, want %q", tt.method, tt.path, ct, wantCT)
		}
	}

	// Input kiln would refuse sends nothing.
	n := rec.count()
	for _, bad := range []string{"", "a/b", "..", "."} {
		if err := c.RevokeKey(ctx, bad); err == nil {
			t.Errorf("RevokeKey(%q) succeeded", bad)
		}
		if _, err := c.GetCall(ctx, bad); err == nil {
			t.Errorf("GetCall(%q) succeeded", bad)
		}
	}
	for _, bad := range []int{-1, wire.MaxCallLimit + 1} {
		if _, err := c.ListCalls(ctx, CallQuery{Limit: bad}); err == nil {
			t.Errorf("ListCalls with limit %d succeeded", bad)
		}
	}
	if _, err := c.CreateKey(ctx, ""); err == nil {
		t.Error("CreateKey of an empty tenant succeeded")
	}
	if _, err := c.Deploy(ctx, "hello", nil); err == nil {
		t.Error("Deploy of a nil spec succeeded")
	}
	if rec.count() != n {
		t.Error("a request was sent for invalid input")
	}
}

// TestErrorsUnwrapToTheirClass: every class kiln answers with maps back to
// its errdefs sentinel, on both transports.
func TestErrorsUnwrapToTheirClass(t *testing.T) {
	for _, c := range errdefs.Classes() {
		for _, err := range []error{&APIError{Status: c.HTTP, Class: c.Name}, &GRPCError{Code: c.GRPC, Class: c.Name}} {
			if !errors.Is(err, c.Err) {
				t.Errorf("%T of class %s is not %v", err, c.Name, c.Err)
			}
		}
	}
	if errors.Unwrap(&APIError{Status: 418, Class: "teapot"}) != nil {
		t.Error("an unknown class unwraps to a sentinel")
	}
}
