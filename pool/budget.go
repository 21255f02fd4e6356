package pool

import "sort"

// The node's memory budget.
//
// Every live container is charged bytes of the budget (Container.memory),
// and Pool.memoryUsed is the sum of the charges; a charge is taken with
// reserveLocked before what it pays for happens, so that memoryUsed never
// exceeds the budget. A container is charged its memory limit
// (Container.limit) in every state but Frozen.
//
// A frozen container's processes cannot run, so its memory cannot grow
// beyond what it held when it froze. With WithFrozenCharge, a container
// that has frozen is charged what its cgroup held then, read through
// Driver.Stats while the freeze is still held, plus the margin, and at most
// its limit (lowerChargeLocked). Before it runs again (Thawing, or
// Specializing for a stem cell) the rest of its limit is reserved again
// (rechargeLocked), evicting least recently used frozen containers as a new
// container would; when even that cannot make room, the container stays
// frozen and the call is refused with ErrNoCapacity, or waits for a running
// container of its function. setStateLocked refuses any move out of Frozen
// to a running state while a container is charged less than its limit, so
// no path can thaw a container the budget does not hold.

// reasonEvicted is why an eviction stops a container. The memory an
// eviction frees is for the caller of reserveLocked: ending an evicted
// container refills no stem cells.
const reasonEvicted = "memory pressure"

// reserveLocked takes bytes from the node's memory budget. With evict set
// it stops least recently used frozen containers of any function (and stem
// cells), never keep, to make room; it stops none when stopping all of
// them would not make enough. It reports whether the bytes were reserved.
func (p *Pool) reserveLocked(bytes int64, evict bool, keep *Container) bool {
	if p.budget == 0 || p.memoryUsed+bytes <= p.budget {
		p.memoryUsed += bytes
		return true
	}
	if !evict {
		return false
	}
	var victims []*Container
	freeable := p.budget - p.memoryUsed
	for _, c := range p.all {
		if c.state == StateFrozen && c.active == 0 && c != keep {
			victims = append(victims, c)
			freeable += c.memory
		}
	}
	if freeable < bytes {
		return false
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].lastUsed.Before(victims[j].lastUsed) })
	for _, c := range victims {
		if p.memoryUsed+bytes <= p.budget {
			break
		}
		p.counters.evictions.Add(1)
		p.stopLocked(c, reasonEvicted)
	}
	if p.memoryUsed+bytes <= p.budget {
		p.memoryUsed += bytes
		return true
	}
	return false
}

// rechargeLocked charges c its full limit again, as it must be before it
// leaves Frozen to run, evicting other frozen containers if need be. It
// reports false, changing nothing, when the budget cannot hold the rest of
// c's limit. A container charged its limit already needs nothing.
func (p *Pool) rechargeLocked(c *Container) bool {
	delta := c.limit - c.memory
	if delta <= 0 {
		return true
	}
	if !p.reserveLocked(delta, true, c) {
		p.counters.refusedThaws.Add(1)
		return false
	}
	c.memory = c.limit
	return true
}

// lowerChargeLocked charges a Frozen c what its cgroup held when it froze
// (used bytes, read while frozen) plus the frozen margin, if that is less
// than its charge; it does nothing unless the pool charges frozen
// containers by use (WithFrozenCharge), c is still Frozen and used is a
// reading (positive).
func (p *Pool) lowerChargeLocked(c *Container, used int64) {
	if !p.chargeFrozen || c.state != StateFrozen {
		return
	}
	// A failed reading forgets the last one: an older freeze's reading
	// must never lower a later charge.
	c.frozenUse = max(used, 0)
	if used <= 0 {
		return
	}
	charge := min(c.limit, used+p.frozenMargin)
	if charge < c.memory {
		p.memoryUsed -= c.memory - charge
		c.memory = charge
	}
}
