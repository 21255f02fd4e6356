package containerd

import (
	"context"
	"os"
	"path/filepath"

	"github.com/kilnfx/kiln/pool"
)

var _ pool.Diagnoser = (*Driver)(nil)

// unknownExitStatus is the status containerd reports when it could not
// learn a process's (containerd.UnknownExitStatus).
const unknownExitStatus = 255

// Diagnose implements pool.Diagnoser: the exit status the task's wait
// reported (once Exited's channel is closed), and from the container's
// cgroup its OOM kills (v1 memory.oom_control's oom_kill, or on kernels
// without it memory.failcnt, which counts the times the limit was hit;
// v2 memory.events's oom_kill), the forks refused at its pids limit
// (pids.events's max, v1 and v2), its limits and a Stats reading. It
// reads files only, never calls containerd, and works until Remove
// deletes the container's cgroup; a counter it cannot read is 0. It
// returns pool.ErrContainerNotFound (wrapped) for a container this Driver
// did not start or has removed.
//
// The runtime reports a process killed by a signal as the status 128+N:
// Diagnose reads any status from 129 to 192 as signal N, so that an
// exit(137) reads as SIGKILL.
func (d *Driver) Diagnose(ctx context.Context, id string) (pool.Diagnosis, error) {
	c, err := d.get(id)
	if err != nil {
		return pool.Diagnosis{}, err
	}
	diag := pool.Diagnosis{ExitCode: -1}
	select {
	case <-c.exited:
		if c.exitKnown {
			switch code := int(c.exitStatus); {
			case code == unknownExitStatus:
			case code > 128 && code <= 128+64:
				diag.Signal = code - 128
			default:
				diag.ExitCode = code
			}
		}
	default:
	}
	root := d.opts.cgroupRoot
	if memDir := filepath.Join(root, "memory", c.cgroup); exists(filepath.Join(memDir, "memory.oom_control")) {
		// cgroup v1.
		b, _ := os.ReadFile(filepath.Join(memDir, "memory.oom_control"))
		if n, ok := field(b, "oom_kill"); ok {
			diag.OOMKills = n
		} else if b, err := os.ReadFile(filepath.Join(memDir, "memory.failcnt")); err == nil {
			diag.OOMKills, _ = parseInt(b)
		}
		diag.MemoryLimitBytes = readLimit(filepath.Join(memDir, "memory.limit_in_bytes"))
		pidsDir := filepath.Join(root, "pids", c.cgroup)
		diag.PidsMaxEvents = readField(filepath.Join(pidsDir, "pids.events"), "max")
		diag.PidsLimit = readLimit(filepath.Join(pidsDir, "pids.max"))
	} else {
		for _, base := range []string{filepath.Join(root, "unified"), root} {
			dir := filepath.Join(base, c.cgroup)
			if !exists(filepath.Join(dir, "memory.events")) {
				continue
			}
			diag.OOMKills = readField(filepath.Join(dir, "memory.events"), "oom_kill")
			diag.MemoryLimitBytes = readLimit(filepath.Join(dir, "memory.max"))
			diag.PidsMaxEvents = readField(filepath.Join(dir, "pids.events"), "max")
			diag.PidsLimit = readLimit(filepath.Join(dir, "pids.max"))
			break
		}
	}
	if st, err := d.Stats(ctx, id); err == nil {
		diag.Stats, diag.HasStats = st, true
	}
	return diag, nil
}

// readField reads the flat-keyed cgroup file path and returns key's value,
// or 0.
func readField(path, key string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := field(b, key)
	return n
}

// readLimit reads a limit file (a number, or "max"); 0 for none or
// unreadable. v1 writes "no limit" as a number near 2^63: that is 0 too.
func readLimit(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, ok := parseInt(b)
	if !ok || n >= 1<<62 {
		return 0
	}
	return n
}

// markExitedWith records the task's exit status and closes exited, unless
// exited was already closed (by Remove, with no status).
func (c *container) markExitedWith(status uint32) {
	c.exitOnce.Do(func() {
		c.exitStatus, c.exitKnown = status, true
		close(c.exited)
	})
}
