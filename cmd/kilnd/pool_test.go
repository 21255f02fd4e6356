package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type containerInfo struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Active int    `json:"active"`
}

func (k *kilnd) listContainers(t *testing.T, fn string) []containerInfo {
	t.Helper()
	r := k.do(t, "GET", "/v1/functions/"+fn+"/containers", nil)
	if r.status != 200 {
		t.Fatalf("containers of %s: %d %s", fn, r.status, r.body)
	}
	var l struct{ Containers []containerInfo }
	if err := json.Unmarshal(r.body, &l); err != nil {
		t.Fatal(err)
	}
	return l.Containers
}

// freezerState reads a container's cgroup v1 freezer state as the kernel
// reports it.
func freezerState(t *testing.T, id string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/freezer/kiln", id, "freezer.state"))
	if err != nil {
		t.Fatalf("freezer state of %s: %v", id, err)
	}
	return strings.TrimSpace(string(b))
}

// waitFor polls cond (a test, not a hot path) for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPreforkedFrozenThenThawed(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-warm", probeSpec(map[string]any{"min_warm": 2, "freeze_after": "0.2s"}))
	var cs []containerInfo
	waitFor(t, "two frozen containers", func() bool {
		cs = k.listContainers(t, "probe-warm")
		return len(cs) == 2 && cs[0].State == "frozen" && cs[1].State == "frozen"
	})
	for _, c := range cs {
		if got := freezerState(t, c.ID); got != "FROZEN" {
			t.Errorf("%s: freezer.state = %s, want FROZEN", c.ID, got)
		}
	}
	r := k.do(t, "POST", "/invoke/probe-warm", []byte("x"))
	if r.status != 202 || r.header.Get("X-Kiln-Start") != "thawed" {
		t.Fatalf("first call = %d start=%q, want 202 thawed", r.status, r.header.Get("X-Kiln-Start"))
	}
	if r := k.do(t, "POST", "/invoke/probe-warm", []byte("x")); r.header.Get("X-Kiln-Start") != "warm" {
		t.Errorf("second call start = %q, want warm", r.header.Get("X-Kiln-Start"))
	}
	// After freeze_after of idleness every container is frozen again.
	waitFor(t, "containers frozen again", func() bool {
		for _, c := range k.listContainers(t, "probe-warm") {
			if c.State != "frozen" || freezerState(t, c.ID) != "FROZEN" {
				return false
			}
		}
		return true
	})
}

func TestScaleUpUnderConcurrency(t *testing.T) {
	k := sharedKilnd(t)
	k.deploy(t, "probe-scale", probeSpec(map[string]any{"max_containers": 4, "concurrency": 1}))
	const n = 200
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = k.do(t, "POST", "/invoke/probe-scale", []byte("x")).status
		}()
	}
	wg.Wait()
	for i, s := range statuses {
		if s != 202 {
			t.Fatalf("call %d: status %d", i, s)
		}
	}
	if cs := k.listContainers(t, "probe-scale"); len(cs) > 4 || len(cs) == 0 {
		t.Errorf("%d containers, want 1..4", len(cs))
	}
}

// TestQueueAndStemCells runs a kilnd with a queue depth of 10 and stem
// cells.
func TestQueueAndStemCells(t *testing.T) {
	requireIntegration(t)
	k := startKilnd(t, shortTempDir(t), "--queue-depth", "10", "--stem-cells", "go=1", "--executor-binary", filepath.Join(binDir, "kiln-executor"))

	// Stem cell: a function with no container is served by one.
	k.deploy(t, "probe-stem", probeSpec(nil))
	waitFor(t, "a stem cell", func() bool {
		return strings.Contains(k.logs.String(), `"msg":"stem cell ready"`)
	})
	r := k.do(t, "POST", "/invoke/probe-stem", []byte("report"))
	if r.status != 200 || r.header.Get("X-Kiln-Start") != "stem" {
		t.Fatalf("first call = %d start=%q %s", r.status, r.header.Get("X-Kiln-Start"), r.body)
	}
	var rep struct{ UID int }
	if err := json.Unmarshal(r.body, &rep); err != nil || rep.UID == 0 {
		t.Errorf("specialised container report: %s (%v)", r.body, err)
	}
	if r := k.do(t, "POST", "/invoke/probe-stem", []byte("x")); r.status != 202 || r.header.Get("X-Kiln-Start") != "warm" {
		t.Errorf("second call = %d start=%q", r.status, r.header.Get("X-Kiln-Start"))
	}

	// Queue: one container, ten waiting, the rest refused with 429.
	k.deploy(t, "probe-queue", probeSpec(map[string]any{"max_containers": 1}))
	if r := k.do(t, "POST", "/invoke/probe-queue", []byte("x")); r.status != 202 {
		t.Fatalf("warm-up = %d", r.status)
	}
	const n = 40
	var wg sync.WaitGroup
	results := make([]response, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = k.do(t, "POST", "/invoke/probe-queue", []byte("nap"))
		}()
	}
	wg.Wait()
	var ok, refused int
	for _, r := range results {
		switch r.status {
		case 200:
			ok++
		case 429:
			refused++
			if r.header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		default:
			t.Errorf("status %d: %s", r.status, r.body)
		}
	}
	if refused == 0 || ok < 11 {
		t.Errorf("ok=%d refused=%d: want at least 11 served and some refused", ok, refused)
	}
}
