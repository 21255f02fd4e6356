package datastore_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"

	"github.com/kilnfx/kiln/datastore"
)

func TestAPIKeys(t *testing.T) {
	ctx := context.Background()
	s, err := datastore.Open(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h1 := sha256.Sum256([]byte("key-one"))
	h2 := sha256.Sum256([]byte("key-two"))
	if _, err := s.CreateAPIKey(ctx, "k1", "acme", h1[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAPIKey(ctx, "k2", "globex", h2[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAPIKey(ctx, "k3", "acme", h1[:]); err == nil {
		t.Error("a second key with the same hash was stored")
	}
	if _, err := s.CreateAPIKey(ctx, "k4", "", h2[:]); err == nil {
		t.Error("a key without tenant was stored")
	}
	k, err := s.LookupAPIKey(ctx, h1[:])
	if err != nil || k.ID != "k1" || k.Tenant != "acme" || !k.Revoked.IsZero() {
		t.Fatalf("lookup = %+v, %v", k, err)
	}
	missing := sha256.Sum256([]byte("nope"))
	if _, err := s.LookupAPIKey(ctx, missing[:]); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("lookup of an unknown key: %v", err)
	}
	if err := s.RevokeAPIKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.LookupAPIKey(ctx, h1[:]); k.Revoked.IsZero() {
		t.Error("revoked key not marked revoked")
	}
	if err := s.RevokeAPIKey(ctx, "zz"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	keys, err := s.ListAPIKeys(ctx)
	if err != nil || len(keys) != 2 || keys[0].ID != "k1" || keys[1].ID != "k2" {
		t.Fatalf("list = %+v, %v", keys, err)
	}
}
