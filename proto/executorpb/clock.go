package executorpb

import (
	"syscall"
	"unsafe"
)

// clockMonotonic is Linux's CLOCK_MONOTONIC.
const clockMonotonic = 1

// MonotonicNow returns the host's CLOCK_MONOTONIC in nanoseconds: the
// clock of CallTrace, one clock for the agent and for every container on
// the host, whatever their PID namespaces. It is a system call (Go's own
// monotonic readings start at each process's start, so they cannot be
// compared across processes): use it for traced calls only.
func MonotonicNow() int64 {
	var ts syscall.Timespec
	_, _, _ = syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}
