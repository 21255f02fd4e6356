package pool

import (
	"fmt"
	"testing"
)

// State is where a container is in its life.
//
//	                           ┌──────────────────────────────────── Specializing
//	                           │   Init sent, executor ready again     ▲
//	                           ▼          release /                    │
//	Creating ──► Starting ──► Ready ◄────────────────────► Busy        │ a call of a
//	                │          │  ▲        acquire          ▲          │ function of
//	                │  idle ≥  │  │ freeze                  │ thawed   │ its runtime
//	                │  freeze_ │  │ failed                  │          │
//	                │   after  ▼  │                         │          │
//	                └───────► Frozen ◄───────────────────► Thawing     │
//	     pre-forked:            │         acquire /                    │
//	     min_warm, stem         │         given back unthawed          │
//	     cells                  └──────────────────────────────────────┘
//
//	Starting ──────┐ stopped: no longer wanted, idle timeout,
//	Ready ─────────┤ memory pressure, new revision, function
//	Busy ──────────┤ removed, pool closed
//	Frozen ────────┼──────────────► Stopping ──────┐
//	Thawing ───────┤                               ▼
//	Specializing ──┴──────────────► Failed ──────► Gone
//	                                  ▲
//	                                  │ process exited, no ready in time,
//	                                  │ freeze or Init failed, discarded
//	Creating ─────────────────────────┘ start failed
//
// Creating: the pool listens on the container's socket and the driver
// creates and starts it. Starting: its process runs; the pool waits for the
// executor's Ready. Ready and Busy differ only in calls in flight: a
// container is Busy while it runs at least one call, and with concurrency
// above 1 a Busy container still takes calls up to its limit. Frozen: the
// cgroup freezer holds it; a stem cell waits so, serving no function.
// Thawing: handed to a call, which thaws it. Specializing: a stem cell
// becoming a function's container (thaw, code in, limits set, Init, and a
// new Ready from the function). Stopping: taken out of use on purpose and
// being removed; Failed: broken and being removed; Gone: removed.
//
// Every change of state goes through Pool.setStateLocked, which checks it
// against the table transitions; a test reads the edges of the drawing
// above and compares them with the table.
type State uint8

// The states of a container.
const (
	StateCreating State = iota
	StateStarting
	StateReady
	StateBusy
	StateFrozen
	StateThawing
	StateSpecializing
	StateStopping
	StateGone
	StateFailed
	numStates
)

var stateNames = [numStates]string{
	"creating", "starting", "ready", "busy", "frozen", "thawing", "specializing", "stopping", "gone", "failed",
}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "unknown"
}

// live reports whether a container in this state counts against its
// function's max_containers and the node's memory budget.
func (s State) live() bool {
	return s != StateGone && s != StateFailed && s != StateStopping
}

// placed reports whether a container in this state is in its function's
// set or among the stem cells. Before (Creating, Starting, Specializing)
// the goroutine starting it owns it; after (Stopping, Failed, Gone) its
// removal does.
func (s State) placed() bool {
	return s == StateReady || s == StateBusy || s == StateFrozen || s == StateThawing
}

// stateSet is a set of states, one bit each.
type stateSet uint16

// states returns the set holding ss.
func states(ss ...State) stateSet {
	var set stateSet
	for _, s := range ss {
		set |= 1 << s
	}
	return set
}

// has reports whether s is in the set.
func (set stateSet) has(s State) bool { return set>>s&1 != 0 }

// transitions holds, for each state, the states a container may move to
// from it: the edges of the drawing above.
var transitions = [numStates]stateSet{
	StateCreating:     states(StateStarting, StateFailed),
	StateStarting:     states(StateReady, StateFrozen, StateStopping, StateFailed),
	StateReady:        states(StateBusy, StateFrozen, StateStopping, StateFailed),
	StateBusy:         states(StateReady, StateStopping, StateFailed),
	StateFrozen:       states(StateReady, StateThawing, StateSpecializing, StateStopping, StateFailed),
	StateThawing:      states(StateBusy, StateFrozen, StateStopping, StateFailed),
	StateSpecializing: states(StateReady, StateStopping, StateFailed),
	StateStopping:     states(StateGone),
	StateFailed:       states(StateGone),
	StateGone:         0,
}

// panicOnIllegal makes an illegal transition panic: in test binaries, so
// that a test that causes one fails.
var panicOnIllegal = testing.Testing()

// setStateLocked moves c to the state to, if transitions allows the move
// from c's state, and reports whether it did. It is the only place that
// changes a container's state (a new Container starts as Creating).
//
// A move the table does not allow is a bug, and so is a move out of Frozen
// to a state that runs the container (any but Stopping and Failed) while
// the container is charged less than its memory limit (budget.go). Either
// is logged as an error, with the container and both states, and refused:
// c keeps its state, so that a container already being removed never
// returns to use and no container thaws unpaid. In test binaries
// (panicOnIllegal) it then panics.
func (p *Pool) setStateLocked(c *Container, to State) bool {
	if !transitions[c.state].has(to) {
		p.illegalLocked(c, to)
		return false
	}
	if c.state == StateFrozen && to.live() && c.memory < c.limit {
		p.unpaidLocked(c, to)
		return false
	}
	if p.onTransition != nil {
		p.onTransition(c.id, c.state, to)
	}
	c.state = to
	return true
}

// unpaidLocked reports the move of c out of Frozen to the running state to
// while the budget does not hold its limit.
func (p *Pool) unpaidLocked(c *Container, to State) {
	p.log.Error("container leaving frozen without its memory limit reserved; refused", "container", c.id,
		"to", to.String(), "charged", c.memory, "limit", c.limit)
	if panicOnIllegal {
		panic(fmt.Sprintf("pool: container %s: %v → %v with %d of %d bytes reserved", c.id, StateFrozen, to, c.memory, c.limit))
	}
}

// illegalLocked reports the illegal move of c from its state to another.
func (p *Pool) illegalLocked(c *Container, to State) {
	from := c.state
	p.log.Error("illegal container state transition refused", "container", c.id, "from", from.String(), "to", to.String())
	if panicOnIllegal {
		panic(fmt.Sprintf("pool: container %s: illegal state transition %v → %v", c.id, from, to))
	}
}
