package main

// containerd going away under a running kilnd: the managed daemon killed and
// restarted, the managed daemon that will not come back, and an external
// daemon stopped and started again.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnfx/kiln/pool/containerd/daemon"
)

// eventually polls cond every 20 ms until it holds, failing after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// flakyContainerd writes a stand-in for the containerd binary that runs the
// real one, except while the returned file exists: then it exits at once
// with an error, as a daemon that cannot start.
func flakyContainerd(t *testing.T) (binary, failFile string) {
	t.Helper()
	real, err := exec.LookPath("containerd")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	binary, failFile = filepath.Join(dir, "containerd"), filepath.Join(dir, "fail")
	script := fmt.Sprintf("#!/bin/sh\nif [ -e '%s' ]; then echo 'containerd stand-in: told to fail' >&2; exit 1; fi\nexec '%s' \"$@\"\n", failFile, real)
	if err := os.WriteFile(binary, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return binary, failFile
}

// daemonPid reads the pid of kilnd's managed containerd.
func daemonPid(t *testing.T, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "containerd", "containerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// invoke calls a function; unlike kilnd.do it may run outside the test's
// goroutine.
func invoke(url, fn, body string) (response, error) {
	resp, err := http.Post(url+"/invoke/"+fn, "application/octet-stream", strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, b}, err
}

// load calls fn sequentially, a call every 50 ms, until stopped, and counts
// the answers.
type load struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	ok     int      // 202 answers
	thawed int      // of which from a frozen container
	bad    []string // anything else
}

func startLoad(url, fn string) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			r, err := invoke(url, fn, "x")
			l.mu.Lock()
			switch {
			case err != nil:
				l.bad = append(l.bad, err.Error())
			case r.status != 202:
				l.bad = append(l.bad, fmt.Sprintf("%d %s", r.status, r.body))
			default:
				l.ok++
				if r.header.Get("X-Kiln-Start") == "thawed" {
					l.thawed++
				}
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// counts returns the answers so far.
func (l *load) counts() (ok, thawed int, bad []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.thawed, slices.Clone(l.bad)
}

// end stops the calls and waits for the last one; it may be called again.
func (l *load) end() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

func containerIDs(cs []containerInfo) []string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// allFrozen reports whether fn has n containers, every one frozen.
func allFrozen(t *testing.T, k *kilnd, fn string, n int) bool {
	cs := k.listContainers(t, fn)
	for _, c := range cs {
		if c.State != "frozen" {
			return false
		}
	}
	return len(cs) == n
}

// cgroupPids returns the processes of kiln container id, from its freezer
// (cgroup v1) or unified (v2) cgroup; none once the cgroup is gone.
func cgroupPids(id string) []string {
	for _, dir := range []string{"/sys/fs/cgroup/freezer/kiln", "/sys/fs/cgroup/kiln"} {
		if b, err := os.ReadFile(filepath.Join(dir, id, "cgroup.procs")); err == nil {
			return strings.Fields(string(b))
		}
	}
	return nil
}

// ctrList runs ctr against the containerd at address and returns the ids it
// lists of kind ("containers" or "tasks") in kiln's namespace.
func ctrList(t *testing.T, address, kind string) []string {
	t.Helper()
	out, err := exec.Command("ctr", "--address", address, "-n", "kiln", kind, "ls", "-q").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s ls: %v\n%s", kind, err, out)
	}
	return strings.Fields(string(out))
}

// processesOf returns the command lines of running processes whose command
// line starts with prefix (a base name) and mentions dir.
func processesOf(prefix, dir string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), prefix) && strings.Contains(string(b), dir) {
			found = append(found, e.Name()+": "+strings.Join(args, " "))
		}
	}
	return found
}

// assertNothingLeft checks, after kilnd stopped, that nothing it ran is
// left (see findLeftovers).
func assertNothingLeft(t *testing.T, dir, ctrdDir string, ids []string) {
	t.Helper()
	l := findLeftovers(t, dir, ctrdDir, ids)
	for _, what := range l.all() {
		t.Errorf("left behind: %s", what)
	}
}

// leftovers is what a stopped kilnd left behind, each entry saying what it
// is.
type leftovers struct {
	containers []string // containers and tasks in containerd, containers' directories, containers' processes
	mounts     []string // mount points under the data directory
	processes  []string // containerd and shims serving the data directory
}

