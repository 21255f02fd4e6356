// Command probe is a test function: it reports what it sees inside its
// container and misbehaves on request.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/kilnfx/kiln/executor/sdk"
)

// Report is what the probe says about its container.
type Report struct {
	UID, GID     int
	RootWritable bool
	TmpWritable  bool
	TmpError     string
	Mounts       string
	Interfaces   []string
	Status       map[string]string // selected lines of /proc/self/status
}

func handle(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	if n, ok := strings.CutPrefix(string(req.Body), "mib:"); ok {
		// Answer n MiB, every page written.
		mib, err := strconv.Atoi(n)
		if err != nil || mib < 0 {
			return nil, fmt.Errorf("mib:%s: want a count of MiB", n)
		}
		b := make([]byte, mib<<20)
		for i := range b {
			b[i] = byte(i)
		}
		return &sdk.Response{Body: b}, nil
	}
	if resp, ok, err := hostile(ctx, string(req.Body)); ok {
		return resp, err
	}
	switch string(req.Body) {
	case "report":
		r := Report{UID: os.Getuid(), GID: os.Getgid(), Status: map[string]string{}}
		if f, err := os.Create("/probe-write"); err == nil {
			r.RootWritable = true
			f.Close()
		}
		if f, err := os.Create("/tmp/probe-write"); err == nil {
			r.TmpWritable = true
			f.Close()
		} else {
			r.TmpError = err.Error()
			if st, err := os.Stat("/tmp"); err == nil {
				r.TmpError += fmt.Sprintf(" (/tmp mode %v sys %+v; uid %d euid %d groups %v)", st.Mode(), st.Sys(), os.Getuid(), os.Geteuid(), func() []int { g, _ := os.Getgroups(); return g }())
			}
		}
		if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
			r.Mounts = string(b)
		}
		ifs, _ := net.Interfaces()
		for _, i := range ifs {
			r.Interfaces = append(r.Interfaces, i.Name)
		}
		if f, err := os.Open("/proc/self/status"); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				k, v, _ := strings.Cut(sc.Text(), ":")
				switch k {
				case "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp":
					r.Status[k] = strings.TrimSpace(v)
				}
			}
			f.Close()
		}
		b, _ := json.Marshal(r)
		return &sdk.Response{Header: http.Header{"Content-Type": {"application/json"}}, Body: b}, nil
	case "exit":
		os.Exit(3)
	case "oom":
		// Allocate and touch memory until the kernel kills the process
		// at its container's limit.
		var held [][]byte
		for {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			held = append(held, b)
		}
	case "forkbomb":
		return forkBomb()
	case "big":
		// 70 MiB: over the response limit.
		return &sdk.Response{Body: make([]byte, 70<<20)}, nil
	case "hang":
		// Ignore the call's deadline for 5 s.
		time.Sleep(5 * time.Second)
		return &sdk.Response{Body: []byte("hung")}, nil
	case "spin":
		// Burn CPU for ever, ignoring the call's context: only killing
		// the container stops it.
		for n := uint64(0); ; n++ {
			spun = n
		}
	case "panic":
		panic("probe panicked")
	case "print":
		fmt.Println("probe says hello", req.ID)
		fmt.Fprintln(os.Stderr, "probe warns", req.ID)
		return &sdk.Response{Body: []byte(req.ID)}, nil
	case "nap":
		time.Sleep(200 * time.Millisecond)
		return &sdk.Response{Body: []byte("napped")}, nil
	case "sleep":
		select {
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
			fmt.Println("probe sleep cancelled", req.ID, ctx.Err())
		}
		return &sdk.Response{Body: []byte("slept")}, nil
	}
	h := http.Header{"X-Probe-Method": {req.Method}, "X-Probe-Path": {req.Path}}
	return &sdk.Response{Status: http.StatusAccepted, Header: h, Body: append([]byte("probe:"), req.Body...)}, nil
}

// spun is written by the "spin" loop so that the compiler keeps it.
var spun uint64

// childEnv marks a process forkBomb started: it only waits to be killed.
const childEnv = "PROBE_CHILD=1"

// forkBomb starts copies of the probe until the container's pids limit
// refuses one, then kills them and fails the call with the refusal.
func forkBomb() (*sdk.Response, error) {
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			c.Process.Kill()
			c.Wait()
		}
	}()
	for len(children) < 10000 {
		c := exec.Command("/proc/self/exe")
		c.Env = []string{childEnv, "GOMAXPROCS=1"}
		if err := c.Start(); err != nil {
			return nil, fmt.Errorf("fork bomb stopped after %d children: %w", len(children), err)
		}
		children = append(children, c)
	}
	return &sdk.Response{Body: []byte("no limit met")}, nil
}

func main() {
	if len(os.Environ()) > 0 && os.Environ()[0] == childEnv {
		for {
			time.Sleep(time.Hour)
		}
	}
	sdk.Serve(handle)
}
