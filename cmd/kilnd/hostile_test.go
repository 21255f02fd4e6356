package main

// Hostile functions: a function of each runtime that, on request, tries
// what a stranger's code would try against the node, and what kiln promises
// in each case. The handlers are testdata/probe (go) and
// testdata/hostile/<runtime>; each answers "name=result" lines, result
// "ok" when an attempt succeeded, else the errno's name or its text.

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hostileRuntime is one runtime's hostile function.
type hostileRuntime struct {
	runtime string
	dir     string         // testdata/hostile/<runtime>; "" for the go probe
	spec    map[string]any // added to the function's spec
	// cannot names the attempts the runtime cannot make with what its
	// root filesystem holds, and why; their results are absent.
	cannot map[string]string
	// forkBomb are the classes a fork bomb may end in: the handler's own
	// error, or the container's collapse.
	forkBomb []string
	// known are failures of this runtime seen and not fixed yet, by
	// check: the check logs them rather than failing.
	known map[string]string
}

var hostileRuntimes = []hostileRuntime{
	{runtime: "go", forkBomb: []string{"function_error", "pids_exhausted"}},
	{runtime: "python3", dir: "python3", forkBomb: []string{"function_error", "pids_exhausted"}},
	{runtime: "node", dir: "node",
		cannot: map[string]string{
			"unshare": "node has no unshare(2) without a native module",
			"mount":   "node has no mount(2) without a native module",
			"ptrace":  "node has no ptrace(2) without a native module",
			"bpf":     "node has no bpf(2) without a native module",
		},
		// Node can only fork copies of node, each tens of MiB: the memory
		// limit may come before the pids limit, or the node copies,
		// starting slowly on two CPUs, may outlast the call's timeout.
		forkBomb: []string{"function_error", "pids_exhausted", "oom", "deadline_exceeded"}},
	// A forked ruby dirties its copy of the interpreter's heap: the memory
	// limit may come before the pids limit. Runs have also ended at the
	// function's timeout (cause not found yet).
	{runtime: "ruby", dir: "ruby", forkBomb: []string{"function_error", "pids_exhausted", "oom", "deadline_exceeded"}},
	{runtime: "binary", dir: "binary", spec: map[string]any{"handler": "handler.sh"},
		cannot: map[string]string{
			"connect": "dash has no /dev/tcp and the rootfs no nc",
			"unshare": "the rootfs has no unshare(1) (util-linux)",
			"mount":   "the rootfs has no mount(8)",
			"ptrace":  "the rootfs has no tool that calls ptrace(2)",
			"bpf":     "the rootfs has no tool that calls bpf(2)",
		},
		forkBomb: []string{"function_error", "pids_exhausted"},
		known: map[string]string{
			"huge response": "after a fork bomb and then a 70 MiB answer, the next call failed 502 pids_exhausted although the container held one process (cause not found; a later failure blamed on pids events counted after the bomb's call is one suspect)",
			"flood":         "a handler's stderr flood (seen with 2 MB on a loaded machine) outlasted the executor's WaitDelay after the handler exited: the call failed 500 \"exec: WaitDelay expired before I/O complete\"",
		}},
}

// errnoNames are the errors the hostile attempts expect, by the names the
// handlers give them; a handler that only has the message (the shell)
// gives its text, which errnoName maps back.
var errnoNames = map[string]syscall.Errno{
	"EPERM": syscall.EPERM, "EACCES": syscall.EACCES, "EROFS": syscall.EROFS, "ENOSPC": syscall.ENOSPC,
	"ENOENT": syscall.ENOENT, "ENETUNREACH": syscall.ENETUNREACH, "EINVAL": syscall.EINVAL,
}

// errnoName returns the errno name v stands for, or v.
func errnoName(v string) string {
	if _, ok := errnoNames[v]; ok {
		return v
	}
	for name, e := range errnoNames {
		if strings.Contains(strings.ToLower(v), e.Error()) {
			return name
		}
	}
	if strings.Contains(v, "Directory nonexistent") { // dash's ENOENT on a redirection
		return "ENOENT"
	}
	return v
}