func (l leftovers) all() []string {
	return slices.Concat(l.containers, l.mounts, l.processes)
}

// findLeftovers looks, after kilnd stopped, for anything it ran that is
// still there: a process in the cgroup of one of the containers ids, a
// shim or containerd serving the daemon in ctrdDir, a mount under dir
// (other than dir itself), a directory left in the driver's state dir
// (dir/driver, but for its images) or the containers' socket dir (dir/run),
// and a container or task in the daemon's store (read by starting it once
// more).
func findLeftovers(t *testing.T, dir, ctrdDir string, ids []string) leftovers {
	t.Helper()
	var l leftovers
	for _, id := range ids {
		if pids := cgroupPids(id); len(pids) > 0 {
			l.containers = append(l.containers, fmt.Sprintf("container %s still has processes %v", id, pids))
		}
	}
	for _, p := range processesOf("containerd", ctrdDir) {
		l.processes = append(l.processes, "containerd or shim still runs: "+p)
	}
	for _, m := range mountsUnder(dir) {
		l.mounts = append(l.mounts, "mount under the data dir: "+m)
	}
	for _, sub := range []string{"driver", "run"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			if sub == "driver" && e.Name() == "images" {
				continue
			}
			l.containers = append(l.containers, fmt.Sprintf("container directory %s/%s", sub, e.Name()))
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := daemon.Start(ctx, ctrdDir)
	if err != nil {
		t.Fatalf("start containerd to look at its store: %v", err)
	}
	defer c.Stop(ctx)
	for _, kind := range []string{"containers", "tasks"} {
		for _, id := range ctrList(t, c.Address(), kind) {
			l.containers = append(l.containers, fmt.Sprintf("%s %s in containerd", kind[:len(kind)-1], id))
		}
	}
	return l
}

// mountsUnder returns the mount points below dir (not dir itself) that this
// process's mount namespace has, from /proc/self/mountinfo.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return []string{"cannot read /proc/self/mountinfo: " + err.Error()}
	}
	var found []string
	for line := range strings.SplitSeq(string(b), "\n") {
		// id parent major:minor root mount-point options ...
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			found = append(found, f[4])
		}
	}
	return found
}

