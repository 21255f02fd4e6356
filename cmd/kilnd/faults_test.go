package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// callRecord waits for the usage record of call id to be ingested and
// returns it.
func (k *kilnd) callRecord(t *testing.T, id string) *kilnv1.CallRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := k.do(t, "GET", "/v1/calls/"+id, nil)
		if r.status == 200 {
			var rec kilnv1.CallRecord
			if err := decodeMessage(bytes.NewReader(r.body), &rec); err != nil {
				t.Fatalf("call record: %v: %s", err, r.body)
			}
			return &rec
		}
		if r.status != 404 || time.Now().After(deadline) {
			t.Fatalf("GET /v1/calls/%s = %d %s", id, r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// containerOf returns the id of the one container of function fn.
func (k *kilnd) containerOf(t *testing.T, fn string) string {
	t.Helper()
	var ids []string
	for _, id := range k.containers(t) {
		if strings.HasPrefix(id, fn+".") {
			ids = append(ids, id)
		}
	}
	if len(ids) != 1 {
		t.Fatalf("containers of %s: %v, want one", fn, ids)
	}
	return ids[0]
}

// killContainerProcesses sends SIGKILL to every process of container id,
// through its cgroup (v1 pids, else v2).
func killContainerProcesses(t *testing.T, id string) {
	t.Helper()
	var b []byte
	var err error
	for _, dir := range []string{"/sys/fs/cgroup/pids/kiln", "/sys/fs/cgroup/unified/kiln", "/sys/fs/cgroup/kiln"} {
		if b, err = os.ReadFile(filepath.Join(dir, id, "cgroup.procs")); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("processes of %s: %v", id, err)
	}
	pids := strings.Fields(string(b))
	if len(pids) == 0 {
		t.Fatalf("container %s has no processes", id)
	}
	for _, p := range pids {
		pid, _ := strconv.Atoi(p)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Errorf("kill %d: %v", pid, err)
		}
	}
}

// TestFaultsSayWhatWentWrong makes a function fail in each way kiln tells
// apart and checks the answer's status and class, the message, the usage
// record's class and figures, and that the next call succeeds.
func TestFaultsSayWhatWentWrong(t *testing.T) {
	k := sharedKilnd(t)
	for _, tt := range []struct {
		name    string
		spec    map[string]any
		body    string
		kill    bool // kill the container's processes from the host during the call
		status  int
		class   string
		mention string
		// The next call reuses the container ("same": warm, or thawed
		// once it froze) or gets a new one ("cold"); "" when either may
		// happen.
		nextStart string
	}{
		{name: "oom", spec: map[string]any{"memory_mb": 32}, body: "oom", status: 502, class: "oom",
			mention: "was killed at its memory limit (32 MiB)", nextStart: "cold"},
		{name: "forkbomb", body: "forkbomb", status: 502, class: "pids_exhausted",
			mention: "its pids limit of 256 was reached", nextStart: ""},
		{name: "exit", body: "exit", status: 502, class: "exited", mention: "exited with status 3", nextStart: "cold"},
		{name: "sigkill", body: "sleep", kill: true, status: 502, class: "exited", mention: "killed by signal 9", nextStart: "cold"},
		{name: "big", body: "big", status: 502, class: "response_too_large", mention: "limit", nextStart: "same"},
		{name: "timeout", spec: map[string]any{"timeout": "1s"}, body: "hang", status: 504, class: "deadline_exceeded",
			mention: "did not answer within 1s", nextStart: "cold"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fn := "fault-" + tt.name
			k.deploy(t, fn, probeSpec(tt.spec))
			if r := k.do(t, "POST", "/invoke/"+fn, []byte("warm up")); r.status != 202 {
				t.Fatalf("warm-up = %d %s", r.status, r.body)
			}
			var killed chan struct{}
			if tt.kill {
				id := k.containerOf(t, fn)
				killed = make(chan struct{})
				go func() {
					defer close(killed)
					time.Sleep(300 * time.Millisecond) // the call is in flight
					killContainerProcesses(t, id)
				}()
			}
			t0 := time.Now()
			r := k.do(t, "POST", "/invoke/"+fn, []byte(tt.body))
			took := time.Since(t0)
			if killed != nil {
				<-killed
			}
			var e struct{ Error, Class string }
			_ = json.Unmarshal(r.body, &e)
			if r.status != tt.status || r.header.Get("X-Kiln-Error") != tt.class || e.Class != tt.class || !strings.Contains(e.Error, tt.mention) {
				t.Fatalf("%s = %d %q %s, want %d %s mentioning %q\n%s", tt.body, r.status, r.header.Get("X-Kiln-Error"), r.body,
					tt.status, tt.class, tt.mention, tailLines(k.logs.String(), 30))
			}
			rec := k.callRecord(t, r.header.Get("X-Kiln-Call-Id"))
			if rec.GetErrorClass() != tt.class || rec.Status != int32(tt.status) {
				t.Errorf("record class %q status %d, want %s %d", rec.GetErrorClass(), rec.Status, tt.class, tt.status)
			}
			if rec.RunMs <= 0 || rec.MemoryPeakBytes <= 0 {
				t.Errorf("record run %v ms, memory peak %d: a failed call is billed as a successful one", rec.RunMs, rec.MemoryPeakBytes)
			}
			if tt.name == "timeout" && (rec.RunMs < 900 || rec.CpuUserMs+rec.CpuSystemMs > rec.RunMs*2) {
				t.Errorf("timed out call: run %v ms, CPU %v+%v ms; want about the 1 s it held its container", rec.RunMs, rec.CpuUserMs, rec.CpuSystemMs)
			}
			t.Logf("%s: %d %s in %v: %q; record run %.1f ms, cpu %.1f+%.1f ms, peak %d bytes", tt.name, r.status, tt.class,
				took.Round(time.Millisecond), e.Error, rec.RunMs, rec.CpuUserMs, rec.CpuSystemMs, rec.MemoryPeakBytes)

			next := k.do(t, "POST", "/invoke/"+fn, []byte("next"))
			if next.status != 202 || string(next.body) != "probe:next" {
				t.Fatalf("next call = %d %s", next.status, next.body)
			}
			got := next.header.Get("X-Kiln-Start")
			if tt.nextStart == "same" && (got == "warm" || got == "thawed") {
				got = "same"
			}
			if tt.nextStart != "" && got != tt.nextStart {
				t.Errorf("next call's start = %q, want %s", got, tt.nextStart)
			}
			if r := k.do(t, "GET", "/metrics", nil); !bytes.Contains(r.body, []byte(`kiln_call_errors_total{class="`+tt.class+`",function="`+fn+`"} 1`)) {
				t.Errorf("metrics lack kiln_call_errors_total of %s for %s", tt.class, fn)
			}
			k.do(t, "DELETE", "/v1/functions/"+fn, nil)
		})
	}
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
