package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestFunctionLogs(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-logs", probeSpec(nil))
	r := k.do(t, "POST", "/invoke/probe-logs", []byte("print"))
	if r.status != 202 && r.status != 200 {
		t.Fatalf("print = %d %s", r.status, r.body)
	}
	id := string(r.body)
	var logs string
	waitFor(t, "the printed lines in the logs", func() bool {
		logs = string(k.do(t, "GET", "/v1/functions/probe-logs/logs?tail=10", nil).body)
		return strings.Contains(logs, "stdout: probe says hello "+id) && strings.Contains(logs, "stderr: probe warns "+id)
	})
	if !strings.Contains(logs, " probe-logs.") {
		t.Errorf("log lines lack the container id:\n%s", logs)
	}
	if r := k.do(t, "GET", "/v1/functions/probe-logs/logs?tail=x", nil); r.status != 400 {
		t.Errorf("tail=x = %d", r.status)
	}
	if r := k.do(t, "GET", "/v1/functions/nope/logs", nil); r.status != 404 {
		t.Errorf("logs of unknown function = %d", r.status)
	}

	// Follow: a line printed after the request starts arrives on it.
	req, _ := http.NewRequest("GET", k.url+"/v1/functions/probe-logs/logs?tail=0&follow=1", nil)
	req.Header.Set("Authorization", "Bearer "+k.adminToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			got <- sc.Text()
		}
		close(got)
	}()
	r = k.do(t, "POST", "/invoke/probe-logs", []byte("print"))
	want := "probe says hello " + string(r.body)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-got:
			if !ok {
				t.Fatal("follow stream ended")
			}
			if strings.Contains(line, want) {
				return
			}
		case <-deadline:
			t.Fatalf("followed stream never showed %q", want)
		}
	}
}

// TestHTTPClientGoneCancelsCall closes the client's connection while the
// call runs: the handler sees ctx.Done(), the call is recorded as
// cancelled (499), and the container keeps serving.
func TestHTTPClientGoneCancelsCall(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-gone", probeSpec(nil))
	if r := k.do(t, "POST", "/invoke/probe-gone", []byte("warm")); r.status != 202 {
		t.Fatal(r.status)
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(k.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /invoke/probe-gone HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nsleep")
	time.Sleep(300 * time.Millisecond) // let the call start
	conn.Close()
	waitFor(t, "the handler to see the cancel", func() bool {
		return strings.Contains(string(k.do(t, "GET", "/v1/functions/probe-gone/logs", nil).body), "probe sleep cancelled")
	})
	if r := k.do(t, "POST", "/invoke/probe-gone", []byte("x")); r.status != 202 || r.header.Get("X-Kiln-Start") == "cold" {
		t.Errorf("after a client left: %d start=%q, want the same container", r.status, r.header.Get("X-Kiln-Start"))
	}
	waitFor(t, "the cancelled call's record", func() bool {
		var out struct {
			Calls []struct {
				Status     int    `json:"status"`
				ErrorClass string `json:"error_class"`
			}
		}
		_ = json.Unmarshal(k.do(t, "GET", "/v1/calls?function=probe-gone", nil).body, &out)
		for _, c := range out.Calls {
			if c.Status == 499 && c.ErrorClass == "cancelled" {
				return true
			}
		}
		return false
	})
}