// TestContainerdRestartKeepsServing kills kilnd's containerd with SIGKILL
// under load and keeps it from coming back for a while: kilnd stays up,
// warm and frozen containers keep answering, a call that needs a new
// container gets 503 with Retry-After, a function deleted and a container
// that crashed meanwhile are cleaned up once containerd is back (a new
// pid), the crashed one is replaced, new containers start again, and after
// SIGTERM nothing is left.
func TestContainerdRestartKeepsServing(t *testing.T) {
	requireIntegration(t)
	dir := shortTempDir(t)
	binary, failFile := flakyContainerd(t)
	k := startKilnd(t, dir, "--containerd-binary", binary)
	w := watchRSS(k)
	direct := 0 // calls sent here, beside the load's
	k.deploy(t, "ctrd-warm", probeSpec(map[string]any{"min_warm": 2, "freeze_after": "0.02s"}))
	k.deploy(t, "ctrd-cold", probeSpec(nil))
	k.deploy(t, "ctrd-gone", probeSpec(map[string]any{"min_warm": 1}))
	waitFor(t, "pre-forked containers", func() bool {
		return allFrozen(t, k, "ctrd-warm", 2) && allFrozen(t, k, "ctrd-gone", 1)
	})
	warm := containerIDs(k.listContainers(t, "ctrd-warm"))
	gone := containerIDs(k.listContainers(t, "ctrd-gone"))
	seen := append(slices.Clone(warm), gone...)

	l := startLoad(k.url, "ctrd-warm")
	t.Cleanup(l.end)
	if err := os.WriteFile(failFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	oldPid := daemonPid(t, dir)
	if err := syscall.Kill(oldPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "kilnd to see containerd exit", func() bool {
		return strings.Contains(k.logs.String(), `"msg":"containerd exited; restarting it"`)
	})
	_, thawedAtKill, _ := l.counts()

	// A new container cannot be had: 503, at once.
	r := k.do(t, "POST", "/invoke/ctrd-cold", []byte("x"))
	direct++
	if r.status != 503 || r.header.Get("Retry-After") == "" || r.header.Get("X-Kiln-Error") != "unavailable" {
		t.Fatalf("call needing a new container while containerd is down = %d %q Retry-After=%q, want 503 unavailable with Retry-After\n%s",
			r.status, r.header.Get("X-Kiln-Error"), r.header.Get("Retry-After"), r.body)
	}
	// Stops are not lost: a deleted function's container dies now.
	if r := k.do(t, "DELETE", "/v1/functions/ctrd-gone", nil); r.status != 204 {
		t.Fatalf("delete while containerd is down = %d %s", r.status, r.body)
	}
	if pids := cgroupPids(gone[0]); len(pids) > 0 {
		t.Errorf("deleted function's container still runs %v", pids)
	}
	// A crash: the container is stopped now and replaced later.
	r = k.do(t, "POST", "/invoke/ctrd-warm", []byte("exit"))
	direct++
	if r.status != 502 {
		t.Fatalf("crashing call = %d %s, want 502", r.status, r.body)
	}
	waitFor(t, "the crashed container to be stopped", func() bool { return len(k.listContainers(t, "ctrd-warm")) == 1 })
	survivor := k.listContainers(t, "ctrd-warm")[0].ID
	// Frozen containers thaw and answer without containerd.
	waitFor(t, "calls to thawed containers while containerd is down", func() bool {
		_, thawed, _ := l.counts()
		return thawed >= thawedAtKill+3
	})

	// containerd may come back now.
	if err := os.Remove(failFile); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "containerd restarted", func() bool {
		return strings.Contains(k.logs.String(), `"msg":"containerd restarted"`)
	})
	if pid := daemonPid(t, dir); pid == oldPid {
		t.Errorf("containerd pid %d after the restart, the same as before", pid)
	}
	eventually(t, 30*time.Second, "a new container to start", func() bool {
		r := k.do(t, "POST", "/invoke/ctrd-cold", []byte("x"))
		direct++
		return r.status == 202
	})
	waitFor(t, "the crashed container replaced", func() bool { return len(k.listContainers(t, "ctrd-warm")) == 2 })
	now := containerIDs(k.listContainers(t, "ctrd-warm"))
	if !slices.Contains(now, survivor) {
		t.Errorf("warm containers after the restart %v lack the survivor %s", now, survivor)
	}
	want := append(now, containerIDs(k.listContainers(t, "ctrd-cold"))...)
	seen = append(seen, want...)
	slices.Sort(want)
	waitFor(t, "containerd to hold exactly the live containers", func() bool {
		got := k.containers(t)
		slices.Sort(got)
		return slices.Equal(got, want)
	})

	l.end()
	ok, thawed, bad := l.counts()
	if len(bad) > 0 || ok == 0 {
		t.Errorf("warm calls: %d answered (%d thawed), failed: %v", ok, thawed, bad)
	}
	t.Logf("warm calls throughout: %d answered, %d of them thawed", ok, thawed)
	sent := ok + len(bad) + direct
	var records int64
	waitFor(t, "every call's record", func() bool {
		records = k.reportCount(t, "ctrd-warm") + k.reportCount(t, "ctrd-cold")
		return records >= int64(sent-len(bad))
	})
	if records != int64(sent-len(bad)) {
		t.Errorf("%d records of %d answered calls", records, sent-len(bad))
	}
	rss := w.end()
	figures{
		fault: "containerd-restart", sent: sent, answered: sent - len(bad), records: int(records),
		left: stopAndLook(t, k, seen), rssMiB: rss,
		extra: []string{fmt.Sprintf("thawed_since_kill=%d", thawed-thawedAtKill)},
	}.report(t)
}

