package pool

import (
	"context"
	"time"
)

// Snapshot is a reading of the pool for metrics and listings.
type Snapshot struct {
	// Containers counts live containers by function and state; stem cells
	// are under the function name "" .
	Containers map[string]map[State]int
	// Waiting counts queued calls by function.
	Waiting map[string]int
	// MemoryUsedBytes is the memory charged for live containers: each
	// one's limit, or less for a frozen one with WithFrozenCharge;
	// MemoryBudgetBytes the budget (0: unlimited).
	MemoryUsedBytes, MemoryBudgetBytes int64
	// Event counts since the pool started. RefusedThaws counts frozen
	// containers (and stem cells) left frozen because the budget could not
	// hold their limit again.
	ColdStarts, Thaws, Freezes, Specializations, Evictions, Failures, IdleStops, RefusedThaws int64
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() Snapshot {
	snap := Snapshot{
		Containers:        make(map[string]map[State]int),
		Waiting:           make(map[string]int),
		MemoryBudgetBytes: p.budget,
		ColdStarts:        p.counters.coldStarts.Load(),
		Thaws:             p.counters.thaws.Load(),
		Freezes:           p.counters.freezes.Load(),
		Specializations:   p.counters.specializations.Load(),
		Evictions:         p.counters.evictions.Load(),
		Failures:          p.counters.failures.Load(),
		IdleStops:         p.counters.idleStops.Load(),
		RefusedThaws:      p.counters.refusedThaws.Load(),
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	snap.MemoryUsedBytes = p.memoryUsed
	count := func(fn string, st State) {
		m := snap.Containers[fn]
		if m == nil {
			m = make(map[State]int)
			snap.Containers[fn] = m
		}
		m[st]++
	}
	for name, s := range p.sets {
		for _, c := range s.containers {
			count(name, c.state)
		}
		if len(s.waiters) > 0 {
			snap.Waiting[name] = len(s.waiters)
		}
	}
	for _, stems := range p.stems {
		for _, c := range stems {
			count("", c.state)
		}
	}
	return snap
}

// ContainerInfo describes one container of a function.
type ContainerInfo struct {
	ID       string
	State    State
	Created  time.Time
	LastUsed time.Time
	Active   int
	Calls    int64
}

// Containers lists the live containers of the named function.
func (p *Pool) Containers(function string) []ContainerInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sets[function]
	if s == nil {
		return nil
	}
	out := make([]ContainerInfo, 0, len(s.containers))
	for _, c := range s.containers {
		out = append(out, ContainerInfo{
			ID: c.id, State: c.state, Created: c.created, LastUsed: c.lastUsed,
			Active: c.active, Calls: c.calls.Load(),
		})
	}
	return out
}

// Container returns the live container with the given id, or nil.
func (p *Pool) Container(id string) *Container {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.all[id]
}

// ContainerStats reads the cgroup counters of a container through the
// driver.
func (p *Pool) ContainerStats(ctx context.Context, id string) (Stats, error) {
	return p.driver.Stats(ctx, id)
}
