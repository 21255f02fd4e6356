package main

import (
	"bufio"
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
	resp, err := http.Get(k.url + "/v1/functions/probe-logs/logs?tail=0&follow=1")
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
