package main

// What a hostile function tries from inside its container. Each attempt
// answers "name=result" lines: "ok" when the attempt succeeded, else the
// errno's name (EPERM) or the error's text. The hostile test of cmd/kilnd
// reads the same lines from the python3, node, ruby and binary handlers.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kilnfx/kiln/executor/sdk"
)

// errnoNames names the errors the attempts expect.
var errnoNames = map[syscall.Errno]string{
	syscall.EPERM: "EPERM", syscall.EACCES: "EACCES", syscall.EROFS: "EROFS", syscall.ENOSPC: "ENOSPC",
	syscall.ENOENT: "ENOENT", syscall.ENETUNREACH: "ENETUNREACH", syscall.EHOSTUNREACH: "EHOSTUNREACH",
	syscall.EINVAL: "EINVAL", syscall.ECONNREFUSED: "ECONNREFUSED", syscall.ETIMEDOUT: "ETIMEDOUT",
	syscall.EAGAIN: "EAGAIN", syscall.ENOSYS: "ENOSYS", syscall.ESRCH: "ESRCH",
}

// result is "ok" for a nil err, else its errno's name or its text.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if n, ok := errnoNames[errno]; ok {
			return n
		}
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// hostile handles the hostile test's requests; ok is false for any other.
func hostile(ctx context.Context, body string) (resp *sdk.Response, ok bool, err error) {
	what, arg, _ := strings.Cut(body, " ")
	var lines []string
	add := func(k, v string) { lines = append(lines, k+"="+v) }
	switch what {
	case "tmp":
		// Fill /tmp until the tmpfs refuses, then free it.
		f, err := os.Create("/tmp/fill")
		if err != nil {
			add("tmp", result(err))
			break
		}
		chunk := make([]byte, 1<<20)
		n := 0
		for {
			w, err := f.Write(chunk)
			n += w
			if err != nil {
				add("tmp", result(err))
				break
			}
		}
		f.Close()
		os.Remove("/tmp/fill")
		add("tmp_bytes", strconv.Itoa(n))
	case "root":
		_, err := os.Create("/hostile")
		add("root", result(err))
		wd, _ := os.Getwd()
		_, err = os.Create(wd + "/hostile")
		add("code", result(err))
		_, err = os.Create("/kiln/hostile")
		add("kilnw", result(err))
	case "proc":
		_, err := os.ReadFile("/proc/1/root/etc/shadow")
		add("shadow", result(err))
		marker := os.Getenv("HOST_MARKER")
		_, err = os.ReadFile("/proc/self/root/../.." + marker)
		add("escape", result(err))
		_, err = os.ReadFile("/proc/1/root" + marker)
		add("pid1root", result(err))
		_, err = os.ReadFile(marker)
		add("marker", result(err))
		add("sys", result(os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)))
		f, err := os.OpenFile("/proc/sysrq-trigger", os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		add("sysrq", result(err))
		add("kcore", readSome("/proc/kcore"))
	case "net":
		c, err := net.DialTimeout("tcp", "1.1.1.1:53", 2*time.Second)
		if err == nil {
			c.Close()
		}
		add("connect", result(err))
		ifs, _ := net.Interfaces()
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		sort.Strings(names)
		add("ifaces", strings.Join(names, ","))
	case "priv":
		add("uid", strconv.Itoa(os.Getuid()))
		add("unshare", result(syscall.Unshare(syscall.CLONE_NEWUSER|syscall.CLONE_NEWNS)))
		add("mount", result(syscall.Mount("none", "/tmp", "tmpfs", 0, "")))
		add("ptrace", ptraceChild())
		// BPF_MAP_CREATE of a 4-entry array.
		attr := [5]uint32{2, 4, 4, 4, 0}
		_, _, e := syscall.Syscall(unix.SYS_BPF, 0, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if e != 0 {
			add("bpf", result(e))
		} else {
			add("bpf", "ok")
		}
	case "sock":
		for _, p := range []struct{ k, path string }{{"other", arg}, {"escape", "/proc/self/root/../.." + arg}} {
			c, err := net.Dial("unix", p.path)
			if err == nil {
				c.Close()
			}
			add(p.k, result(err))
		}
		ents, err := os.ReadDir("/kiln")
		if err != nil {
			add("kiln", result(err))
			break
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		add("kiln", strings.Join(names, ","))
	case "flood":
		for i := range 10000 {
			fmt.Printf("flood line %d %s\n", i, strings.Repeat("x", 80))
		}
		return &sdk.Response{Body: []byte("intact")}, true, nil
	case "spawn":
		// A process that outlives the call: the probe, sleeping.
		c := exec.Command("/proc/self/exe", arg)
		c.Env = []string{childEnv, "GOMAXPROCS=1"}
		if err := c.Start(); err != nil {
			return nil, true, err
		}
		go c.Wait()
		return &sdk.Response{Body: []byte(strconv.Itoa(c.Process.Pid))}, true, nil
	case "alive":
		return &sdk.Response{Body: []byte(aliveState(arg))}, true, nil
	case "spin":
		// Keep every CPU busy for a second.
		done := time.Now().Add(time.Second)
		for range 4 {
			go func() {
				for time.Now().Before(done) && ctx.Err() == nil {
				}
			}()
		}
		time.Sleep(time.Until(done))
		return &sdk.Response{Body: []byte("spun")}, true, nil
	default:
		return nil, false, nil
	}
	return &sdk.Response{Body: []byte(strings.Join(lines, "\n") + "\n")}, true, nil
}

// readSome reads up to 4 KiB of path: the error's name, or "read N".
func readSome(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return result(err)
	}
	defer f.Close()
	n, err := f.Read(make([]byte, 4096))
	if err != nil && n == 0 && err.Error() != "EOF" {
		return result(err)
	}
	return "read " + strconv.Itoa(n)
}

// ptraceChild tries PTRACE_ATTACH on a child of the probe (its only other
// process: the probe is pid 1), detaching if it succeeds.
func ptraceChild() string {
	c := exec.Command("/proc/self/exe")
	c.Env = []string{childEnv, "GOMAXPROCS=1"}
	if err := c.Start(); err != nil {
		return "no child: " + result(err)
	}
	defer func() { c.Process.Kill(); c.Wait() }()
	done := make(chan string)
	go func() {
		// ptrace requests come from the thread that attached.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := syscall.PtraceAttach(c.Process.Pid); err != nil {
			done <- result(err)
			return
		}
		var ws syscall.WaitStatus
		syscall.Wait4(c.Process.Pid, &ws, syscall.WALL, nil)
		syscall.PtraceDetach(c.Process.Pid)
		done <- "ok"
	}()
	return <-done
}

// aliveState says whether process pid runs: "alive", "zombie" or "gone".
func aliveState(pid string) string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "gone"
	}
	if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return "zombie"
	}
	return "alive"
}
