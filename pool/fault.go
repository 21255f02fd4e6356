package pool

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Diagnosis is what a Diagnoser read about a container: how its process
// ended, if it has, and its cgroup's fault counters, limits and usage.
type Diagnosis struct {
	// ExitCode is the process's exit status, or -1 while it runs or when
	// it is unknown (a process killed by a signal has no status: see
	// Signal).
	ExitCode int
	// Signal is the signal that killed the process, or 0.
	Signal int
	// OOMKills counts the container's processes the kernel's OOM killer
	// killed at its memory limit since the container was made; 0 when the
	// cgroup does not say.
	OOMKills int64
	// PidsMaxEvents counts the forks and clones refused because the
	// container had reached its pids limit; 0 when the cgroup does not
	// say.
	PidsMaxEvents int64
	// MemoryLimitBytes and PidsLimit are the container's limits; 0 when
	// unknown or unlimited.
	MemoryLimitBytes, PidsLimit int64
	// Stats is a reading of the container's cgroup, valid when HasStats.
	Stats    Stats
	HasStats bool
}

// Diagnoser is a Driver that can tell why a container's process failed.
// Diagnose reads container id's exit status (once the channel from Exited
// is closed) and its cgroup's counters. It works while the container
// exists, its process exited or not, until Remove: the pool diagnoses a
// container whose process exited before it removes it. It returns an
// error wrapping ErrContainerNotFound for a container the driver does not
// know. It is safe for concurrent use, makes no call to the container
// runtime and returns promptly whatever ctx.
type Diagnoser interface {
	Diagnose(ctx context.Context, id string) (Diagnosis, error)
}

// Cause is why a container's process failed a call, as the pool tells it
// from a Diagnosis.
type Cause uint8

// Causes of a Fault.
const (
	// CauseUnknown: the process ended for a reason the pool cannot tell.
	CauseUnknown Cause = iota
	// CauseOOM: the kernel killed a process of the container at its
	// memory limit.
	CauseOOM
	// CausePidsExhausted: the container reached its pids limit, so a fork
	// or a thread's creation failed.
	CausePidsExhausted
	// CauseExited: the process exited, or a signal killed it.
	CauseExited
)

func (c Cause) String() string {
	switch c {
	case CauseOOM:
		return "oom"
	case CausePidsExhausted:
		return "pids_exhausted"
	case CauseExited:
		return "exited"
	}
	return "unknown"
}

// Fault is the error of a call that failed because its container's process
// did: it exited (Exited), or the handler failed as the container met one of
// its limits. It wraps ErrExecutorFailed.
type Fault struct {
	// Container and Function name the container and the function it served.
	Container, Function string
	// Cause is what the pool told from Diagnosis.
	Cause Cause
	// Exited says the container's process ended; false when the handler
	// failed while the process lives on (a helper killed at the memory
	// limit, a fork refused at the pids limit).
	Exited bool
	// Diagnosis is the driver's reading the Cause was told from.
	Diagnosis Diagnosis
}

func (f *Fault) Error() string {
	d := f.Diagnosis
	who := "function " + f.Function
	if f.Function == "" {
		who = "container " + f.Container
	}
	switch f.Cause {
	case CauseOOM:
		what := who + " was killed"
		if !f.Exited {
			what = "a process of " + who + " was killed"
		}
		if d.MemoryLimitBytes > 0 {
			return fmt.Sprintf("%s at its memory limit (%s)", what, formatBytes(d.MemoryLimitBytes))
		}
		return what + " at its memory limit"
	case CausePidsExhausted:
		if d.PidsLimit > 0 {
			return fmt.Sprintf("%s could not fork: its pids limit of %d was reached", who, d.PidsLimit)
		}
		return who + " could not fork: its pids limit was reached"
	case CauseExited:
		if d.Signal > 0 {
			return fmt.Sprintf("%s was killed by signal %d (%v)", who, d.Signal, syscall.Signal(d.Signal))
		}
		return fmt.Sprintf("%s exited with status %d", who, d.ExitCode)
	}
	return fmt.Sprintf("the process of %s ended (container %s)", who, f.Container)
}

// Unwrap returns ErrExecutorFailed.
func (f *Fault) Unwrap() error { return ErrExecutorFailed }

