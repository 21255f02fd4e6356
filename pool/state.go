package pool

// State is where a container is in its life.
//
//	            ┌───────────── start fails, Ready deadline missed ─────────────┐
//	            │                                                               ▼
//	Creating ──► Starting ──► Ready ◄─────────► Busy ─── crash, timeout ───► Failed
//	                │          │  ▲  release /   ▲                              │
//	                │          │  │  acquire     │                              │
//	                │ prewarm  │  │ idle ≥       │                              │
//	                │ (min_warm│  │ freeze_after │ acquire                      │
//	                │  , stem) ▼  │              │                              │
//	                └──────► Frozen ──────────► Thawing                         │
//	                           │ idle ≥ idle_timeout, memory pressure (LRU),     │
//	                           │ delete, new revision                            │
//	                           ▼                                                 ▼
//	                        Stopping ───────────────────────────────────────► Gone
//
//	Stem cells: Starting ──► Frozen (no function) ── a call of any function of
//	that runtime ──► Specializing (thaw, code in, limits set, Init, new Ready)
//	──► Busy, as that function's container.
//
// Ready and Busy differ only in calls in flight: a container is Busy while it
// runs at least one call. With concurrency above 1 a Busy container still
// takes calls up to its limit.
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
