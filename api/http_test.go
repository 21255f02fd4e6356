package api

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/datastore/journal"
	"github.com/kilnfx/kiln/errdefs"
	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// testAdminToken is the admin token of the HTTP test agents.
const testAdminToken = "kilnadm_test-admin-token-0123456789abcdef"

// httpEnv is an agent over a real SQLite store, a real usage journal and
// the fake driver, served by an HTTPServer on a TCP loopback port that
// requires the admin token. It has the function "echo" deployed.
type httpEnv struct {
	agent    *agent.Agent
	dir      string
	url      string
	ingester *datastore.Ingester
}

// testHandler is the functions' handler; the body picks what it does.
func testHandler(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	switch string(req.Body) {
	case "fail":
		return &sdk.Response{Status: http.StatusServiceUnavailable, Body: []byte("it failed")}, errors.New("nope")
	case "fail silently":
		return nil, errors.New("nope")
	case "sleep":
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // lose the race with the agent's own timer
		return nil, ctx.Err()
	case "headers":
		h := http.Header{}
		h.Set("X-Out", "out")
		h.Set("X-Kiln-Spoof", "no")
		return &sdk.Response{Status: http.StatusCreated, Header: h,
			Body: []byte(req.Method + " " + req.Path + "?" + req.Query + " " + req.Header.Get("X-In"))}, nil
	}
	return &sdk.Response{Body: append([]byte("echo:"), req.Body...)}, nil
}

// newHTTPEnv starts an agent and its HTTP server with opts after the admin
// token and a metrics handler.
func newHTTPEnv(t *testing.T, opts ...HTTPOption) *httpEnv {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kh") // short: sockets live below it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	store, err := datastore.Open(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(filepath.Join(dir, "usage"), journal.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	in, err := datastore.NewIngester(store, j, datastore.WithIngestLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(fake.New(testHandler), filepath.Join(dir, "run"), pool.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(ctx, store, p, dir, agent.WithMaxBodyBytes(testMaxBody), agent.WithLogger(quiet),
		agent.WithUsageSink(j), agent.WithNode("node-1"))
	if err != nil {
		t.Fatal(err)
	}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "kiln_test_metric 1\n") })
	srv := NewHTTPServer(a, append([]HTTPOption{WithHTTPLogger(quiet), WithAdminToken(testAdminToken, true), WithMetricsHandler(metrics)}, opts...)...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-served
		a.Close(context.Background())
		j.Close()
		store.Close()
	})
	e := &httpEnv{agent: a, dir: dir, url: "http://" + ln.Addr().String(), ingester: in}
	spec := &kilnv1.FunctionSpec{Runtime: "go", Code: testArchive(t, false), Concurrency: 16}
	if _, err := a.Deploy(ctx, "echo", spec); err != nil {
		t.Fatal(err)
	}
	return e
}

