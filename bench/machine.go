package bench

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Machine describes where a run happened.
type Machine struct {
	CPU   string `json:"cpu"`
	Cores int    `json:"cores"`
	// MemoryMiB is the machine's RAM.
	MemoryMiB int64  `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	// Cgroup is "v1", "v2" or "hybrid".
	Cgroup string `json:"cgroup"`
	// GOMAXPROCS is the harness's (kilnd runs with its Go default, the
	// number of cores, unless GOMAXPROCS is set in its environment).
	GOMAXPROCS int `json:"gomaxprocs"`
}

// ThisMachine reads the machine's description.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		m.Kernel = b.String()
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		m.MemoryMiB = int64(si.Totalram) * int64(si.Unit) >> 20
	}
	_, errV1 := os.Stat("/sys/fs/cgroup/freezer")
	_, errV2 := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	_, errHy := os.Stat("/sys/fs/cgroup/unified")
	switch {
	case errV2 == nil:
		m.Cgroup = "v2"
	case errV1 == nil && errHy == nil:
		m.Cgroup = "hybrid (v1 controllers)"
	case errV1 == nil:
		m.Cgroup = "v1"
	}
	return m
}

// Versions records what was measured and what measured it.
type Versions struct {
	// Go is the harness's Go; GoTool is `go version` (what built kilnd).
	Go     string `json:"go"`
	GoTool string `json:"go_tool,omitempty"`
	// Kiln is `git describe --always --dirty` of the working tree, when
	// it is a git checkout.
	Kiln       string `json:"kiln,omitempty"`
	Containerd string `json:"containerd,omitempty"`
	// Runtime is the OCI runtime kilnd was told to use, and RuntimeVersion
	// the first line of its --version.
	Runtime        string `json:"runtime"`
	RuntimeVersion string `json:"runtime_version,omitempty"`
}

// TheseVersions reads the versions; runtimeBinary is the OCI runtime kilnd
// runs containers with (runc or crun). A tool that is missing leaves its
// field empty.
func TheseVersions(ctx context.Context, runtimeBinary string) Versions {
	return Versions{
		Go:             runtime.Version(),
		GoTool:         firstLine(ctx, "go", "version"),
		Kiln:           firstLine(ctx, "git", "describe", "--always", "--dirty", "--tags"),
		Containerd:     firstLine(ctx, "containerd", "--version"),
		Runtime:        runtimeBinary,
		RuntimeVersion: firstLine(ctx, runtimeBinary, "--version"),
	}
}

// firstLine runs a command and returns the first line of its output, or ""
// when it fails.
func firstLine(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// CPUBusy samples /proc/stat for d and returns the share of the machine's
// CPU time spent busy (0..1), or -1 when unknown. Taken while the harness
// is idle, it says how much other work shares the machine with the run.
func CPUBusy(d time.Duration) float64 {
	busy0, total0 := cpuTimes()
	time.Sleep(d)
	busy1, total1 := cpuTimes()
	if total1 <= total0 {
		return -1
	}
	return float64(busy1-busy0) / float64(total1-total0)
}

// cpuTimes returns the busy and total jiffies of all CPUs.
func cpuTimes() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// MemAvailable returns the kernel's estimate of available memory in bytes
// (/proc/meminfo MemAvailable), or 0 when unknown.
func MemAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
