package api

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Requests a hostile or broken client sends the HTTP edge: headers too
// large or too many, methods that are no HTTP token, bodies that trickle.
// Each is answered with a status and kiln's JSON error, never a panic or a
// hang, and the server goes on serving.

// rawAnswer sends req as it is on a new connection and returns the
// server's answer, read once the server closed the connection.
func rawAnswer(t *testing.T, addr, req string) (*http.Response, []byte) {
	t.Helper()
	c := dialFrom(t, "127.0.0.1", addr)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	out := c.closedWith(t)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("no HTTP answer (%v): %.200q", err, out)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestHTTPHostileRequests(t *testing.T) {
	e := newGRPCEnv(t)
	_, addr := startHTTP(t, e.agent)
	const closeConn = "Connection: close\r\n"
	pad := strings.Repeat("a", MaxHeaderBytes)
	for _, tt := range []struct {
		name, req string
		status    int
		class     string // "" for the function's own answer
		mention   string // in the error or the body
	}{
		{"one header over the limit", "GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Big: " + pad + "\r\n\r\n",
			431, wire.ClassHeadersTooLarge, "4096 bytes"},
		{"many small headers", "GET /healthz HTTP/1.1\r\nHost: kiln\r\n" + strings.Repeat("X-A: b\r\n", 2000) + "\r\n",
			431, wire.ClassHeadersTooLarge, "headers"},
		{"a request line over the limit", "GET /healthz?" + pad + " HTTP/1.1\r\nHost: kiln\r\n\r\n",
			431, wire.ClassHeadersTooLarge, "request line"},
		{"an invocation with headers over the limit", "POST /invoke/echo HTTP/1.1\r\nHost: kiln\r\nX-Big: " + pad + "\r\nContent-Length: 2\r\n\r\nhi",
			431, wire.ClassHeadersTooLarge, "headers"},
		{"a method with a bracket", "GE(T /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			400, wire.ClassInvalidArgument, "method"},
		{"a method with a control byte", "G\x01T /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			400, wire.ClassInvalidArgument, "method"},
		{"no method", " /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			400, wire.ClassInvalidArgument, "method"},
		{"bytes that are no request", "\x00\x01\x02\r\n\r\n",
			400, wire.ClassInvalidArgument, "cannot read request"},
		{"an HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			400, wire.ClassInvalidArgument, "cannot read request"},
		{"an unknown method on a management route", "BREW /v1/functions HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			405, wire.ClassInvalidArgument, "method not allowed"},
		// An invocation's method is the function's business: any token
		// reaches it.
		{"an unknown method on an invocation", "BREW /invoke/echo HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "\r\n",
			200, "", "echo:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawAnswer(t, addr, tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
			if tt.class == "" {
				if !strings.Contains(string(body), tt.mention) {
					t.Errorf("body %q does not hold %q", body, tt.mention)
				}
				return
			}
			var kerr kilnv1.Error
			if err := protojson.Unmarshal(body, &kerr); err != nil {
				t.Fatalf("body is no kiln.v1.Error: %v: %q", err, body)
			}
			if kerr.Class != tt.class || resp.Header.Get(wire.HeaderError) != tt.class || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("class %q, %s %q, Content-Type %q; want %s, JSON", kerr.Class, wire.HeaderError,
					resp.Header.Get(wire.HeaderError), resp.Header.Get("Content-Type"), tt.class)
			}
			if !strings.Contains(kerr.Error, tt.mention) {
				t.Errorf("error %q does not mention %q", kerr.Error, tt.mention)
			}
		})
	}

	// The answer to a request the server cannot read does not quote it:
	// whatever the client sent, credentials included, stays out of the
	// answer (and of whatever logs it on the way back).
	const secret = "Bearer kiln_secret-that-must-not-come-back"
	for _, req := range []string{
		"GE(T /healthz HTTP/1.1\r\nAuthorization: " + secret + "\r\n" + closeConn + "\r\n",
		"GET /healthz HTTP/1.1\r\nAuthorization: " + secret + "\r\nX-Big: " + pad + "\r\n\r\n",
	} {
		if resp, body := rawAnswer(t, addr, req); strings.Contains(string(body), "kiln_secret") {
			t.Errorf("answer %d quotes the request: %q", resp.StatusCode, body)
		}
	}

	// A header block just under the limit is served.
	under := "GET /healthz HTTP/1.1\r\nHost: kiln\r\n" + closeConn + "X-Pad: "
	under += strings.Repeat("a", MaxHeaderBytes-len(under)-len("\r\n\r\n")-1) + "\r\n\r\n"
	if resp, body := rawAnswer(t, addr, under); resp.StatusCode != 200 {
		t.Errorf("a header block of %d bytes: %d %s", len(under), resp.StatusCode, body)
	}
	if status, _ := get(t, "127.0.0.1", addr, "/healthz"); status != 200 {
		t.Errorf("after the hostile requests: %d", status)
	}
}

// TestHTTPTricklingBody checks that a body sent a byte at a time gets its
// 408 once the body timeout has passed since its headers, however steadily
// it keeps coming: the timeout bounds the whole body, not each read.
func TestHTTPTricklingBody(t *testing.T) {
	e := newGRPCEnv(t)
	const bodyTimeout = 500 * time.Millisecond
	_, addr := startHTTP(t, e.agent, WithHeaderTimeout(200*time.Millisecond), WithBodyTimeout(bodyTimeout))
	c := dialFrom(t, "127.0.0.1", addr)
	sent := time.Now()
	fmt.Fprintf(c, "POST /invoke/echo HTTP/1.1\r\nHost: kiln\r\nContent-Length: %d\r\n\r\n", smallBody+1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	out := c.closedWith(t)
	took := time.Since(sent)
	if !strings.HasPrefix(out, "HTTP/1.1 408 ") || !strings.Contains(out, wire.ClassRequestTimeout) {
		t.Errorf("trickling body: %.200q, want 408 request_timeout", out)
	}
	if took < bodyTimeout || took > bodyTimeout+2*time.Second {
		t.Errorf("answered after %v, want soon after the body timeout (%v)", took, bodyTimeout)
	}
	if status, _ := get(t, "127.0.0.1", addr, "/healthz"); status != 200 {
		t.Errorf("after the trickling body: %d", status)
	}
}