// testArchive returns a code archive whose handler is a file that starts
// like an ELF executable (all the fake driver needs), gzip-compressed or
// not, with a file of each name in extra holding its name.
func testArchive(t *testing.T, gz bool, extra ...string) []byte {
	t.Helper()
	body := append([]byte("\x7fELF"), bytes.Repeat([]byte{0}, 60)...)
	var b bytes.Buffer
	var w io.Writer = &b
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&b)
		w = zw
	}
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: "handler", Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	for _, name := range extra {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(name)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, name)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// answer is an HTTP answer, its body read.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with token as its bearer credential ("" for none) and
// header lines "Key: value".
func (e *httpEnv) do(t *testing.T, method, path, token string, body []byte, header ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Add(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

// admin sends a request with the admin token.
func (e *httpEnv) admin(t *testing.T, method, path string, body []byte) answer {
	t.Helper()
	return e.do(t, method, path, testAdminToken, body)
}

// ingest moves every usage record of the journal into the store.
func (e *httpEnv) ingest(t *testing.T) {
	t.Helper()
	if _, err := e.ingester.IngestAll(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// apiError decodes an error answer and checks it is kiln's: a kiln.v1.Error
// body whose class is also in X-Kiln-Error.
func apiError(t *testing.T, a answer) *kilnv1.Error {
	t.Helper()
	var e kilnv1.Error
	if err := protojson.Unmarshal(a.body, &e); err != nil {
		t.Fatalf("error answer %d is not a kiln.v1.Error: %v: %q", a.status, err, a.body)
	}
	if got := a.header.Get(wire.HeaderError); got != e.Class {
		t.Errorf("X-Kiln-Error %q, body's class %q", got, e.Class)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer's Content-Type %q", ct)
	}
	return &e
}

// message decodes a successful JSON answer into m.
func message(t *testing.T, a answer, m proto.Message) {
	t.Helper()
	if a.status < 200 || a.status > 299 {
		t.Fatalf("answer %d %s", a.status, a.body)
	}
	if err := protojson.Unmarshal(a.body, m); err != nil {
		t.Fatalf("answer is not a %T: %v: %s", m, err, a.body)
	}
}

// TestHTTPRoutes checks where each path goes, for the admin.
func TestHTTPRoutes(t *testing.T) {
	e := newHTTPEnv(t)
	for _, tt := range []struct {
		method, path string
		body         string
		status       int
		want         string // in the body: the answer, or the error's message
	}{
		{"POST", "/invoke/echo", "hi", 200, "echo:hi"},
		{"POST", "/invoke/echo/sub/path?x=1&y=2", "headers", 201, "POST /sub/path?x=1&y=2 in"},
		{"PUT", "/invoke/echo", "headers", 201, "PUT /? in"},
		{"DELETE", "/invoke/echo/", "headers", 201, "DELETE /? in"},
		{"GET", "/function/echo/of/faas?q", "", 200, "echo:"},
		{"POST", "/function/echo", "openfaas", 200, "echo:openfaas"},
		{"POST", "/invoke/nope", "", 404, "nope"},
		{"POST", "/invoke/", "", 400, "name"},
		{"GET", "/v1/functions", "", 200, `"name":"echo"`},
		{"GET", "/v1/functions/", "", 200, `"name":"echo"`},
		{"GET", "/v1/functions/echo", "", 200, `"revision"`},
		{"GET", "/v1/functions/nope", "", 404, "nope"},
		{"GET", "/v1/functions/Bad_Name", "", 400, "name"},
		{"GET", "/v1/functions/echo/containers", "", 200, `"containers"`},
		{"GET", "/v1/functions/nope/containers", "", 404, "nope"},
		{"GET", "/v1/functions/echo/logs?tail=0", "", 200, ""},
		{"GET", "/v1/functions/echo/logs?tail=x", "", 400, "tail"},
		{"GET", "/v1/functions/echo/logs?follow=yes", "", 400, "follow"},
		{"GET", "/v1/functions/echo/other", "", 404, "no route"},
		{"GET", "/v1/functions/a/b/containers", "", 404, "no route"},
		{"GET", "/v1/functionsx", "", 404, "no route"},
		{"GET", "/v1/keys", "", 200, `"keys"`},
		{"GET", "/v1/keysx", "", 404, "no route"},
		{"DELETE", "/v1/keys/key-nope", "", 404, "key-nope"},
		{"DELETE", "/v1/keys/a/b", "", 404, "no route"},
		{"GET", "/v1/usage", "", 200, `"rows"`},
		{"GET", "/v1/usage/", "", 200, `"rows"`},
		{"GET", "/v1/usagex", "", 404, "no route"},
		{"GET", "/v1/usage/x", "", 404, "no route"},
		{"GET", "/v1/calls", "", 200, `"calls"`},
		{"GET", "/v1/calls/nope", "", 404, "nope"},
		{"GET", "/v1/callsx", "", 404, "no route"},
		// The fake driver keeps no images.
		{"GET", "/v1/images", "", 400, "keeps no images"},
		{"POST", "/v1/images", "archive", 400, "keeps no images"},
		{"POST", "/v1/images", "", 400, "image archive"},
		{"DELETE", "/v1/images/docker.io/library/hello:1", "", 400, "keeps no images"},
		{"DELETE", "/v1/images/", "", 405, "method not allowed"},
		{"GET", "/v1/imagesx", "", 404, "no route"},
		{"GET", "/metrics", "", 200, "kiln_test_metric 1"},
		{"GET", "/healthz", "", 200, "ok\n"},
		{"GET", "/readyz", "", 200, "ok\n"},
		{"GET", "/", "", 404, "no route for /"},
		{"GET", "/nowhere", "", 404, "no route for /nowhere"},
		{"GET", "/v2/functions", "", 404, "no route"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			a := e.do(t, tt.method, tt.path, testAdminToken, []byte(tt.body), "X-In: in")
			if a.status != tt.status {
				t.Fatalf("status %d (%s), want %d", a.status, a.body, tt.status)
			}
			got := string(a.body)
			if a.status >= 400 {
				got = apiError(t, a).Error
			}
			if !strings.Contains(strings.ReplaceAll(got, " ", ""), strings.ReplaceAll(tt.want, " ", "")) {
				t.Errorf("body %q does not hold %q", got, tt.want)
			}
		})
	}
}

// TestHTTPInvokeAnswer checks what an invocation's answer carries besides
// the function's body: kiln's headers, and none the function may not set.
func TestHTTPInvokeAnswer(t *testing.T) {
	e := newHTTPEnv(t)
	a := e.do(t, "POST", "/invoke/echo", "", []byte("headers"))
	if a.status != 201 || a.header.Get("X-Out") != "out" || a.header.Get("X-Kiln-Spoof") != "" {
		t.Errorf("answer %d %v", a.status, a.header)
	}
	id := a.header.Get(wire.HeaderCallID)
	if len(id) != 36 {
		t.Errorf("%s %q is not a call id", wire.HeaderCallID, id)
	}
	if s := a.header.Get(wire.HeaderStart); !slices.Contains([]string{wire.StartWarm, wire.StartThawed, wire.StartStem, wire.StartCold}, s) {
		t.Errorf("%s %q", wire.HeaderStart, s)
	}
	if a.header.Get(wire.HeaderError) != "" {
		t.Errorf("a good answer carries %s %q", wire.HeaderError, a.header.Get(wire.HeaderError))
	}
	// A refused call gets a call id, no start.
	a = e.do(t, "POST", "/invoke/nope", "", nil)
	if a.header.Get(wire.HeaderCallID) == "" || a.header.Get(wire.HeaderStart) != "" {
		t.Errorf("refused call's headers %v", a.header)
	}
	// A body over the limit is refused with 413, and metered.
	a = e.do(t, "POST", "/invoke/echo", "", bytes.Repeat([]byte("x"), testMaxBody+1))
	if a.status != 413 || apiError(t, a).Class != wire.ClassPayloadTooLarge || a.header.Get(wire.HeaderCallID) == "" {
		t.Errorf("too large a body: %d %v %s", a.status, a.header, a.body)
	}
}

// TestHTTPFunctionErrors checks that a function's failure is its answer,
// marked function_error, and not one of kiln's errors.
func TestHTTPFunctionErrors(t *testing.T) {
	e := newHTTPEnv(t)
	a := e.do(t, "POST", "/invoke/echo", "", []byte("fail"))
	if a.status != 503 || string(a.body) != "it failed" || a.header.Get(wire.HeaderError) != wire.ClassFunctionError {
		t.Errorf("failed call with a body: %d %v %q", a.status, a.header, a.body)
	}
	if a.header.Get("Retry-After") != "" {
		t.Error("a function's failure has Retry-After")
	}
	// Without a body of its own, kiln writes the error.
	a = e.do(t, "POST", "/invoke/echo", "", []byte("fail silently"))
	if a.status != 500 {
		t.Fatalf("failed call without a body: %d %s", a.status, a.body)
	}
	if e := apiError(t, a); e.Class != wire.ClassFunctionError || !strings.Contains(e.Error, "nope") {
		t.Errorf("failed call without a body: %v", e)
	}
	// A call past its function's timeout is kiln's error.
	spec := &kilnv1.FunctionSpec{Runtime: "go", Code: testArchive(t, false)}
	spec.Timeout = durationpb.New(50 * time.Millisecond)
	if _, err := e.agent.Deploy(context.Background(), "slow", spec); err != nil {
		t.Fatal(err)
	}
	a = e.do(t, "POST", "/invoke/slow", "", []byte("sleep"))
	if a.status != 504 || apiError(t, a).Class != wire.ClassDeadlineExceeded {
		t.Errorf("call past its timeout: %d %s", a.status, a.body)
	}
}

// TestHTTPWriteError checks the answer of every error class: its status,
// X-Kiln-Error, a kiln.v1.Error body, and Retry-After exactly on the classes
// worth retrying.
func TestHTTPWriteError(t *testing.T) {
	s := &HTTPServer{log: slog.New(slog.DiscardHandler)}
	retry := map[string]bool{wire.ClassResourceExhausted: true, wire.ClassUnavailable: true, wire.ClassInsufficientStorage: true}
	cases := []struct {
		err    error
		status int
		class  string
	}{{errors.New("boom"), 500, wire.ClassInternal}}
	for _, c := range errdefs.Classes() {
		if c.Err == errdefs.ErrInternal || c.Err == errdefs.ErrFunction {
			continue
		}
		cases = append(cases, struct {
			err    error
			status int
			class  string
		}{fmt.Errorf("%w: details", c.Err), c.HTTP, c.Name})
	}
	for _, tt := range cases {
		t.Run(tt.class, func(t *testing.T) {
			var ctx fasthttp.RequestCtx
			s.writeError(&ctx, tt.err)
			r := &ctx.Response
			if r.StatusCode() != tt.status || string(r.Header.Peek(wire.HeaderError)) != tt.class {
				t.Errorf("status %d, %s %q; want %d %s", r.StatusCode(), wire.HeaderError, r.Header.Peek(wire.HeaderError), tt.status, tt.class)
			}
			if got := string(r.Header.Peek("Retry-After")); (got != "") != retry[tt.class] || (got != "" && got != "1") {
				t.Errorf("Retry-After %q", got)
			}
			var e kilnv1.Error
			if err := protojson.Unmarshal(r.Body(), &e); err != nil || e.Class != tt.class || e.Error != tt.err.Error() {
				t.Errorf("body %q (%v)", r.Body(), err)
			}
			if ct := string(r.Header.ContentType()); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}

// TestHTTPMethods checks that each route refuses the methods it does not
// serve with 405, an Allow header and a JSON error.
func TestHTTPMethods(t *testing.T) {
	e := newHTTPEnv(t)
	for _, tt := range []struct{ method, path, allow string }{
		{"POST", "/v1/functions", "GET"},
		{"DELETE", "/v1/functions/", "GET"},
		{"POST", "/v1/functions/echo", "GET, PUT, DELETE"},
		{"PATCH", "/v1/functions/echo", "GET, PUT, DELETE"},
		{"DELETE", "/v1/functions/echo/containers", "GET"},
		{"POST", "/v1/functions/echo/logs", "GET"},
		{"PUT", "/v1/keys", "GET, POST, DELETE"},
		{"GET", "/v1/keys/key-1", "GET, POST, DELETE"},
		{"POST", "/v1/usage", "GET"},
		{"DELETE", "/v1/calls", "GET"},
		{"POST", "/v1/calls/some-id", "GET"},
		{"PUT", "/v1/images", "GET, POST"},
		{"GET", "/v1/images/hello:1", "DELETE"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			a := e.admin(t, tt.method, tt.path, nil)
			if a.status != 405 || a.header.Get("Allow") != tt.allow {
				t.Errorf("%d, Allow %q; want 405, Allow %q", a.status, a.header.Get("Allow"), tt.allow)
			}
			if e := apiError(t, a); e.Class != wire.ClassInvalidArgument {
				t.Errorf("error %v", e)
			}
		})
	}
}

// TestHTTPAuth checks who may do what with the admin token required.
func TestHTTPAuth(t *testing.T) {
	e := newHTTPEnv(t)
	ctx := context.Background()
	acme, _, err := e.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	globex, _, err := e.agent.CreateKey(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	unauthenticated := func(t *testing.T, a answer, mention string) {
		t.Helper()
		if a.status != 401 {
			t.Fatalf("status %d (%s), want 401", a.status, a.body)
		}
		if e := apiError(t, a); e.Class != wire.ClassUnauthenticated || !strings.Contains(e.Error, mention) {
			t.Errorf("error %v, want unauthenticated naming %q", e, mention)
		}
	}
	tokenFile := filepath.Join(e.dir, agent.AdminTokenFile)
	management := []struct{ method, path string }{
		{"GET", "/v1/functions"}, {"GET", "/v1/functions/echo"}, {"DELETE", "/v1/functions/echo"},
		{"PUT", "/v1/functions/echo"}, {"GET", "/v1/functions/echo/containers"}, {"GET", "/v1/functions/echo/logs"},
		{"GET", "/v1/keys"}, {"POST", "/v1/keys"}, {"DELETE", "/v1/keys/key-1"},
		{"GET", "/v1/images"}, {"POST", "/v1/images"}, {"DELETE", "/v1/images/hello:1"},
	}
	for _, m := range management {
		t.Run("no token "+m.method+" "+m.path, func(t *testing.T) {
			unauthenticated(t, e.do(t, m.method, m.path, "", nil), tokenFile)
		})
		t.Run("tenant key "+m.method+" "+m.path, func(t *testing.T) {
			unauthenticated(t, e.do(t, m.method, m.path, acme, nil), "admin token")
		})
		t.Run("wrong token "+m.method+" "+m.path, func(t *testing.T) {
			unauthenticated(t, e.do(t, m.method, m.path, "kiln_wrong", nil), "")
		})
	}
	for _, path := range []string{"/v1/usage", "/v1/calls", "/v1/calls/some-id"} {
		unauthenticated(t, e.do(t, "GET", path, "", nil), tokenFile)
	}
	if a := e.admin(t, "GET", "/v1/functions", nil); a.status != 200 {
		t.Errorf("admin: %d %s", a.status, a.body)
	}
	// Health and metrics need no token.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if a := e.do(t, "GET", path, "", nil); a.status != 200 {
			t.Errorf("%s without a token: %d", path, a.status)
		}
	}

	// Calls: each tenant's key bills its tenant, the admin token is no
	// tenant's.
	for _, tok := range []string{acme, acme, globex, testAdminToken, ""} {
		if a := e.do(t, "POST", "/invoke/echo", tok, []byte("x")); a.status != 200 {
			t.Fatalf("call: %d %s", a.status, a.body)
		}
	}
	e.ingest(t)
	var rep kilnv1.ReportResponse
	message(t, e.do(t, "GET", "/v1/usage?group_by=tenant", acme, nil), &rep)
	if len(rep.Rows) != 1 || rep.Rows[0].Group != "acme" || rep.Rows[0].Count != 2 {
		t.Errorf("acme's own usage: %v", &rep)
	}
	message(t, e.do(t, "GET", "/v1/usage?group_by=tenant&tenant=acme", acme, nil), &rep)
	if len(rep.Rows) != 1 || rep.Rows[0].Count != 2 {
		t.Errorf("acme's usage naming acme: %v", &rep)
	}
	message(t, e.admin(t, "GET", "/v1/usage?group_by=tenant", nil), &rep)
	if len(rep.Rows) != 3 {
		t.Errorf("the admin's usage by tenant: %v", &rep)
	}
	unauthenticated(t, e.do(t, "GET", "/v1/usage?tenant=globex", acme, nil), "own usage")
	unauthenticated(t, e.do(t, "GET", "/v1/calls?tenant=globex", acme, nil), "own usage and calls")
	var calls kilnv1.CallList
	message(t, e.do(t, "GET", "/v1/calls", globex, nil), &calls)
	if len(calls.Calls) != 1 || calls.Calls[0].GetTenant() != "globex" {
		t.Fatalf("globex's calls: %v", &calls)
	}
	// Another tenant's call is not found, as an unknown one.
	id := calls.Calls[0].CallId
	if a := e.do(t, "GET", "/v1/calls/"+id, acme, nil); a.status != 404 || apiError(t, a).Class != wire.ClassNotFound {
		t.Errorf("acme reading globex's call: %d %s", a.status, a.body)
	}
	if a := e.do(t, "GET", "/v1/calls/"+id, globex, nil); a.status != 200 {
		t.Errorf("globex reading its call: %d %s", a.status, a.body)
	}
	// A revoked key is refused.
	var keys kilnv1.ApiKeyList
	message(t, e.admin(t, "GET", "/v1/keys", nil), &keys)
	for _, k := range keys.Keys {
		if k.Tenant == "acme" {
			if a := e.admin(t, "DELETE", "/v1/keys/"+k.Id, nil); a.status != 204 {
				t.Fatalf("revoke: %d %s", a.status, a.body)
			}
		}
	}
	unauthenticated(t, e.do(t, "GET", "/v1/usage", acme, nil), "")
}

// TestHTTPRequireKey checks the calls of a function that needs a key.
func TestHTTPRequireKey(t *testing.T) {
	e := newHTTPEnv(t)
	ctx := context.Background()
	key, _, err := e.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Deploy(ctx, "private", &kilnv1.FunctionSpec{Runtime: "go", Code: testArchive(t, false), RequireKey: true}); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"", testAdminToken, "kiln_wrong"} {
		if a := e.do(t, "POST", "/invoke/private", tok, nil); a.status != 401 || apiError(t, a).Class != wire.ClassUnauthenticated {
			t.Errorf("call with %q: %d %s", tok, a.status, a.body)
		}
	}
	if a := e.do(t, "POST", "/invoke/private", key, []byte("k")); a.status != 200 || string(a.body) != "echo:k" {
		t.Errorf("call with a key: %d %s", a.status, a.body)
	}
}

// TestHTTPAuthOptional checks that without a required token a request with
// none is the admin's.
func TestHTTPAuthOptional(t *testing.T) {
	e := newHTTPEnv(t, WithAdminToken(testAdminToken, false))
	for _, path := range []string{"/v1/functions", "/v1/keys", "/v1/usage", "/v1/calls"} {
		if a := e.do(t, "GET", path, "", nil); a.status != 200 {
			t.Errorf("%s without a token: %d %s", path, a.status, a.body)
		}
	}
	if a := e.do(t, "GET", "/v1/functions", "kiln_wrong", nil); a.status != 401 {
		t.Errorf("a wrong token: %d", a.status)
	}
}

// Field names of the usage API's JSON, in order: the contract README
// documents and clients parse.
var (
	callFields = []string{"call_id", "function", "revision", "tenant", "trigger", "received_at", "queue_wait_ms", "start",
		"init_ms", "run_ms", "total_ms", "cpu_user_ms", "cpu_system_ms", "memory_peak_bytes", "memory_limit_bytes", "shared",
		"bytes_in", "bytes_out", "status", "error_class", "container_id", "node", "gb_seconds", "cpu_seconds"}
	rowFields = []string{"group", "time", "count", "by_status", "by_start", "run_sum_ms", "run_p50_ms", "run_p99_ms",
		"queue_sum_ms", "gb_seconds", "cpu_seconds", "bytes_in", "bytes_out"}
)

// jsonKeys returns the keys of the JSON object b, in order.
func jsonKeys(t *testing.T, b []byte) []string {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", b)
	}
	var keys []string
	for d.More() {
		k, err := d.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(string))
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// without returns names without those in drop, in order.
func without(names []string, drop ...string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return slices.Contains(drop, n) })
}

// TestHTTPUsage checks the usage report and call records a few calls make,
// as JSON and CSV: every field, in the names the API has always used.
func TestHTTPUsage(t *testing.T) {
	e := newHTTPEnv(t)
	key, _, err := e.agent.CreateKey(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if a := e.do(t, "POST", "/invoke/echo", key, []byte("abc")); a.status != 200 {
			t.Fatal(a.status)
		}
	}
	if a := e.do(t, "POST", "/invoke/echo", "", []byte("fail")); a.status != 503 {
		t.Fatal(a.status)
	}
	refused := e.do(t, "POST", "/invoke/nope", "", nil).header.Get(wire.HeaderCallID)
	e.ingest(t)

	// One row without grouping, every count present, zero or not.
	a := e.admin(t, "GET", "/v1/usage", nil)
	var all kilnv1.ReportResponse
	message(t, a, &all)
	if len(all.Rows) != 1 {
		t.Fatalf("report: %v", &all)
	}
	r := all.Rows[0]
	wantStatus := map[string]int64{wire.Status2xx: 3, wire.Status3xx: 0, wire.Status4xx: 1, wire.Status5xx: 1, wire.StatusOther: 0}
	if r.Count != 5 || !equalCounts(r.ByStatus, wantStatus) || r.ByStart[wire.StartNone] != 1 ||
		r.BytesIn != 3*3+4 || r.BytesOut != 3*int64(len("echo:abc"))+int64(len("it failed")) || r.RunSumMs <= 0 || r.GbSeconds <= 0 {
		t.Errorf("report row: %v", r)
	}
	if len(r.ByStart) != 5 {
		t.Errorf("by_start %v lacks keys", r.ByStart)
	}
	var raw struct {
		GroupBy *string `json:"group_by"`
		Rows    []json.RawMessage
	}
	if err := json.Unmarshal(a.body, &raw); err != nil || raw.GroupBy == nil || *raw.GroupBy != "" || len(raw.Rows) != 1 {
		t.Fatalf("report JSON %s: %v", a.body, err)
	}
	if got := jsonKeys(t, raw.Rows[0]); !slices.Equal(got, without(rowFields, "time")) {
		t.Errorf("report row fields %v, want %v", got, without(rowFields, "time"))
	}

	// Time groupings have the bucket's time.
	a = e.admin(t, "GET", "/v1/usage?group_by=hour&format=json", nil)
	var byHour kilnv1.ReportResponse
	message(t, a, &byHour)
	if byHour.GroupBy != "hour" || len(byHour.Rows) != 1 || byHour.Rows[0].Time == nil ||
		byHour.Rows[0].Group != byHour.Rows[0].Time.AsTime().Format(time.RFC3339) {
		t.Errorf("report by hour: %v", &byHour)
	}
	if err := json.Unmarshal(a.body, &raw); err != nil || !slices.Equal(jsonKeys(t, raw.Rows[0]), rowFields) {
		t.Errorf("report row by hour: %s", a.body)
	}

	// CSV: the same figures.
	a = e.admin(t, "GET", "/v1/usage?group_by=function&format=csv", nil)
	if a.status != 200 || a.header.Get("Content-Type") != "text/csv; charset=utf-8" {
		t.Fatalf("csv: %d %v", a.status, a.header)
	}
	lines, err := csv.NewReader(bytes.NewReader(a.body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	wantHeader := []string{"group", "count", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "status_other",
		"warm", "thawed", "stem", "cold", "no_container", "run_sum_ms", "run_p50_ms", "run_p99_ms", "queue_sum_ms",
		"gb_seconds", "cpu_seconds", "bytes_in", "bytes_out"}
	if len(lines) != 3 || !slices.Equal(lines[0], wantHeader) {
		t.Fatalf("csv %q", a.body)
	}
	if echo := lines[1]; echo[0] != "echo" || echo[1] != "4" || echo[2] != "3" || echo[5] != "1" || echo[18] != "13" {
		t.Errorf("csv row of echo %v", echo)
	}
	if nope := lines[2]; nope[0] != "nope" || nope[1] != "1" || nope[4] != "1" || nope[11] != "1" {
		t.Errorf("csv row of nope %v", nope)
	}

	// Calls, newest first, with every field but the optional ones a call
	// lacked.
	a = e.admin(t, "GET", "/v1/calls?function=echo", nil)
	var list kilnv1.CallList
	message(t, a, &list)
	if len(list.Calls) != 4 || list.Calls[0].Status != 503 || list.Calls[0].GetErrorClass() != wire.ClassFunctionError {
		t.Fatalf("calls: %v", &list)
	}
	var rawList struct{ Calls []json.RawMessage }
	if err := json.Unmarshal(a.body, &rawList); err != nil {
		t.Fatal(err)
	}
	if got, want := jsonKeys(t, rawList.Calls[0]), without(callFields, "tenant"); !slices.Equal(got, want) {
		t.Errorf("failed call's fields %v, want %v", got, want)
	}
	if got, want := jsonKeys(t, rawList.Calls[1]), without(callFields, "error_class"); !slices.Equal(got, want) {
		t.Errorf("good call's fields %v, want %v", got, want)
	}
	good := list.Calls[1]
	if good.GetTenant() != "acme" || good.Function != "echo" || good.Trigger != "http" || good.Node != "node-1" ||
		good.Status != 200 || good.BytesIn != 3 || good.GetContainerId() == "" || good.GetRevision() == "" || good.RunMs <= 0 {
		t.Errorf("good call %v", good)
	}
	message(t, e.admin(t, "GET", "/v1/calls?limit=2&tenant=acme", nil), &list)
	if len(list.Calls) != 2 {
		t.Errorf("two of acme's calls: %v", &list)
	}

	// A refused call's record has no revision, start or container.
	a = e.admin(t, "GET", "/v1/calls/"+refused, nil)
	var rec kilnv1.CallRecord
	message(t, a, &rec)
	if rec.CallId != refused || rec.Status != 404 || rec.GetErrorClass() != wire.ClassNotFound {
		t.Errorf("refused call %v", &rec)
	}
	if got, want := jsonKeys(t, a.body), without(callFields, "revision", "tenant", "start", "container_id"); !slices.Equal(got, want) {
		t.Errorf("refused call's fields %v, want %v", got, want)
	}
}

// equalCounts reports whether got has exactly want's keys and values.
func equalCounts(got, want map[string]int64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if n, ok := got[k]; !ok || n != v {
			return false
		}
	}
	return true
}

// TestHTTPUsageBadParameters checks that a bad query parameter is a 400
// naming it.
func TestHTTPUsageBadParameters(t *testing.T) {
	e := newHTTPEnv(t)
	for _, tt := range []struct{ query, mention string }{
		{"/v1/usage?from=yesterday", "from"},
		{"/v1/usage?to=2026-13-01", "to"},
		{"/v1/usage?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z", "after"},
		{"/v1/usage?group_by=week", "week"},
		{"/v1/usage?format=xml", "format"},
		{"/v1/calls?limit=0", "limit"},
		{"/v1/calls?limit=10001", "limit"},
		{"/v1/calls?limit=many", "limit"},
		{"/v1/calls?since=soon", "since"},
	} {
		t.Run(tt.query, func(t *testing.T) {
			a := e.admin(t, "GET", tt.query, nil)
			if a.status != 400 {
				t.Fatalf("status %d (%s), want 400", a.status, a.body)
			}
			if e := apiError(t, a); e.Class != wire.ClassInvalidArgument || !strings.Contains(e.Error, tt.mention) {
				t.Errorf("error %v, want invalid_argument naming %q", e, tt.mention)
			}
		})
	}
	// Times are RFC 3339 or unix seconds.
	for _, q := range []string{"from=2026-03-01T10:00:00Z", "from=2026-03-01T10:00:00.5%2B01:00", "to=1772359200", "since=1772359200"} {
		path := "/v1/usage?" + q
		if strings.HasPrefix(q, "since") {
			path = "/v1/calls?" + q
		}
		if a := e.admin(t, "GET", path, nil); a.status != 200 {
			t.Errorf("%s: %d %s", path, a.status, a.body)
		}
	}
}

// TestHTTPKeys checks the keys API's messages.
func TestHTTPKeys(t *testing.T) {
	e := newHTTPEnv(t)
	a := e.admin(t, "POST", "/v1/keys", []byte(`{"tenant":"acme"}`))
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	var k kilnv1.ApiKey
	message(t, a, &k)
	if k.Tenant != "acme" || !strings.HasPrefix(k.GetKey(), "kiln_") || k.Id == "" || k.Created == nil || k.Revoked != nil {
		t.Errorf("created key %v", &k)
	}
	if got := jsonKeys(t, a.body); !slices.Equal(got, []string{"id", "tenant", "key", "created"}) {
		t.Errorf("created key's fields %v", got)
	}
	if a := e.do(t, "GET", "/v1/usage", k.GetKey(), nil); a.status != 200 {
		t.Errorf("the new key reads its usage: %d", a.status)
	}
	for _, body := range []string{``, `{`, `{"tenant":""}`, `{"tenant":7}`} {
		if a := e.admin(t, "POST", "/v1/keys", []byte(body)); a.status != 400 || apiError(t, a).Class != wire.ClassInvalidArgument {
			t.Errorf("create with %q: %d %s", body, a.status, a.body)
		}
	}
	if a := e.admin(t, "DELETE", "/v1/keys/"+k.Id, nil); a.status != 204 || len(a.body) != 0 {
		t.Fatalf("revoke: %d %s", a.status, a.body)
	}
	var list kilnv1.ApiKeyList
	a = e.admin(t, "GET", "/v1/keys", nil)
	message(t, a, &list)
	if len(list.Keys) != 1 || list.Keys[0].Id != k.Id || list.Keys[0].Key != nil || list.Keys[0].Revoked == nil {
		t.Errorf("keys %v", &list)
	}
	var rawList struct{ Keys []json.RawMessage }
	if err := json.Unmarshal(a.body, &rawList); err != nil || len(rawList.Keys) != 1 {
		t.Fatalf("keys JSON %s: %v", a.body, err)
	}
	if got := jsonKeys(t, rawList.Keys[0]); !slices.Equal(got, []string{"id", "tenant", "created", "revoked"}) {
		t.Errorf("listed key's fields %v", got)
	}
	if bytes.Contains(a.body, []byte(k.GetKey())) {
		t.Error("the listing shows the secret")
	}
}

// TestHTTPDeploy deploys with a code archive over HTTP, and checks the
// refusals.
func TestHTTPDeploy(t *testing.T) {
	e := newHTTPEnv(t)
	spec := func(fields string) []byte { return []byte(`{"runtime":"go"` + fields + `}`) }
	code := func(b []byte) string { return `,"code":"` + base64.StdEncoding.EncodeToString(b) + `"` }

	a := e.admin(t, "PUT", "/v1/functions/fresh", spec(code(testArchive(t, true))+`,"memory_mb":64,"timeout":"5s"`))
	var fn kilnv1.Function
	message(t, a, &fn)
	if fn.Name != "fresh" || fn.Revision == "" || fn.Spec.GetMemoryMb() != 64 || fn.Spec.GetTimeout().AsDuration() != 5*time.Second {
		t.Errorf("deployed %v", &fn)
	}
	if len(fn.Spec.GetCode()) != 0 || bytes.Contains(a.body, []byte(`"code"`)) {
		t.Error("the answer shows the code")
	}
	if a := e.do(t, "POST", "/invoke/fresh", "", []byte("hi")); a.status != 200 || string(a.body) != "echo:hi" {
		t.Errorf("call of the deployed function: %d %s", a.status, a.body)
	}
	// Without code a deploy keeps the code, and changes the settings.
	var again kilnv1.Function
	message(t, e.admin(t, "PUT", "/v1/functions/fresh", spec(`,"memory_mb":96`)), &again)
	if again.Revision != fn.Revision || again.Spec.GetMemoryMb() != 96 {
		t.Errorf("redeployed without code %v, want revision %s", &again, fn.Revision)
	}
	// The same files are the same revision, gzip-compressed or not; new
	// code is a new revision.
	message(t, e.admin(t, "PUT", "/v1/functions/fresh", spec(code(testArchive(t, false)))), &again)
	if again.Revision != fn.Revision {
		t.Error("the same code uncompressed changed the revision")
	}
	other := testArchive(t, false, "data.txt")
	message(t, e.admin(t, "PUT", "/v1/functions/fresh", spec(code(other))), &again)
	if again.Revision == fn.Revision {
		t.Error("new code kept the revision")
	}

	notELF := func() []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		tw.WriteHeader(&tar.Header{Name: "handler", Mode: 0o755, Size: 5, Typeflag: tar.TypeReg})
		tw.Write([]byte("#!/sh"))
		tw.Close()
		return b.Bytes()
	}()
	for _, tt := range []struct{ name, body, mention string }{
		{"no code for a new function", string(spec("")), "code"},
		{"a host path as code", `{"runtime":"go","code":"/etc","handler":"init.d/procps"}`, "code"},
		{"a path that is no base64", `{"runtime":"go","code":"/no/such/file"}`, "code"},
		{"code that is no archive", string(spec(code([]byte("just bytes")))), "code"},
		{"a handler that is no ELF binary", string(spec(code(notELF))), "ELF"},
		{"spec not JSON", `{`, "spec"},
		{"unknown field", string(spec(`,"colour":"red"`)), "colour"},
		{"wrong type", string(spec(`,"memory_mb":"lots"`)), "memory_mb"},
		{"unknown runtime", `{"runtime":"cobol"` + code(testArchive(t, false)) + `}`, "runtime"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := e.admin(t, "PUT", "/v1/functions/refused", []byte(tt.body))
			if a.status != 400 {
				t.Fatalf("status %d (%s), want 400", a.status, a.body)
			}
			if e := apiError(t, a); e.Class != wire.ClassInvalidArgument || !strings.Contains(e.Error, tt.mention) {
				t.Errorf("error %v, want invalid_argument naming %q", e, tt.mention)
			}
		})
	}
	if a := e.admin(t, "GET", "/v1/functions/refused", nil); a.status != 404 {
		t.Errorf("a refused deploy was stored: %d %s", a.status, a.body)
	}

	if a := e.admin(t, "DELETE", "/v1/functions/fresh", nil); a.status != 204 {
		t.Fatalf("delete: %d %s", a.status, a.body)
	}
	if a := e.admin(t, "GET", "/v1/functions/fresh", nil); a.status != 404 {
		t.Errorf("get after delete: %d", a.status)
	}
	if a := e.do(t, "POST", "/invoke/fresh", "", nil); a.status != 404 {
		t.Errorf("call after delete: %d", a.status)
	}
}
