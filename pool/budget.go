package pool

import "sort"

// reserveLocked takes bytes from the node's memory budget. With evict set
// it stops least recently used frozen containers of any function (and stem
// cells) to make room. It reports whether the bytes were reserved.
func (p *Pool) reserveLocked(bytes int64, evict bool) bool {
	if p.budget == 0 || p.memoryUsed+bytes <= p.budget {
		p.memoryUsed += bytes
		return true
	}
	if !evict {
		return false
	}
	var victims []*Container
	for _, c := range p.all {
		if c.state == StateFrozen && c.active == 0 {
			victims = append(victims, c)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].lastUsed.Before(victims[j].lastUsed) })
	for _, c := range victims {
		if p.memoryUsed+bytes <= p.budget {
			break
		}
		p.counters.evictions.Add(1)
		p.stopLocked(c, "memory pressure")
	}
	if p.memoryUsed+bytes <= p.budget {
		p.memoryUsed += bytes
		return true
	}
	return false
}
