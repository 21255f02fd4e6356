package executorpb

import _ "unsafe" // for go:linkname

// MonotonicNow returns the host's CLOCK_MONOTONIC in nanoseconds: the
// clock of CallTrace, one clock for the agent and for every container on
// the host, whatever their PID namespaces. It is the Go runtime's own
// reading of that clock (through the vDSO, tens of nanoseconds); the
// monotonic readings of package time cannot be used, as they count from
// each process's start.
func MonotonicNow() int64 { return nanotime() }

//go:linkname nanotime runtime.nanotime
func nanotime() int64
