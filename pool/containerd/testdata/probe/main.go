// Command probe runs inside a test container and reports what it sees.
//
//	probe report   write a report to stdout, "END", dial the agent socket, sleep
//	probe exit     the same report, then exit with status 3
//	probe ready    dial the agent socket at once, then sleep (benchmarks)
//	probe busy     dial the agent socket at once, then spin on the CPU
//
// The root filesystem is read-only and /kiln is mounted read-only, so the
// report goes to stdout, which the test captures.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

const socket = "/kiln/agent.sock"

// conn keeps the agent connection referenced, so no finalizer closes it.
var conn net.Conn

func main() {
	mode := "report"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "ready":
		dial("ready")
		sleep()
	case "busy":
		dial("busy")
		spin()
	}
	fmt.Fprintln(os.Stderr, "probe: hello stderr")
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "uid=%d gid=%d euid=%d\n", os.Getuid(), os.Getgid(), os.Geteuid())
	fmt.Fprintf(w, "rootwrite=%s\n", result(os.WriteFile("/probe-write-test", []byte("x"), 0o644)))
	fmt.Fprintf(w, "kilnwrite=%s\n", result(os.WriteFile("/kiln/probe-write-test", []byte("x"), 0o644)))
	fmt.Fprintf(w, "tmpwrite=%s\n", result(os.WriteFile("/tmp/probe-write-test", []byte("x"), 0o644)))
	ifs, err := net.Interfaces()
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	fmt.Fprintf(w, "ifaces=%s err=%v\n", strings.Join(names, ","), err)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			for _, p := range []string{"Cap", "NoNewPrivs", "Seccomp", "Groups"} {
				if strings.HasPrefix(line, p) {
					k, v, _ := strings.Cut(line, ":")
					fmt.Fprintf(w, "%s=%s\n", k, strings.TrimSpace(v))
				}
			}
		}
	} else {
		fmt.Fprintf(w, "status-error=%v\n", err)
	}
	fmt.Fprintln(w, "END")
	w.Flush()
	if mode == "exit" {
		os.Exit(3)
	}
	dial("reported")
	sleep()
}

// dial connects to the agent socket, if the test made one, and says hello.
// The connection stays open.
func dial(msg string) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: dial: %v\n", err)
		return
	}
	fmt.Fprintf(c, "%s uid=%d\n", msg, os.Getuid())
	conn = c
}

func result(err error) string {
	if err == nil {
		return "ok"
	}
	return "fail: " + err.Error()
}

func sleep() {
	for {
		time.Sleep(time.Hour)
	}
}

var sink int

func spin() {
	for i := 0; ; i++ {
		sink = i
	}
}