// hostileExpect is what each attempt must come to, whatever the runtime.
var hostileExpect = map[string][]string{
	// Writes to the read-only root, the code and kiln's socket directory.
	"root": {"EROFS"}, "code": {"EROFS", "EACCES"}, "kilnw": {"EROFS", "EACCES"},
	// The host's files through /proc, and the host's kernel knobs.
	"shadow": {"EACCES", "ENOENT"}, "escape": {"ENOENT"}, "pid1root": {"ENOENT"}, "marker": {"ENOENT"},
	"sys": {"EROFS", "EACCES"}, "sysrq": {"EROFS", "EACCES", "ENOENT"}, "kcore": {"EACCES", "ENOENT", "read 0"},
	// No network but lo.
	"connect": {"ENETUNREACH"}, "ifaces": {"lo"},
	// No privilege.
	"uid": {"65534"}, "unshare": {"EPERM"}, "mount": {"EPERM"}, "bpf": {"EPERM"},
	// ptrace of another process of the container (its executor, pid 1, or
	// a child): all run as one uid, so the driver's seccomp profile
	// refuses ptrace and process_vm_readv/writev outright.
	"ptrace": {"EPERM"},
	// The /tmp tmpfs is 16 MiB.
	"tmp": {"ENOSPC"},
	// Another container's socket is not there; its own directory holds
	// only its own socket.
	"other": {"ENOENT"},
}

// parseLines reads a hostile handler's "name=result" lines.
func parseLines(b []byte) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// regularFileBytes is the size of the regular files under dir.
func regularFileBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// containerProcesses counts the processes in the cgroups of fn's
// containers, and the zombies among them.
func containerProcesses(t *testing.T, k *kilnd, fn string) (all, zombies int) {
	t.Helper()
	for _, id := range k.containers(t) {
		if !strings.HasPrefix(id, fn+".") {
			continue
		}
		for _, p := range cgroupPids(id) {
			all++
			if b, err := os.ReadFile("/proc/" + p + "/stat"); err == nil {
				if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
					zombies++
				}
			}
		}
	}
	return all, zombies
}

// hostProcesses returns the host's processes whose command line holds s.
func hostProcesses(s string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " "))
		}
	}
	return found
}

