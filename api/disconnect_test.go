package api

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// TestHTTPDisconnectCancels checks that a client closing its connection
// cancels its call, also on a kept-alive connection that served a call
// before, and that the connection's other calls are left alone.
func TestHTTPDisconnectCancels(t *testing.T) {
	e := newHTTPEnv(t)
	addr := strings.TrimPrefix(e.url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	send := func(body string) {
		fmt.Fprintf(conn, "POST /invoke/echo HTTP/1.1\r\nHost: kiln\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	// A call that completes on the connection: its arming must not leak
	// into the next call.
	send("first")
	line, err := r.ReadString('\n')
	if err != nil || !strings.Contains(line, "200") {
		t.Fatalf("first call: %q %v", line, err)
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l == "\r\n" {
			break
		}
	}
	if _, err := r.Discard(len("echo:first")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	send("sleep")
	time.Sleep(200 * time.Millisecond) // the call is in its handler
	conn.Close()

	// The call ends as cancelled well before the function's 30 s timeout.
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.ingest(t)
		var list kilnv1.CallList
		message(t, e.admin(t, "GET", "/v1/calls?function=echo", nil), &list)
		var cancelled, ok int
		for _, c := range list.Calls {
			switch {
			case c.GetErrorClass() == wire.ClassCancelled:
				cancelled++
			case c.GetStatus() == 200:
				ok++
			}
		}
		if cancelled == 1 {
			if ok != 1 {
				t.Errorf("%d successful calls recorded, want 1", ok)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("cancelled after %v", d)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cancelled call recorded: %v", list.Calls)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
