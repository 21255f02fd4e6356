package api

import (
	"testing"

	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/pool"
)

// TestWireBoundsAreTheStore checks that the groupings and call limits the
// API promises (package wire, which the client reads) are those the store
// answers.
func TestWireBoundsAreTheStore(t *testing.T) {
	for _, tt := range []struct{ api, store any }{
		{wire.MaxCallLimit, datastore.MaxCallLimit},
		{wire.DefaultCallLimit, datastore.DefaultCallLimit},
		{wire.GroupByNone, datastore.GroupByNone},
		{wire.GroupByFunction, datastore.GroupByFunction},
		{wire.GroupByTenant, datastore.GroupByTenant},
		{wire.GroupByMinute, datastore.GroupByMinute},
		{wire.GroupByHour, datastore.GroupByHour},
		{wire.GroupByDay, datastore.GroupByDay},
	} {
		if tt.api != tt.store {
			t.Errorf("the API says %v where the store says %v", tt.api, tt.store)
		}
	}
}

// TestWireStartKindsAreThePool checks that the start kinds the API names
// (X-Kiln-Start, usage records, by_start) are the pool's.
func TestWireStartKindsAreThePool(t *testing.T) {
	for k, want := range map[pool.StartKind]string{
		pool.StartWarm: wire.StartWarm, pool.StartThawed: wire.StartThawed,
		pool.StartStem: wire.StartStem, pool.StartCold: wire.StartCold,
	} {
		if k.String() != want {
			t.Errorf("the pool names %q what the API calls %q", k, want)
		}
	}
}