// TestHostileFunctions deploys a hostile function of each runtime (go,
// python3, node, ruby, binary) and shows, for each thing it tries, what kiln
// promises: the sandbox refuses writes to its root, the host's files through
// /proc, the network, every privilege and other containers' sockets; /tmp
// ends at 16 MiB; a huge response, a fork bomb, a memory hog and a handler
// that never answers each get their class of error while kilnd and the next
// call are fine; a stdout flood leaves the answer intact and kilnd's memory
// bounded; a process started in the background lives as long as its
// container, and no longer. Failures a runtime is known to have (its
// known map) are logged, not failed: docs/RELIABILITY.md lists them.
func TestHostileFunctions(t *testing.T) {
	requireIntegration(t)
	if err := os.MkdirAll(runtimesCache, 0o700); err != nil {
		t.Fatal(err)
	}
	k := startKilnd(t, shortTempDir(t), "--runtimes-dir", runtimesCache)
	pid := k.cmd.Process.Pid
	// A host file no container may read, whatever path it tries.
	marker := filepath.Join(k.dataDir, "hostile-marker")
	if err := os.WriteFile(marker, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another function's container, whose socket the hostile ones try.
	k.deploy(t, "hostile-other", probeSpec(nil))
	if r := k.do(t, "POST", "/invoke/hostile-other", []byte("x")); r.status != 202 {
		t.Fatalf("other function: %d %s", r.status, r.body)
	}
	otherID := k.containerOf(t, "hostile-other")
	otherSock := filepath.Join(k.dataDir, "run", otherID[strings.LastIndexByte(otherID, '.')+1:], "agent.sock")
	if _, err := os.Stat(otherSock); err != nil {
		t.Fatalf("the other container's socket: %v", err)
	}

	for i, rt := range hostileRuntimes {
		t.Run(rt.runtime, func(t *testing.T) {
			fn := "hostile-" + rt.runtime
			deploy := func(timeout string) {
				spec := map[string]any{"runtime": rt.runtime, "memory_mb": 256, "timeout": timeout,
					"env": map[string]string{"HOST_MARKER": marker}}
				for k, v := range rt.spec {
					spec[k] = v
				}
				if rt.dir == "" {
					k.deploy(t, fn, probeSpec(spec))
				} else if r := deployDir(t, k, fn, filepath.Join("testdata", "hostile", rt.dir), spec); r.status != 200 {
					t.Fatalf("deploy: %d %s", r.status, r.body)
				}
			}
			// Time enough for a flood or a fork bomb of slow forks; the
			// handler that never answers gets less.
			deploy("20s")
			// fresh gives the function a new container: deleted and
			// deployed again (a deploy of the same spec keeps the
			// container it has).
			fresh := func() {
				if r := k.do(t, "DELETE", "/v1/functions/"+fn, nil); r.status != 204 {
					t.Fatalf("delete %s: %d %s", fn, r.status, r.body)
				}
				deploy("20s")
			}
			call := func(body string) response {
				t.Helper()
				r, err := invoke(k.url, fn, body)
				if err != nil {
					t.Fatalf("%s: %v", body, err)
				}
				return r
			}
			// echoes checks the function answers as it should: the probe
			// with 202 and "probe:", the others with 200 and the body.
			echoes := func(what string) response {
				t.Helper()
				r := call("echo " + what)
				want, status := "echo "+what, 200
				if rt.runtime == "go" {
					want, status = "probe:echo "+what, 202
				}
				if r.status != status || string(r.body) != want {
					t.Fatalf("echo after %s = %d %q, want %d %q\n%s", what, r.status, r.body, status, want, tailLines(k.logs.String(), 20))
				}
				return r
			}
			echoes("deploy")

			t.Run("sandbox", func(t *testing.T) {
				got := map[string]string{}
				for _, what := range []string{"root", "proc", "net", "priv", "sock " + otherSock, "tmp"} {
					r := call(what)
					if r.status/100 != 2 {
						t.Fatalf("%s = %d %s", what, r.status, r.body)
					}
					for k, v := range parseLines(r.body) {
						got[k] = v
					}
				}
				t.Logf("%s", got)
				for key, want := range hostileExpect {
					v, ok := got[key]
					if why, cannot := rt.cannot[key]; cannot {
						if ok {
							t.Errorf("%s = %q, but %s cannot attempt it (%s)", key, v, rt.runtime, why)
						}
						continue
					}
					if !ok {
						t.Errorf("no result for %s", key)
						continue
					}
					if !slices.Contains(want, errnoName(v)) {
						t.Errorf("%s = %q, want one of %v", key, v, want)
					}
				}
				if n, _ := strconv.Atoi(got["tmp_bytes"]); n < 15<<20 || n > 16<<20 {
					t.Errorf("/tmp took %s bytes before ENOSPC, want about 16 MiB", got["tmp_bytes"])
				}
				if got["kiln"] != "agent.sock" {
					t.Errorf("/kiln lists %q, want only agent.sock", got["kiln"])
				}
			})

			t.Run("tmp stays inside", func(t *testing.T) {
				before := regularFileBytes(k.dataDir)
				if r := call("tmp"); !strings.Contains(string(r.body), "tmp=") {
					t.Fatalf("tmp = %d %s", r.status, r.body)
				}
				if grew := regularFileBytes(k.dataDir) - before; grew > 4<<20 {
					t.Errorf("filling /tmp grew the data dir by %d bytes", grew)
				}
			})

			t.Run("stdout flood", func(t *testing.T) {
				before := rssBytes(t, pid)
				t0 := time.Now()
				r := call("flood")
				took := time.Since(t0)
				if r.status/100 != 2 || string(r.body) != "intact" && string(r.body) != "intact\n" {
					if why := rt.known["flood"]; why != "" {
						t.Skipf("KNOWN: %s (got %d %s)", why, r.status, r.body)
					}
					t.Fatalf("flood = %d %q, want the answer intact", r.status, r.body)
				}
				var logs string
				for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
					logs = string(k.do(t, "GET", "/v1/functions/"+fn+"/logs?tail=5", nil).body)
					// Lines are read as the flood goes; on a loaded machine
					// its last line has not always arrived within 20 s.
					if strings.Contains(logs, "flood line 9999") || strings.Contains(logs, "flood line 10000") {
						break
					}
					if time.Now().After(deadline) {
						if !strings.Contains(logs, "flood line") {
							t.Fatalf("no flood line in the logs after 20s; their tail:\n%s", logs)
						}
						t.Logf("the flood's last line is not in the logs after 20s; their tail:\n%s", logs)
						break
					}
				}
				after := rssBytes(t, pid)
				t.Logf("a 1 MB flood answered in %v; kilnd RSS %d MiB before, %d MiB after", took.Round(time.Millisecond), before>>20, after>>20)
				if after-before > 64<<20 {
					t.Errorf("a 1 MB stdout flood grew kilnd's RSS by %d MiB", (after-before)>>20)
				}
			})

			t.Run("fork bomb", func(t *testing.T) {
				r := call("forkbomb")
				class := r.header.Get("X-Kiln-Error")
				t.Logf("fork bomb: %d %s %.200s", r.status, class, r.body)
				if !slices.Contains(rt.forkBomb, class) {
					t.Errorf("fork bomb = %d %s %s, want one of %v", r.status, class, r.body, rt.forkBomb)
				}
				all, zombies := containerProcesses(t, k, fn)
				t.Logf("after the fork bomb the function's containers hold %d processes, %d of them zombies", all, zombies)
				for i := range 3 {
					r, err := invoke(k.url, fn, "echo again")
					if err == nil && r.status/100 == 2 {
						continue
					}
					if why := rt.known["fork bomb"]; why != "" {
						t.Logf("KNOWN: %s (call %d after the bomb: %d %s)", why, i+1, r.status, r.body)
						fresh() // a new container for the checks that follow
						return
					}
					t.Fatalf("call %d after the fork bomb: %v %d %s", i+1, err, r.status, r.body)
				}
			})

			t.Run("huge response", func(t *testing.T) {
				r := call("big")
				class := r.header.Get("X-Kiln-Error")
				t.Logf("a 70 MiB answer: %d %s %.200s", r.status, class, r.body)
				if r.status != 502 || class != "response_too_large" {
					t.Errorf("a 70 MiB answer = %d %s, want 502 response_too_large", r.status, class)
				}
				if why := rt.known["huge response"]; why != "" {
					if r := call("echo big"); r.status/100 != 2 {
						t.Logf("KNOWN: %s (got %d %s)", why, r.status, r.body)
						fresh()
						return
					}
				}
				echoes("big")
			})

			t.Run("memory past its limit", func(t *testing.T) {
				r := call("oom")
				if r.status != 502 || r.header.Get("X-Kiln-Error") != "oom" {
					t.Errorf("oom = %d %s %s, want 502 oom", r.status, r.header.Get("X-Kiln-Error"), r.body)
				}
				// The kernel kills the container's largest process. For the
				// binary runtime that is the call's own program, most
				// often, and the executor serves on in the same
				// container; elsewhere the worker or the function dies
				// and the container is replaced.
				start := echoes("oom").header.Get("X-Kiln-Start")
				if start != "cold" && !(rt.runtime == "binary" && start == "warm") {
					t.Errorf("the call after an oom started %q, want cold (a new container)", start)
				}
			})

			t.Run("never answering", func(t *testing.T) {
				deploy("2s")
				t0 := time.Now()
				r := call("hang")
				took := time.Since(t0)
				if r.status != 504 || took < 2*time.Second || took > 7*time.Second {
					t.Errorf("hang = %d %s after %v, want 504 after 2s", r.status, r.body, took)
				}
				if start := echoes("hang").header.Get("X-Kiln-Start"); start != "cold" {
					t.Errorf("the call after a timeout started %q, want cold (a new container)", start)
				}
			})

			t.Run("processes left behind", func(t *testing.T) {
				tag := strconv.Itoa(987600 + i)
				r := call("spawn " + tag)
				if r.status/100 != 2 {
					t.Fatalf("spawn = %d %s", r.status, r.body)
				}
				inner := strings.TrimSpace(string(r.body))
				var ids []string
				for _, id := range k.containers(t) {
					if strings.HasPrefix(id, fn+".") {
						ids = append(ids, id)
					}
				}
				r = call("alive " + inner)
				if got := strings.TrimSpace(string(r.body)); got != "alive" {
					t.Errorf("the process a call left behind is %q at the next call, want alive", got)
				}
				procs := hostProcesses(tag)
				if len(procs) == 0 {
					t.Errorf("the host sees no process of %s", tag)
				}
				if all, _ := containerProcesses(t, k, fn); all < 2 {
					t.Errorf("the function's containers %v hold %d processes, want the executor and the one left behind at least", ids, all)
				}
				if r := k.do(t, "DELETE", "/v1/functions/"+fn, nil); r.status != 204 {
					t.Fatalf("delete = %d %s", r.status, r.body)
				}
				eventually(t, 10*time.Second, "no process of the deleted function", func() bool {
					for _, id := range ids {
						if len(cgroupPids(id)) > 0 {
							return false
						}
					}
					return len(hostProcesses(tag)) == 0
				})
			})
		})
	}
	if r := k.do(t, "GET", "/healthz", nil); r.status != 200 {
		t.Errorf("kilnd health after the hostile functions: %d %s", r.status, r.body)
	}
	t.Logf("kilnd RSS at the end: %d MiB", rssBytes(t, pid)>>20)
}

