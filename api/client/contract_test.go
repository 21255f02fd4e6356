package client_test

// The contract tests: the client against kiln's real servers (api.HTTPServer
// and api.GRPCServer) in process, over loopback TCP, with a real SQLite
// store, usage journal and ingester, and the fake container driver. What
// the client sends and decodes is what the server reads and writes, not
// what a fake of it believes.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
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

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api"
	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/datastore/journal"
	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

const (
	adminToken = "kilnadm_contract-admin-token-0123456789abcdef"
	maxBody    = 4096
)

// server is a kiln agent served over HTTP and gRPC, the admin token
// required on both.
type server struct {
	agent    *agent.Agent
	ingester *datastore.Ingester
	url      string // of the HTTP API
	grpcAddr string
	code     []byte // a code archive the fake driver runs
}

// handle is the functions' handler; the body picks what it does.
func handle(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	switch string(req.Body) {
	case "teapot":
		return &sdk.Response{Status: http.StatusTeapot, Body: []byte("short and stout")}, nil
	case "fail":
		return &sdk.Response{Body: []byte("boom")}, errors.New("handler failed")
	case "fail silently":
		return nil, errors.New("handler failed")
	case "headers":
		h := http.Header{}
		h.Set("X-Handler", "headers")
		return &sdk.Response{Header: h, Body: []byte(strings.Join(req.Header.Values("X-A"), ","))}, nil
	}
	return &sdk.Response{Body: append([]byte("echo:"), req.Body...)}, nil
}

func newServer(t *testing.T) *server {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kc") // short: sockets live below it
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
	p, err := pool.New(fake.New(handle), filepath.Join(dir, "run"), pool.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(ctx, store, p, dir, agent.WithMaxBodyBytes(maxBody), agent.WithLogger(quiet),
		agent.WithUsageSink(j), agent.WithNode("node-1"))
	if err != nil {
		t.Fatal(err)
	}
	hs := api.NewHTTPServer(a, api.WithHTTPLogger(quiet), api.WithAdminToken(adminToken, true))
	gs, _ := api.NewGRPCServer(a, api.WithGRPCLogger(quiet), api.WithGRPCAdminToken(adminToken, true))
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{}, 2)
	go func() { _ = hs.Serve(hln); served <- struct{}{} }()
	go func() { _ = gs.Serve(gln); served <- struct{}{} }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		gs.Stop()
		<-served
		<-served
		a.Close(context.Background())
		j.Close()
		store.Close()
	})
	return &server{agent: a, ingester: in, url: "http://" + hln.Addr().String(), grpcAddr: gln.Addr().String(), code: archive(t)}
}

