package api

import (
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// FuzzUsageQuery feeds arbitrary query strings to the parsers behind
// GET /v1/usage and GET /v1/calls. A refusal is an invalid_argument naming
// the parameter; what is accepted is what was asked, within the store's
// range: names as given, times the store can compare, a limit in bounds.
func FuzzUsageQuery(f *testing.F) {
	for _, q := range []string{
		"", "from=yesterday", "to=2026-13-01", "from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
		"group_by=week&format=xml", "format=csv&function=echo&tenant=acme", "limit=0", "limit=10001", "limit=many",
		"since=soon", "from=2026-03-01T10:00:00.5%2B01:00", "to=1772359200", "since=-62135596800",
		"since=99999999999", "from=9223372036854775807", "limit=%2B5", "limit=1&limit=2", "tenant=%00&function=a%20b",
	} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, query string) {
		var args fasthttp.Args
		args.Parse(query)
		refused := func(err error, params ...string) {
			t.Helper()
			if !errors.Is(err, agent.ErrInvalidArgument) {
				t.Fatalf("%q: error %v is no invalid_argument", query, err)
			}
			for _, p := range params {
				if strings.HasPrefix(err.Error(), agent.ErrInvalidArgument.Error()+": "+p+": ") {
					return
				}
			}
			t.Fatalf("%q: error %q names none of %v", query, err, params)
		}
		inRange := func(field string, tm time.Time) {
			t.Helper()
			if time.Unix(0, tm.UnixNano()).Compare(tm) != 0 {
				t.Fatalf("%q: %s %v is outside the store's range", query, field, tm)
			}
			again, err := parseTime(field, tm.Format(time.RFC3339Nano))
			if err != nil || !again.Equal(tm) {
				t.Fatalf("%q: %s %v does not come back as itself: %v, %v", query, field, tm, again, err)
			}
		}

		req, format, err := reportQuery(&args)
		if err != nil {
			refused(err, "from", "to", "format")
		} else {
			if req.Function != string(args.Peek("function")) || req.Tenant != string(args.Peek("tenant")) || req.GroupBy != string(args.Peek("group_by")) {
				t.Fatalf("%q: report request %v is not what was asked", query, req)
			}
			if format != "json" && format != "csv" {
				t.Fatalf("%q: format %q", query, format)
			}
			if req.From != nil {
				inRange("from", req.From.AsTime())
			}
			if req.To != nil {
				inRange("to", req.To.AsTime())
			}
		}

		filter, err := callQuery(&args)
		if err != nil {
			refused(err, "since", "limit")
			return
		}
		if filter.Function != string(args.Peek("function")) || filter.Tenant != string(args.Peek("tenant")) {
			t.Fatalf("%q: call filter %+v is not what was asked", query, filter)
		}
		if filter.Limit < 0 || filter.Limit > wire.MaxCallLimit || (filter.Limit == 0) != (len(args.Peek("limit")) == 0) {
			t.Fatalf("%q: limit %d", query, filter.Limit)
		}
		if !filter.Since.IsZero() {
			inRange("since", filter.Since)
		}
	})
}

// FuzzInvokeRoute sends requests of any method and target to the HTTP
// router, in process, with the admin token required and not given. Every
// answer is a status kiln gives: an error is a kiln.v1.Error whose class
// is also in X-Kiln-Error; an invocation reaches the function under the
// name and path splitInvokePath gives, a name the agent refuses is a 400,
// one it does not know a 404, and the function's one container outlives
// every request.
func FuzzInvokeRoute(f *testing.F) {
	for _, s := range [][2]string{
		{"GET", "/invoke/echo"}, {"POST", "/invoke/echo/sub/path?x=1&y=2"}, {"BREW", "/function/echo/"},
		{"GET", "/invoke/"}, {"GET", "/invoke/Echo"}, {"PUT", "/invoke/echo/../../v1/keys"},
		{"GET", "/invoke/echo%2Fx/y"}, {"GET", "/invoke//echo"}, {"DELETE", "/v1/functions/echo"},
		{"GET", "/v1/usage?tenant=x"}, {"GET", "/v1/calls/../keys"}, {"G\x00T", "http://host/invoke/echo#frag"},
		{"GET", "/invoke/" + strings.Repeat("a", 64)}, {"OPTIONS", "*"}, {"GET", "/healthz"},
	} {
		f.Add(s[0], s[1])
	}
	e := newGRPCEnv(f)
	s := NewHTTPServer(e.agent, WithHTTPLogger(slog.New(slog.DiscardHandler)), WithAdminToken(testAdminToken, true))
	handle := s.Handler()
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4242}
	f.Fuzz(func(t *testing.T, method, target string) {
		var req fasthttp.Request
		req.Header.SetMethod(method)
		req.SetRequestURI(target)
		req.SetBodyString("headers")
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, remote, nil)
		handle(&ctx)

		resp := &ctx.Response
		status := resp.StatusCode()
		if status < 200 || status > 599 {
			t.Fatalf("%s %q: status %d", method, target, status)
		}
		path := ctx.Path()
		var invoked []byte
		for _, prefix := range [][]byte{prefixInvoke, prefixFunction} {
			if rest, ok := strings.CutPrefix(string(path), string(prefix)); ok {
				invoked = []byte(rest)
				break
			}
		}
		if status == 201 && invoked != nil {
			// The function's answer names the method and path it saw.
			name, sub := splitInvokePath(invoked)
			want := string(ctx.Method()) + " " + string(sub) + "?" + string(ctx.URI().QueryString())
			if string(name) != "echo" || string(resp.Body()) != want {
				t.Fatalf("%s %q: function %q saw %q, want %q", method, target, name, resp.Body(), want)
			}
			return
		}
		if status < 400 {
			return
		}
		var kerr kilnv1.Error
		if err := protojson.Unmarshal(resp.Body(), &kerr); err != nil {
			t.Fatalf("%s %q: error answer %d is no kiln.v1.Error: %q", method, target, status, resp.Body())
		}
		if got := string(resp.Header.Peek(wire.HeaderError)); got != kerr.Class || kerr.Class == "" {
			t.Fatalf("%s %q: %s %q, body's class %q", method, target, wire.HeaderError, got, kerr.Class)
		}
		if invoked != nil {
			name, _ := splitInvokePath(invoked)
			want := 404
			if agent.ValidateName(string(name)) != nil || string(name) == "echo" {
				// echo refuses a method, path or query that is not UTF-8
				want = 400
			}
			if status != want {
				t.Fatalf("%s %q: invoking %q answered %d (%s), want %d", method, target, name, status, resp.Body(), want)
			}
		}
		// No request, however made, costs the function its container.
		if n := e.driver.Starts(); n > 1 {
			t.Fatalf("%s %q: %d containers started, want 1", method, target, n)
		}
	})
}

// FuzzSplitInvokePath checks the split of an invocation's path: the name
// holds no slash, the function's path starts with one, and together they
// are the path given.
func FuzzSplitInvokePath(f *testing.F) {
	for _, s := range []string{"", "echo", "echo/", "echo/a/b", "/echo", "a//b", "%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		name, sub := splitInvokePath([]byte(rest))
		if strings.Contains(string(name), "/") || !strings.HasPrefix(string(sub), "/") {
			t.Fatalf("%q split as %q, %q", rest, name, sub)
		}
		if joined := string(name) + string(sub); joined != rest && joined != rest+"/" {
			t.Fatalf("%q split as %q, %q", rest, name, sub)
		}
	})
}