// formatBytes writes n in MiB when it is a whole number of them, else in
// bytes.
func formatBytes(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// DiagnoseWait bounds how long a call that failed because its container's
// session ended waits for the pool's diagnosis of the container's exit
// before it returns the bare session error.
const DiagnoseWait = 2 * time.Second

// diagnoseExit diagnoses c, whose process has exited, keeps the Fault on
// c and wakes the calls waiting for it. It runs once, in watch, before
// anything removes the container.
func (p *Pool) diagnoseExit(c *Container) {
	defer close(c.diagnosed)
	dg, ok := p.driver.(Diagnoser)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(p.bg, DiagnoseWait)
	defer cancel()
	d, err := dg.Diagnose(ctx, c.id)
	if err != nil {
		p.log.Debug("diagnose exited container", "container", c.id, "err", err)
		return
	}
	f := &Fault{Container: c.id, Function: c.Function(), Exited: true, Diagnosis: d, Cause: CauseUnknown}
	switch {
	case d.OOMKills > c.oomKillsSeen.Swap(d.OOMKills):
		f.Cause = CauseOOM
	case d.PidsMaxEvents > c.pidsMaxSeen.Swap(d.PidsMaxEvents):
		f.Cause = CausePidsExhausted
	case d.ExitCode >= 0 || d.Signal > 0:
		f.Cause = CauseExited
	}
	c.fault = f
	p.log.Info("container exited", "container", c.id, "function", f.Function, "cause", f.Cause,
		"status", d.ExitCode, "signal", d.Signal, "oom_kills", d.OOMKills, "pids_max_events", d.PidsMaxEvents)
}

// explain turns sessionErr, the error of a call whose session ended, into
// the container's Fault once the pool has diagnosed its exit: it waits for
// that at most DiagnoseWait, and not past ctx. Without a diagnosis it
// returns sessionErr.
func (c *Container) explain(ctx context.Context, sessionErr error) error {
	if c.diagnosed == nil {
		return sessionErr
	}
	t := time.NewTimer(DiagnoseWait)
	defer t.Stop()
	select {
	case <-c.diagnosed:
	case <-t.C:
		return sessionErr
	case <-ctx.Done():
		return sessionErr
	}
	if c.fault == nil {
		return sessionErr
	}
	return c.fault
}

// faultOfFailedCall reads the container's fault counters after its handler
// failed a call, and returns the Fault of a count that grew since the
// last reading: a helper killed at the memory limit, a fork refused at the
// pids limit. It returns nil when neither grew or the driver cannot tell.
func (c *Container) faultOfFailedCall(ctx context.Context) *Fault {
	if c.diag == nil {
		return nil
	}
	d, err := c.diag.Diagnose(context.WithoutCancel(ctx), c.id)
	if err != nil {
		return nil
	}
	f := &Fault{Container: c.id, Function: c.Function(), Diagnosis: d}
	switch {
	case d.OOMKills > c.oomKillsSeen.Swap(d.OOMKills):
		f.Cause = CauseOOM
	case d.PidsMaxEvents > c.pidsMaxSeen.Swap(d.PidsMaxEvents):
		f.Cause = CausePidsExhausted
	default:
		return nil
	}
	return f
}

// FailedCallUsage returns what a failed call used of its container c:
// the CPU time the container's cgroup counted since the pool's last
// reading of it (when it became ready, or the last failed call), less
// the CPU the calls that succeeded meanwhile were billed by their
// executor; and the cgroup's peak memory since the container started.
// err is the call's error: a Fault's reading is used when it has one,
// as the container may be gone by now. Call it before Release or Discard.
// It reports false when no reading could be had.
func (p *Pool) FailedCallUsage(ctx context.Context, c *Container, err error) (Stats, bool) {
	var now Stats
	var f *Fault
	if errors.As(err, &f) && f.Diagnosis.HasStats {
		now = f.Diagnosis.Stats
	} else {
		st, err := p.driver.Stats(context.WithoutCancel(ctx), c.id)
		if err != nil {
			return Stats{}, false
		}
		now = st
	}
	c.usageMu.Lock()
	mark := c.usageMark
	c.usageMark = now
	c.usageMu.Unlock()
	billed := time.Duration(c.billedCPU.Swap(0))
	used := Stats{MemoryBytes: now.MemoryBytes, MemoryPeakBytes: now.MemoryPeakBytes}
	user, sys := now.CPUUser-mark.CPUUser, now.CPUSystem-mark.CPUSystem
	if user < 0 || sys < 0 {
		// An older reading than the mark (a Fault's, after a later call's
		// reading): nothing to add.
		return used, true
	}
	// Take what successful calls were billed off user time first, the
	// side a handler's work runs on.
	if billed > user {
		billed -= user
		user = 0
		sys = max(0, sys-billed)
	} else {
		user -= billed
	}
	used.CPUUser, used.CPUSystem = user, sys
	return used, true
}

// markUsage takes the reading FailedCallUsage counts from, as c becomes
// ready to serve; off the call path.
func (p *Pool) markUsage(c *Container) {
	st, err := p.driver.Stats(p.bg, c.id)
	if err != nil {
		return
	}
	c.usageMu.Lock()
	c.usageMark = st
	c.usageMu.Unlock()
	c.billedCPU.Store(0)
}