// latencies calls fn n times and returns the p50 and p99 of its answers;
// an answer other than 202 fails the test.
func latencies(t *testing.T, k *kilnd, fn string, n int) (p50, p99 time.Duration) {
	t.Helper()
	d := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		r, err := invoke(k.url, fn, "x")
		if err != nil || r.status != 202 {
			t.Fatalf("neighbour: %v %d %s", err, r.status, r.body)
		}
		d = append(d, time.Since(t0))
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[n/2], d[n*99/100]
}

// TestHostileNeighbourLatency measures a neighbour function's p50 and p99
// over 200 calls with nothing else running, then while another function
// runs a fork bomb, a memory hog and a CPU loop over and over. It logs the
// figures; its only bound is a generous sanity one (p99 under 1 s).
func TestHostileNeighbourLatency(t *testing.T) {
	requireIntegration(t)
	k := startKilnd(t, shortTempDir(t))
	k.deploy(t, "neighbour", probeSpec(nil))
	k.deploy(t, "attacker", probeSpec(map[string]any{"memory_mb": 256, "timeout": "3s"}))
	latencies(t, k, "neighbour", 20) // warm
	p50, p99 := latencies(t, k, "neighbour", 200)
	t.Logf("neighbour idle: p50 %v p99 %v", p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond))
	for _, attack := range []string{"forkbomb", "oom", "spin"} {
		t.Run(attack, func(t *testing.T) {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var calls int
			var classes []string
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					r, err := invoke(k.url, "attacker", attack)
					calls++
					if err == nil {
						classes = append(classes, fmt.Sprint(r.status, r.header.Get("X-Kiln-Error")))
					}
				}
			}()
			time.Sleep(200 * time.Millisecond) // the attack is under way
			p50, p99 := latencies(t, k, "neighbour", 200)
			close(stop)
			wg.Wait()
			t.Logf("neighbour during %s: p50 %v p99 %v (%d attacking calls: %v)", attack,
				p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), calls, compact(classes))
			if p99 > time.Second {
				t.Errorf("neighbour p99 %v during %s", p99, attack)
			}
		})
	}
}

// compact counts the repeated strings of ss.
func compact(ss []string) string {
	n := map[string]int{}
	for _, s := range ss {
		n[s]++
	}
	b, _ := json.Marshal(n)
	return string(b)
}
