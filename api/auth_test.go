package api

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func TestTenantScope(t *testing.T) {
	admin, acme := caller{admin: true}, caller{tenant: "acme"}
	for _, tt := range []struct {
		who         caller
		asked, want string
		refused     bool
	}{
		{admin, "", "", false}, {admin, "globex", "globex", false},
		{acme, "", "acme", false}, {acme, "acme", "acme", false}, {acme, "globex", "", true},
	} {
		got, err := tt.who.scopeTenant(tt.asked)
		if got != tt.want || (err != nil) != tt.refused || (err != nil && !errors.Is(err, agent.ErrUnauthenticated)) {
			t.Errorf("%+v.scopeTenant(%q) = %q, %v", tt.who, tt.asked, got, err)
		}
	}
	if !admin.mayRead("x") || !acme.mayRead("acme") || acme.mayRead("globex") || acme.mayRead("") {
		t.Error("mayRead does not follow scopeTenant's rule")
	}
}

// TestAuthGaps covers, on both edges over one agent, what TestHTTPAuth,
// TestHTTPRequireKey, TestGRPCAuth and TestGRPCUsage leave out: a revoked
// key on a function that needs one, the runtimes API and every Functions
// RPC without the admin token, and a tenant reading another's usage and
// calls over gRPC.
func TestAuthGaps(t *testing.T) {
	e := newHTTPEnv(t)
	ctx := context.Background()
	g, _ := NewGRPCServer(e.agent, WithGRPCLogger(slog.New(slog.DiscardHandler)), WithGRPCAdminToken(testAdminToken, true))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	invoker, functions, usage := kilnv1.NewInvokerClient(conn), kilnv1.NewFunctionsClient(conn), kilnv1.NewUsageClient(conn)
	with := func(tok string) context.Context {
		if tok == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	acme, _, err := e.agent.CreateKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	globex, _, err := e.agent.CreateKey(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	revoked, revokedKey, err := e.agent.CreateKey(ctx, "initech")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.agent.RevokeKey(ctx, revokedKey.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Deploy(ctx, "private", &kilnv1.FunctionSpec{Runtime: "go", Code: testArchive(t, false), RequireKey: true}); err != nil {
		t.Fatal(err)
	}

	// A function that needs a key: none, a wrong one, a revoked one, the
	// admin token (no tenant's key) are refused on both edges.
	for _, tok := range []string{"", "kiln_wrong", revoked, testAdminToken} {
		if a := e.do(t, "POST", "/invoke/private", tok, []byte("x")); a.status != 401 || apiError(t, a).Class != wire.ClassUnauthenticated {
			t.Errorf("HTTP call of private with %q: %d %s", tok, a.status, a.body)
		}
		var trailer metadata.MD
		_, err := invoker.Invoke(with(tok), &kilnv1.InvokeRequest{Function: "private", Body: []byte("x")}, grpc.Trailer(&trailer))
		if status.Code(err) != codes.Unauthenticated || len(trailer.Get(wire.TrailerErrorClass)) != 1 || trailer.Get(wire.TrailerErrorClass)[0] != wire.ClassUnauthenticated {
			t.Errorf("gRPC call of private with %q: %v, class %v", tok, err, trailer.Get(wire.TrailerErrorClass))
		}
	}
	// A revoked key is refused on a public function too: it names no tenant.
	if a := e.do(t, "POST", "/invoke/echo", revoked, []byte("x")); a.status != 401 {
		t.Errorf("HTTP call of echo with a revoked key: %d %s", a.status, a.body)
	}
	if a := e.do(t, "POST", "/invoke/private", acme, []byte("x")); a.status != 200 {
		t.Fatalf("HTTP call of private with acme's key: %d %s", a.status, a.body)
	}
	if _, err := invoker.Invoke(with(globex), &kilnv1.InvokeRequest{Function: "private", Body: []byte("x")}); err != nil {
		t.Fatalf("gRPC call of private with globex's key: %v", err)
	}

	// The runtimes API is the admin's.
	for _, m := range []struct{ method, path string }{{"GET", "/v1/runtimes"}, {"POST", "/v1/runtimes/python3"}, {"DELETE", "/v1/runtimes/python3"}} {
		for _, tok := range []string{"", acme, revoked, "kiln_wrong"} {
			if a := e.do(t, m.method, m.path, tok, nil); a.status != 401 || apiError(t, a).Class != wire.ClassUnauthenticated {
				t.Errorf("%s %s with %q: %d %s", m.method, m.path, tok, a.status, a.body)
			}
		}
	}
	// Every Functions RPC is the admin's.
	rpcs := map[string]func(context.Context) error{
		"Deploy": func(c context.Context) error {
			_, err := functions.Deploy(c, &kilnv1.DeployRequest{Name: "echo", Spec: &kilnv1.FunctionSpec{Runtime: "go"}})
			return err
		},
		"Get": func(c context.Context) error {
			_, err := functions.Get(c, &kilnv1.GetFunctionRequest{Name: "echo"})
			return err
		},
		"List": func(c context.Context) error {
			_, err := functions.List(c, &kilnv1.ListFunctionsRequest{})
			return err
		},
		"Delete": func(c context.Context) error {
			_, err := functions.Delete(c, &kilnv1.DeleteFunctionRequest{Name: "echo"})
			return err
		},
	}
	for name, rpc := range rpcs {
		for _, tok := range []string{"", acme, revoked, "kiln_wrong"} {
			if err := rpc(with(tok)); status.Code(err) != codes.Unauthenticated {
				t.Errorf("Functions.%s with %q: %v", name, tok, err)
			}
		}
	}
	if _, err := functions.Get(with(testAdminToken), &kilnv1.GetFunctionRequest{Name: "echo"}); err != nil {
		t.Errorf("Functions.Get as the admin: %v (the refusals must have changed nothing)", err)
	}

	// Usage over gRPC: a tenant sees its own rows and calls only.
	e.ingest(t)
	rep, err := usage.Report(with(acme), &kilnv1.ReportRequest{GroupBy: "tenant"})
	if err != nil || len(rep.Rows) != 1 || rep.Rows[0].Group != "acme" || rep.Rows[0].Count != 1 {
		t.Errorf("acme's usage by tenant: %v %v", rep, err)
	}
	if _, err := usage.Report(with(acme), &kilnv1.ReportRequest{Tenant: "globex"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("acme asking for globex's usage: %v", err)
	}
	if _, err := usage.Report(with(revoked), &kilnv1.ReportRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("usage with a revoked key: %v", err)
	}
	var calls kilnv1.CallList
	message(t, e.do(t, "GET", "/v1/calls?function=private", globex, nil), &calls)
	if len(calls.Calls) != 1 {
		t.Fatalf("globex's calls of private: %v", &calls)
	}
	id := calls.Calls[0].CallId
	if _, err := usage.GetCall(with(acme), &kilnv1.GetCallRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Errorf("acme reading globex's call: %v, want NOT_FOUND as for an unknown call", err)
	}
	if rec, err := usage.GetCall(with(globex), &kilnv1.GetCallRequest{Id: id}); err != nil || rec.GetTenant() != "globex" {
		t.Errorf("globex reading its call: %v %v", rec, err)
	}
	if rec, err := usage.GetCall(with(testAdminToken), &kilnv1.GetCallRequest{Id: id}); err != nil || rec.CallId != id {
		t.Errorf("the admin reading globex's call: %v %v", rec, err)
	}
}
