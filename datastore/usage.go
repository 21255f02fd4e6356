package datastore

import (
	"fmt"
	"time"
)

// UsageRecord is the metering record of one call: what it was, how it
// started, what it used and how it ended. The agent builds one per call,
// appends it to the usage journal (package datastore/journal) before it
// answers, and an [Ingester] moves it into the calls table and the
// per-minute rollups.
type UsageRecord struct {
	CallID   string // UUIDv7 text, 36 bytes; the primary key: a second record with the same id is ignored
	Function string
	Revision string
	Tenant   string // from the API key
	Trigger  string // http | grpc | grpc-stream

	ReceivedAt time.Time     // when the edge received the call; stored as UTC unix nanoseconds
	QueueWait  time.Duration // waiting for a container or admission
	Start      string        // warm | thawed | stem | cold, or "" when rejected before a container
	InitTime   time.Duration // container start or specialisation time charged to this call
	RunTime    time.Duration // the handler's run time as the executor measured it; for a call with no such figure (timed out, its process died), the time it held its container as the agent measured it (docs/METERING.md)
	TotalTime  time.Duration // received to answered

	CPUUser          time.Duration // the executor's figure, else read from the container's cgroup (docs/METERING.md)
	CPUSystem        time.Duration
	MemoryPeakBytes  int64 // the executor's figure, else the container's cgroup peak
	MemoryLimitBytes int64
	Shared           bool // the container ran other calls at the same time: CPU and memory are not exact

	BytesIn    int64
	BytesOut   int64
	Status     int    // HTTP status answered
	ErrorClass string // "" or an error class of the API (package api/wire): not_found, invalid_argument, unauthenticated, resource_exhausted, unavailable, deadline_exceeded (the timeout class), executor_failure, oom, pids_exhausted, exited, response_too_large, payload_too_large, insufficient_storage, request_timeout, headers_too_large, cancelled, function_error, internal

	ContainerID string
	Node        string
}

// GBSeconds is the call's billed memory-time: the memory limit in GiB
// (2^30 bytes) times the run time rounded up to the next whole millisecond,
// in seconds. A call with no run time or no limit costs 0.
func (r *UsageRecord) GBSeconds() float64 {
	if r.RunTime <= 0 || r.MemoryLimitBytes <= 0 {
		return 0
	}
	ms := int64(r.RunTime / time.Millisecond)
	if r.RunTime%time.Millisecond != 0 {
		ms++
	}
	return float64(r.MemoryLimitBytes) / (1 << 30) * float64(ms) / 1000
}

// CPUSeconds is the call's CPU time, user plus system, in seconds.
func (r *UsageRecord) CPUSeconds() float64 {
	return float64(r.CPUUser+r.CPUSystem) / float64(time.Second)
}

// JournalPosition is a place in the usage journal: the sequence number of a
// segment file and a byte offset in it, at a frame boundary. Positions order
// by segment, then offset. The zero value is before the first record of any
// journal.
type JournalPosition struct {
	Segment uint64
	Offset  int64
}

// String formats p as "segment:offset".
func (p JournalPosition) String() string { return fmt.Sprintf("%d:%d", p.Segment, p.Offset) }
