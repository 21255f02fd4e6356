package datastore

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// memSource is an in-memory UsageSource: record i sits at position
// {1, i}, and position {1, i+1} follows it.
type memSource struct {
	mu       sync.Mutex
	recs     []UsageRecord
	notify   chan struct{} // nil: cannot signal
	froms    []JournalPosition
	ingested []JournalPosition
	failRead error // returned once by the next ReadUsage
}

func newMemSource(signal bool) *memSource {
	m := &memSource{}
	if signal {
		m.notify = make(chan struct{}, 1)
	}
	return m
}

func (m *memSource) append(recs ...UsageRecord) {
	m.mu.Lock()
	m.recs = append(m.recs, recs...)
	m.mu.Unlock()
	if m.notify != nil {
		select {
		case m.notify <- struct{}{}:
		default:
		}
	}
}

func (m *memSource) ReadUsage(from JournalPosition, buf []UsageRecord, max int) ([]UsageRecord, JournalPosition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.froms = append(m.froms, from)
	if err := m.failRead; err != nil {
		m.failRead = nil
		return buf, from, err
	}
	i := int(from.Offset)
	start := len(buf)
	for i < len(m.recs) && len(buf)-start < max {
		buf = append(buf, m.recs[i])
		i++
	}
	if len(buf) == start {
		return buf, from, nil
	}
	return buf, JournalPosition{Segment: 1, Offset: int64(i)}, nil
}

func (m *memSource) Ingested(pos JournalPosition) {
	m.mu.Lock()
	m.ingested = append(m.ingested, pos)
	m.mu.Unlock()
}

func (m *memSource) Appended() <-chan struct{} {
	if m.notify == nil {
		return nil
	}
	return m.notify
}

// Value sets for random records; the empty start kind is a call rejected
// before a container.
var (
	testFunctions = []string{"resize", "thumb", "echo", "Echo", "a_b", "a%b"}
	testTenants   = []string{"acme", "ACME", "globex", "ac%", "ac_e", ""}
	testStatuses  = []int{200, 200, 200, 201, 204, 302, 400, 404, 429, 500, 503, 0, 99, 600}
	testStarts    = []string{"warm", "warm", "warm", "thawed", "stem", "cold", ""}
	testTriggers  = []string{"http", "grpc", "grpc-stream"}
	testErrors    = []string{"", "", "function_error", "deadline_exceeded", "unavailable"}
)

// randRecord returns a record with fields drawn from rng, received within
// span after base.
func randRecord(rng *rand.Rand, base time.Time, span time.Duration, i int) UsageRecord {
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	run := time.Duration(float64(time.Microsecond) * math.Exp2(rng.Float64()*33)) // ~1 µs .. ~2.4 h, log-uniform
	return UsageRecord{
		CallID:           fmt.Sprintf("0190c0de-0000-7000-8000-%012d", i),
		Function:         pick(testFunctions),
		Revision:         fmt.Sprint("r", rng.IntN(3)),
		Tenant:           pick(testTenants),
		Trigger:          pick(testTriggers),
		ReceivedAt:       base.Add(time.Duration(rng.Int64N(int64(span)))),
		QueueWait:        time.Duration(rng.Int64N(int64(time.Millisecond))),
		Start:            pick(testStarts),
		InitTime:         time.Duration(rng.Int64N(int64(200 * time.Millisecond))),
		RunTime:          run,
		TotalTime:        run + time.Duration(rng.Int64N(int64(time.Millisecond))),
		CPUUser:          time.Duration(rng.Int64N(int64(time.Second))),
		CPUSystem:        time.Duration(rng.Int64N(int64(100 * time.Millisecond))),
		MemoryPeakBytes:  rng.Int64N(512 << 20),
		MemoryLimitBytes: []int64{128 << 20, 256 << 20, 1 << 30, 3<<30 + 12345}[rng.IntN(4)],
		Shared:           rng.IntN(4) == 0,
		BytesIn:          rng.Int64N(1 << 20),
		BytesOut:         rng.Int64N(1 << 20),
		Status:           testStatuses[rng.IntN(len(testStatuses))],
		ErrorClass:       pick(testErrors),
		ContainerID:      fmt.Sprintf("c%04d", rng.IntN(50)),
		Node:             "node-1",
	}
}

// ingestBatches writes recs in batches of the given size straight through
// the store's batch path, as an Ingester would, and returns how many calls
// were new. The stored position is left meaningless.
func ingestBatches(t testing.TB, s *Store, batch int, recs []UsageRecord) int {
	t.Helper()
	acc := new(rollupBatch)
	total := 0
	for len(recs) > 0 {
		n := min(batch, len(recs))
		k, err := s.ingestBatch(t.Context(), recs[:n], JournalPosition{Segment: 1}, acc)
		if err != nil {
			t.Fatal(err)
		}
		total += k
		recs = recs[n:]
	}
	return total
}

func sameRecord(a, b UsageRecord) bool {
	at, bt := a.ReceivedAt, b.ReceivedAt
	a.ReceivedAt, b.ReceivedAt = time.Time{}, time.Time{}
	return a == b && at.Equal(bt)
}
