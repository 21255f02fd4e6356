package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	plainOnce sync.Once
	plainPath string
	plainErr  error
)

// plainKilndWrapper returns a wrapper for startKilndWrapped that runs a
// kilnd built without the race detector in place of the one the other
// tests run: the race detector's shadow memory would swamp the figures
// measured. It is built once per test binary.
func plainKilndWrapper(t *testing.T) []string {
	t.Helper()
	requireIntegration(t)
	plainOnce.Do(func() {
		plainPath = filepath.Join(binDir, "kilnd-plain")
		cmd := exec.Command("go", "build", "-o", plainPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			plainErr = fmt.Errorf("go build kilnd: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	// sh -c SCRIPT $0 $1...: $0 is the plain kilnd, $1 the race-built one
	// launchWrapped names, dropped; exec keeps the pid.
	return []string{"sh", "-c", `shift; exec "$0" "$@"`, plainPath}
}

// rssBytes returns the resident set of process pid, in bytes.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	kib, err := vmRSS(pid)
	if err != nil {
		t.Fatalf("read RSS: %v", err)
	}
	return kib << 10
}

// rssPeak samples process pid's RSS every 10 ms until the returned
// function is called, which returns the largest sample.
func rssPeak(t *testing.T, pid int) (stop func() int64) {
	var peak atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
						kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
						if kb<<10 > peak.Load() {
							peak.Store(kb << 10)
						}
					}
				}
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 {
		close(done)
		<-finished
		return peak.Load()
	}
}

// mib formats n bytes in MiB.
func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// TestLargeResponsesMemory answers 8 concurrent calls of 48 MiB each, twice,
// from a kilnd built as it ships (--max-response 48 MiB, the default
// --memory-limit), and measures kilnd's RSS before, at its peak during, and
// 1, 3 and 5 s after each round. The peak must stay under the idle RSS
// plus 3× the bytes in flight, and 5 s after a round kilnd must be back
// under its idle RSS plus 32 MiB. An answer over the limit is refused
// with response_too_large.
func TestLargeResponsesMemory(t *testing.T) {
	const (
		calls    = 8
		bodyMiB  = 48
		inFlight = calls * bodyMiB << 20
	)
	k := startKilndWrapped(t, plainKilndWrapper(t), shortTempDir(t), largeResponseFlags...)
	pid := k.cmd.Process.Pid
	fn := "mem-big"
	k.deploy(t, fn, probeSpec(map[string]any{"memory_mb": 256, "max_containers": calls}))
	together := func(f func() error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, calls)
		for range calls {
			wg.Go(func() {
				if err := f(); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	// Start the containers: calls concurrent calls that each hold one for
	// 200 ms.
	together(func() error {
		if r, err := invoke(k.url, fn, "nap"); err != nil || r.status != 202 && r.status != 200 {
			return fmt.Errorf("warm-up: %d %s %v", r.status, r.body, err)
		}
		return nil
	})
	time.Sleep(time.Second)
	base := rssBytes(t, pid)
	t.Logf("kilnd RSS idle with %d warm containers: %s", calls, mib(base))
	for round := 1; round <= 2; round++ {
		stop := rssPeak(t, pid)
		t0 := time.Now()
		together(func() error {
			resp, err := http.Post(k.url+"/invoke/"+fn, "text/plain", strings.NewReader(fmt.Sprintf("mib:%d", bodyMiB)))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			if err != nil || resp.StatusCode != 200 || n != bodyMiB<<20 {
				return fmt.Errorf("mib:%d = %d, %d bytes, %v", bodyMiB, resp.StatusCode, n, err)
			}
			return nil
		})
		took := time.Since(t0)
		peak := stop()
		time.Sleep(time.Second)
		after1 := rssBytes(t, pid)
		time.Sleep(2 * time.Second)
		after3 := rssBytes(t, pid)
		time.Sleep(2 * time.Second)
		after5 := rssBytes(t, pid)
		t.Logf("round %d: %d×%d MiB answered in %v; kilnd RSS peak %s (%.1f× the %s in flight above the idle %s), 1 s after %s, 3 s after %s, 5 s after %s",
			round, calls, bodyMiB, took.Round(time.Millisecond), mib(peak), float64(peak-base)/inFlight, mib(inFlight), mib(base), mib(after1), mib(after3), mib(after5))
		if limit := base + 3*inFlight; peak > limit {
			t.Errorf("round %d: RSS peak %s, over the idle RSS plus 3× the bytes in flight (%s)", round, mib(peak), mib(limit))
		}
		if limit := base + 32<<20; after5 > limit {
			t.Errorf("round %d: RSS %s 5 s after, over the idle RSS plus 32 MiB (%s)", round, mib(after5), mib(limit))
		}
	}
	r, err := invoke(k.url, fn, fmt.Sprintf("mib:%d", bodyMiB+1))
	if err != nil || r.status != 502 || r.header.Get("X-Kiln-Error") != "response_too_large" {
		t.Errorf("an answer over --max-response = %d %q %s %v, want 502 response_too_large", r.status, r.header.Get("X-Kiln-Error"), r.body, err)
	}
}

// largeResponseFlags are kilnd's flags in TestLargeResponsesMemory, with
// $KILN_MEM_FLAGS appended to measure others (--memory-limit 0, say).
var largeResponseFlags = append([]string{"--max-response", fmt.Sprint(48 << 20)}, strings.Fields(os.Getenv("KILN_MEM_FLAGS"))...)
