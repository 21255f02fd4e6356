package api

import (
	"testing"

	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
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