// TestContainerdGiveUp: when the managed containerd will not start again
// within the restart limit, kilnd kills its containers' processes through
// their cgroups, stops its shims and exits non-zero; the next kilnd on the
// same data directory starts clean.
func TestContainerdGiveUp(t *testing.T) {
	requireIntegration(t)
	dir := shortTempDir(t)
	binary, failFile := flakyContainerd(t)
	k := startKilnd(t, dir, "--containerd-binary", binary, "--containerd-restarts", "2")
	k.deploy(t, "ctrd-giveup", probeSpec(map[string]any{"min_warm": 2}))
	waitFor(t, "pre-forked containers", func() bool { return allFrozen(t, k, "ctrd-giveup", 2) })
	ids := containerIDs(k.listContainers(t, "ctrd-giveup"))
	if err := os.WriteFile(failFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(daemonPid(t, dir), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.exited:
	case <-time.After(time.Minute):
		t.Fatalf("kilnd still runs a minute after its containerd stopped coming back\n%s", k.logs)
	}
	if k.err == nil {
		t.Errorf("kilnd exited 0 after giving up on containerd\n%s", k.logs)
	}
	if !strings.Contains(k.logs.String(), `"msg":"giving up on containerd"`) {
		t.Errorf("no word of giving up in the log\n%s", k.logs)
	}
	for _, id := range ids {
		if pids := cgroupPids(id); len(pids) > 0 {
			t.Errorf("container %s still has processes %v after kilnd gave up", id, pids)
		}
	}
	if ps := processesOf("containerd", dir); len(ps) > 0 {
		t.Errorf("containerd or shims still run after kilnd gave up:\n%s", strings.Join(ps, "\n"))
	}

	if err := os.Remove(failFile); err != nil {
		t.Fatal(err)
	}
	k2 := startKilnd(t, dir)
	now := k2.containers(t) // the new kilnd pre-forks again
	for _, id := range ids {
		if slices.Contains(now, id) {
			t.Errorf("container %s of the kilnd that gave up is still in containerd", id)
		}
	}
	if err := k2.stop(); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, dir, filepath.Join(dir, "containerd"), append(ids, now...))
}

// TestExternalContainerdReconnect: with --containerd, kilnd outlives the
// daemon it was given: calls to a warm container keep succeeding, a call
// that needs a new container gets 503, and once a daemon answers on the
// socket again new containers start.
func TestExternalContainerdReconnect(t *testing.T) {
	requireIntegration(t)
	dir := shortTempDir(t)
	ctrdDir := filepath.Join(dir, "ext")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := daemon.Start(ctx, ctrdDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(context.Background()) })
	k := startKilnd(t, filepath.Join(dir, "data"), "--containerd", c.Address())
	k.deploy(t, "ext-warm", probeSpec(map[string]any{"min_warm": 1}))
	k.deploy(t, "ext-cold", probeSpec(nil))
	waitFor(t, "a pre-forked container", func() bool { return allFrozen(t, k, "ext-warm", 1) })
	seen := containerIDs(k.listContainers(t, "ext-warm"))

	if err := syscall.Kill(c.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.Exited()
	for range 3 {
		if r := k.do(t, "POST", "/invoke/ext-warm", []byte("x")); r.status != 202 {
			t.Fatalf("warm call while containerd is down = %d %s", r.status, r.body)
		}
	}
	r := k.do(t, "POST", "/invoke/ext-cold", []byte("x"))
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("call needing a new container while containerd is down = %d Retry-After=%q %s, want 503 with Retry-After",
			r.status, r.header.Get("Retry-After"), r.body)
	}
	select {
	case <-k.exited:
		t.Fatalf("kilnd exited when its external containerd went away: %v\n%s", k.err, k.logs)
	default:
	}

	c, err = daemon.Start(ctx, ctrdDir)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "a new container to start", func() bool {
		return k.do(t, "POST", "/invoke/ext-cold", []byte("x")).status == 202
	})
	if r := k.do(t, "POST", "/invoke/ext-warm", []byte("x")); r.status != 202 {
		t.Fatalf("warm call after the restart = %d %s", r.status, r.body)
	}
	seen = append(seen, containerIDs(k.listContainers(t, "ext-cold"))...)
	if got := ctrList(t, c.Address(), "containers"); len(got) != 2 {
		t.Errorf("containers in containerd: %v, want the two of kilnd", got)
	}
	if err := k.stop(); err != nil {
		t.Fatal(err)
	}
	if got := ctrList(t, c.Address(), "containers"); len(got) != 0 {
		t.Errorf("containers left after kilnd stopped: %v", got)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, dir, ctrdDir, seen)
}
