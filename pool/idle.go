package pool

// scheduleIdleLocked arms c's freeze and idle timers from now.
func (p *Pool) scheduleIdleLocked(c *Container, fn *Function) {
	if fn.FreezeAfter >= 0 {
		if c.freezeTimer == nil {
			c.freezeTimer = p.clock.AfterFunc(fn.FreezeAfter, func() { p.freezeIdle(c) })
		} else {
			c.freezeTimer.Reset(fn.FreezeAfter)
		}
	}
	if fn.IdleTimeout > 0 {
		if c.idleTimer == nil {
			c.idleTimer = p.clock.AfterFunc(fn.IdleTimeout, func() { p.stopIdle(c) })
		} else {
			c.idleTimer.Reset(fn.IdleTimeout)
		}
	}
}

// freezeIdle freezes c if it is still idle freeze_after after its last
// call.
func (p *Pool) freezeIdle(c *Container) {
	c.freezeMu.Lock()
	defer c.freezeMu.Unlock()
	p.mu.Lock()
	if c.state != StateReady || c.active != 0 || c.set == nil || p.clock.Now().Sub(c.lastUsed) < c.set.fn.FreezeAfter {
		p.mu.Unlock()
		return
	}
	p.setStateLocked(c, StateFrozen)
	p.mu.Unlock()
	if err := p.driver.Freeze(p.bg, c.id); err != nil {
		p.log.Warn("freeze", "container", c.id, "err", err)
		p.mu.Lock()
		if c.state == StateFrozen {
			p.setStateLocked(c, StateReady)
		}
		p.mu.Unlock()
		return
	}
	p.counters.freezes.Add(1)
	used := p.frozenUse(c)
	p.mu.Lock()
	p.lowerChargeLocked(c, used) // unless a call took it meanwhile
	p.mu.Unlock()
}

// stopIdle stops c if it is still idle idle_timeout after its last call and
// its function keeps min_warm without it.
func (p *Pool) stopIdle(c *Container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := c.set
	if s == nil || c.active != 0 || (c.state != StateFrozen && c.state != StateReady) ||
		p.clock.Now().Sub(c.lastUsed) < s.fn.IdleTimeout || len(s.containers)-1 < s.fn.MinWarm {
		return
	}
	p.counters.idleStops.Add(1)
	p.stopLocked(c, "idle timeout")
}