// archive returns a code archive whose handler starts like an ELF
// executable, which is all the fake driver needs.
func archive(t *testing.T) []byte {
	t.Helper()
	body := append([]byte("\x7fELF"), make([]byte, 60)...)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "handler", Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// client returns an HTTP client of s presenting token ("" for none).
func (s *server) client(t *testing.T, token string) *client.Client {
	t.Helper()
	var opts []client.Option
	if token != "" {
		opts = append(opts, client.WithToken(token))
	}
	c, err := client.New(s.url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// deploy deploys the function name running handle.
func (s *server) deploy(t *testing.T, name string, spec *kilnv1.FunctionSpec) *kilnv1.Function {
	t.Helper()
	if spec == nil {
		spec = &kilnv1.FunctionSpec{}
	}
	spec.Runtime, spec.Code = "go", s.code
	fn, err := s.client(t, adminToken).Deploy(context.Background(), name, spec)
	if err != nil {
		t.Fatal(err)
	}
	return fn
}

// ingest moves every usage record of the journal into the store.
func (s *server) ingest(t *testing.T) {
	t.Helper()
	if _, err := s.ingester.IngestAll(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// apiError returns err as an *APIError, failing the test unless it is one
// of status and class.
func apiError(t *testing.T, err error, status int, class string) *client.APIError {
	t.Helper()
	var e *client.APIError
	if !errors.As(err, &e) {
		t.Fatalf("error %v is no *APIError", err)
	}
	if e.Status != status || e.Class != class {
		t.Errorf("error %#v, want HTTP %d %s", e, status, class)
	}
	return e
}

func TestContractFunctions(t *testing.T) {
	s := newServer(t)
	c := s.client(t, adminToken)
	ctx := context.Background()

	spec := &kilnv1.FunctionSpec{Runtime: "go", Code: s.code, MemoryMb: 64, Timeout: durationpb.New(5 * time.Second), Env: map[string]string{"A": "1"}}
	fn, err := c.Deploy(ctx, "hello", spec)
	if err != nil {
		t.Fatal(err)
	}
	if fn.Name != "hello" || fn.Revision == "" || fn.Spec.GetMemoryMb() != 64 || fn.Spec.GetTimeout().AsDuration() != 5*time.Second ||
		fn.Spec.GetEnv()["A"] != "1" || len(fn.Spec.GetCode()) != 0 || fn.Created == nil || fn.Updated == nil {
		t.Errorf("Deploy = %v", fn)
	}
	got, err := c.Get(ctx, "hello")
	if err != nil || !proto.Equal(got, fn) {
		t.Errorf("Get = %v, %v; want %v", got, err, fn)
	}
	// Settings change without code; the revision stays.
	again, err := c.Deploy(ctx, "hello", &kilnv1.FunctionSpec{Runtime: "go", MemoryMb: 96})
	if err != nil || again.Revision != fn.Revision || again.Spec.GetMemoryMb() != 96 {
		t.Errorf("Deploy without code = %v, %v", again, err)
	}
	s.deploy(t, "world", nil)
	list, err := c.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "hello" || list[1].Name != "world" {
		t.Errorf("List = %v, %v", list, err)
	}

	// The function's containers and logs.
	if _, err := c.Invoke(ctx, "hello", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	cs, err := c.Containers(ctx, "hello")
	if err != nil || len(cs) != 1 || !strings.HasPrefix(cs[0].Id, "hello") || cs[0].Calls != 1 || cs[0].Created == nil {
		t.Errorf("Containers = %v, %v", cs, err)
	}
	body, err := c.Logs(ctx, "hello", 10, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(body); err != nil {
		t.Error(err)
	}
	body.Close()

	// Refusals.
	e := apiError(t, func() error { _, err := c.Deploy(ctx, "fresh", &kilnv1.FunctionSpec{Runtime: "go"}); return err }(), 400, wire.ClassInvalidArgument)
	if !strings.Contains(e.Message, "code") {
		t.Errorf("Deploy without code of a new function: %v", e)
	}
	apiError(t, func() error {
		_, err := c.Deploy(ctx, "fresh", &kilnv1.FunctionSpec{Runtime: "cobol", Code: s.code})
		return err
	}(), 400, wire.ClassInvalidArgument)
	apiError(t, func() error {
		_, err := c.Deploy(ctx, "fresh", &kilnv1.FunctionSpec{Runtime: "go", Code: []byte("no archive")})
		return err
	}(), 400, wire.ClassInvalidArgument)
	for _, call := range []func() error{
		func() error { _, err := c.Containers(ctx, "nope"); return err },
		func() error { _, err := c.Logs(ctx, "nope", 0, false); return err },
		func() error { _, err := c.Get(ctx, "nope"); return err },
		func() error { return c.Delete(ctx, "nope") },
	} {
		if e := apiError(t, call(), 404, wire.ClassNotFound); !strings.Contains(e.Message, "nope") {
			t.Errorf("message %q does not name the function", e.Message)
		}
	}

	if err := c.Delete(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(ctx, "hello")
	apiError(t, err, 404, wire.ClassNotFound)
}

func TestContractInvoke(t *testing.T) {
	s := newServer(t)
	s.deploy(t, "echo", nil)
	s.deploy(t, "private", &kilnv1.FunctionSpec{RequireKey: true})
	c := s.client(t, "")
	ctx := context.Background()

	res, err := c.Invoke(ctx, "echo", []byte("hi"), nil)
	if err != nil || res.Status != 200 || string(res.Body) != "echo:hi" || res.FunctionError {
		t.Fatalf("Invoke = %+v, %v", res, err)
	}
	if res.Header.Get(wire.HeaderCallID) == "" || res.Header.Get(wire.HeaderStart) == "" {
		t.Errorf("answer headers %v", res.Header)
	}
	res, err = c.Invoke(ctx, "echo", []byte("headers"), http.Header{"X-A": {"1", "2"}})
	if err != nil || string(res.Body) != "1,2" || res.Header.Get("X-Handler") != "headers" {
		t.Errorf("Invoke with headers = %+v, %v", res, err)
	}
	// A function's own status, and its failure, are answers.
	res, err = c.Invoke(ctx, "echo", []byte("teapot"), nil)
	if err != nil || res.Status != http.StatusTeapot || res.FunctionError || string(res.Body) != "short and stout" {
		t.Errorf("Invoke of a teapot = %+v, %v", res, err)
	}
	res, err = c.Invoke(ctx, "echo", []byte("fail"), nil)
	if err != nil || res.Status != 500 || !res.FunctionError || string(res.Body) != "boom" {
		t.Errorf("Invoke that fails = %+v, %v", res, err)
	}
	res, err = c.Invoke(ctx, "echo", []byte("fail silently"), nil)
	if err != nil || res.Status != 500 || !res.FunctionError || !bytes.Contains(res.Body, []byte("handler failed")) {
		t.Errorf("Invoke that fails without a body = %+v, %v", res, err)
	}
	// kiln's own refusals are errors.
	_, err = c.Invoke(ctx, "missing", nil, nil)
	if e := apiError(t, err, 404, wire.ClassNotFound); !strings.Contains(e.Error(), "(not_found, HTTP 404)") {
		t.Errorf("Error() = %q", e.Error())
	}
	_, err = c.Invoke(ctx, "echo", bytes.Repeat([]byte("x"), maxBody+1), nil)
	apiError(t, err, 413, wire.ClassPayloadTooLarge)
	_, err = c.Invoke(ctx, "private", nil, nil)
	apiError(t, err, 401, wire.ClassUnauthenticated)
	key, _, err := s.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := s.client(t, key).Invoke(ctx, "private", []byte("k"), nil); err != nil || string(res.Body) != "echo:k" {
		t.Errorf("Invoke with a key = %+v, %v", res, err)
	}
}

func TestContractKeys(t *testing.T) {
	s := newServer(t)
	c := s.client(t, adminToken)
	ctx := context.Background()
	k, err := c.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if k.Tenant != "acme" || k.Id == "" || !strings.HasPrefix(k.GetKey(), "kiln_") || k.Created == nil || k.Revoked != nil {
		t.Errorf("CreateKey = %v", k)
	}
	if _, err := s.client(t, k.GetKey()).Usage(ctx, client.UsageQuery{}); err != nil {
		t.Errorf("the new key reads its usage: %v", err)
	}
	keys, err := c.ListKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Id != k.Id || keys[0].Key != nil || keys[0].Revoked != nil {
		t.Errorf("ListKeys = %v, %v", keys, err)
	}
	if err := c.RevokeKey(ctx, k.Id); err != nil {
		t.Fatal(err)
	}
	keys, err = c.ListKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Revoked == nil {
		t.Errorf("ListKeys after the revocation = %v, %v", keys, err)
	}
	apiError(t, c.RevokeKey(ctx, "key-nope"), 404, wire.ClassNotFound)
	_, err = s.client(t, k.GetKey()).Usage(ctx, client.UsageQuery{})
	apiError(t, err, 401, wire.ClassUnauthenticated)
}

func TestContractUsage(t *testing.T) {
	s := newServer(t)
	s.deploy(t, "hello", nil)
	ctx := context.Background()
	admin := s.client(t, adminToken)
	acmeKey, _, err := s.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	globexKey, _, err := s.agent.CreateKey(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	acme, globex := s.client(t, acmeKey), s.client(t, globexKey)
	before := time.Now().Add(-time.Minute)
	var ids []string
	for _, c := range []*client.Client{acme, acme, globex} {
		res, err := c.Invoke(ctx, "hello", []byte("abc"), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.Header.Get(wire.HeaderCallID))
	}
	if _, err := admin.Invoke(ctx, "nope", nil, nil); err == nil {
		t.Fatal("a call of no function succeeded")
	}
	s.ingest(t)

	rep, err := admin.Usage(ctx, client.UsageQuery{GroupBy: wire.GroupByFunction, From: before})
	if err != nil {
		t.Fatal(err)
	}
	if rep.GroupBy != wire.GroupByFunction || len(rep.Rows) != 2 || rep.Rows[0].Group != "hello" || rep.Rows[1].Group != "nope" {
		t.Fatalf("Usage by function = %v", rep)
	}
	hello := rep.Rows[0]
	if hello.Count != 3 || hello.ByStatus[wire.Status2xx] != 3 || hello.BytesIn != 9 || hello.BytesOut != 3*int64(len("echo:abc")) ||
		hello.ByStart[wire.StartNone] != 0 || hello.RunSumMs <= 0 || hello.GbSeconds <= 0 || hello.Time != nil {
		t.Errorf("hello's row %v", hello)
	}
	for _, k := range []string{wire.Status2xx, wire.Status3xx, wire.Status4xx, wire.Status5xx, wire.StatusOther} {
		if _, ok := hello.ByStatus[k]; !ok {
			t.Errorf("by_status lacks %q", k)
		}
	}
	if nope := rep.Rows[1]; nope.Count != 1 || nope.ByStatus[wire.Status4xx] != 1 || nope.ByStart[wire.StartNone] != 1 {
		t.Errorf("nope's row %v", nope)
	}
	rep, err = admin.Usage(ctx, client.UsageQuery{GroupBy: wire.GroupByMinute, Function: "hello"})
	if err != nil || len(rep.Rows) != 1 || rep.Rows[0].Time == nil || rep.Rows[0].Count != 3 {
		t.Errorf("Usage by minute = %v, %v", rep, err)
	}
	rep, err = admin.Usage(ctx, client.UsageQuery{To: before})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rows {
		if r.Count != 0 {
			t.Errorf("Usage before the calls = %v", rep)
		}
	}
	csvBody, err := admin.UsageCSV(ctx, client.UsageQuery{GroupBy: wire.GroupByTenant})
	if err != nil {
		t.Fatal(err)
	}
	lines, err := csv.NewReader(bytes.NewReader(csvBody)).ReadAll()
	if err != nil || len(lines) != 4 || lines[0][0] != "group" || lines[0][1] != "count" {
		t.Errorf("UsageCSV = %q, %v", csvBody, err)
	}

	// Tenants see their own.
	rep, err = acme.Usage(ctx, client.UsageQuery{GroupBy: wire.GroupByTenant})
	if err != nil || len(rep.Rows) != 1 || rep.Rows[0].Group != "acme" || rep.Rows[0].Count != 2 {
		t.Errorf("acme's usage = %v, %v", rep, err)
	}
	_, err = acme.Usage(ctx, client.UsageQuery{Tenant: "globex"})
	apiError(t, err, 401, wire.ClassUnauthenticated)

	// Call records.
	call, err := admin.GetCall(ctx, ids[2])
	if err != nil {
		t.Fatal(err)
	}
	if call.CallId != ids[2] || call.Function != "hello" || call.GetTenant() != "globex" || call.Trigger != "http" ||
		call.Status != 200 || call.BytesIn != 3 || call.GetStart() == "" || call.GetContainerId() == "" || call.GetRevision() == "" ||
		call.ErrorClass != nil || call.Node != "node-1" || call.ReceivedAt.AsTime().Before(before) || call.RunMs <= 0 || call.MemoryLimitBytes != 128<<20 {
		t.Errorf("GetCall = %v", call)
	}
	if c, err := globex.GetCall(ctx, ids[2]); err != nil || !proto.Equal(c, call) {
		t.Errorf("globex's GetCall of its call = %v, %v", c, err)
	}
	_, err = acme.GetCall(ctx, ids[2])
	apiError(t, err, 404, wire.ClassNotFound)
	_, err = admin.GetCall(ctx, "nope")
	apiError(t, err, 404, wire.ClassNotFound)

	calls, err := admin.ListCalls(ctx, client.CallQuery{})
	if err != nil || len(calls) != 4 || calls[0].Function != "nope" || calls[0].GetErrorClass() != wire.ClassNotFound || calls[0].Start != nil {
		t.Fatalf("ListCalls = %v, %v", calls, err)
	}
	calls, err = admin.ListCalls(ctx, client.CallQuery{Function: "hello", Tenant: "acme", Since: before, Limit: 1})
	if err != nil || len(calls) != 1 || calls[0].CallId != ids[1] {
		t.Errorf("ListCalls of acme's newest = %v, %v", calls, err)
	}
	calls, err = admin.ListCalls(ctx, client.CallQuery{Since: time.Now().Add(time.Hour)})
	if err != nil || calls == nil || len(calls) != 0 {
		t.Errorf("ListCalls of none = %#v, %v", calls, err)
	}
	calls, err = globex.ListCalls(ctx, client.CallQuery{})
	if err != nil || len(calls) != 1 || calls[0].CallId != ids[2] {
		t.Errorf("globex's ListCalls = %v, %v", calls, err)
	}
	_, err = globex.ListCalls(ctx, client.CallQuery{Tenant: "acme"})
	apiError(t, err, 401, wire.ClassUnauthenticated)
	for _, bad := range []int{-1, wire.MaxCallLimit + 1} {
		if _, err := admin.ListCalls(ctx, client.CallQuery{Limit: bad}); err == nil {
			t.Errorf("ListCalls with limit %d succeeded", bad)
		}
	}
	if _, err := admin.ListCalls(ctx, client.CallQuery{Limit: wire.MaxCallLimit}); err != nil {
		t.Errorf("ListCalls with the largest limit: %v", err)
	}
}

// TestContractUnauthenticated checks that each management method without a
// token, or with a tenant's key where the admin's is needed, is refused
// with an unauthenticated *APIError naming the admin token.
func TestContractUnauthenticated(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	key, _, err := s.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	methods := map[string]func(*client.Client) error{
		"Deploy": func(c *client.Client) error {
			_, err := c.Deploy(ctx, "x", &kilnv1.FunctionSpec{Runtime: "go", Code: s.code})
			return err
		},
		"Get":        func(c *client.Client) error { _, err := c.Get(ctx, "x"); return err },
		"List":       func(c *client.Client) error { _, err := c.List(ctx); return err },
		"Delete":     func(c *client.Client) error { return c.Delete(ctx, "x") },
		"Containers": func(c *client.Client) error { _, err := c.Containers(ctx, "x"); return err },
		"Logs":       func(c *client.Client) error { _, err := c.Logs(ctx, "x", 1, false); return err },
		"CreateKey":  func(c *client.Client) error { _, err := c.CreateKey(ctx, "acme"); return err },
		"ListKeys":   func(c *client.Client) error { _, err := c.ListKeys(ctx); return err },
		"RevokeKey":  func(c *client.Client) error { return c.RevokeKey(ctx, "key-1") },
	}
	tenantMay := []string{"Usage", "UsageCSV", "GetCall", "ListCalls"}
	methods["Usage"] = func(c *client.Client) error { _, err := c.Usage(ctx, client.UsageQuery{}); return err }
	methods["UsageCSV"] = func(c *client.Client) error { _, err := c.UsageCSV(ctx, client.UsageQuery{}); return err }
	methods["GetCall"] = func(c *client.Client) error { _, err := c.GetCall(ctx, "some-id"); return err }
	methods["ListCalls"] = func(c *client.Client) error { _, err := c.ListCalls(ctx, client.CallQuery{}); return err }
	none, tenant := s.client(t, ""), s.client(t, key)
	for name, call := range methods {
		t.Run(name, func(t *testing.T) {
			if e := apiError(t, call(none), 401, wire.ClassUnauthenticated); !strings.Contains(e.Message, agent.AdminTokenFile) {
				t.Errorf("without a token: %q does not name the admin token file", e.Message)
			}
			err := call(tenant)
			if slices.Contains(tenantMay, name) {
				var e *client.APIError
				if errors.As(err, &e) && e.Class == wire.ClassUnauthenticated {
					t.Errorf("with a tenant's key: %v", err)
				}
				return
			}
			apiError(t, err, 401, wire.ClassUnauthenticated)
		})
	}
}

// TestContractGRPCClasses checks that the gRPC client learns the class of
// kiln's management errors from the real server, where codes alone would
// not say.
func TestContractGRPCClasses(t *testing.T) {
	s := newServer(t)
	s.deploy(t, "hello", nil)
	ctx := context.Background()
	c, err := client.NewGRPC(s.grpcAddr, client.WithGRPCToken(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	none, err := client.NewGRPC(s.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	for _, tt := range []struct {
		err   error
		code  codes.Code
		class string
	}{
		{func() error { _, err := c.Get(ctx, "nope"); return err }(), codes.NotFound, wire.ClassNotFound},
		{func() error {
			_, err := c.Deploy(ctx, "fresh", &kilnv1.FunctionSpec{Runtime: "go", Code: []byte("no archive")})
			return err
		}(), codes.InvalidArgument, wire.ClassInvalidArgument},
		{func() error { _, err := none.List(ctx); return err }(), codes.Unauthenticated, wire.ClassUnauthenticated},
		// A call's refusal says its class in the trailer.
		{func() error {
			_, err := c.Invoke(ctx, "hello", bytes.Repeat([]byte("x"), maxBody+1), nil)
			return err
		}(), codes.ResourceExhausted, wire.ClassPayloadTooLarge},
	} {
		var ge *client.GRPCError
		if !errors.As(tt.err, &ge) || ge.Code != tt.code || ge.Class != tt.class {
			t.Errorf("error %#v, want %v %s", tt.err, tt.code, tt.class)
		}
	}
}
