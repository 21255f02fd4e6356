package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kilnfx/kiln/datastore"
)

// Key is a tenant's API key as listed: the key itself is shown only once,
// by CreateKey.
type Key struct {
	ID      string
	Tenant  string
	Created time.Time
	Revoked time.Time // zero while valid
}

// keyPrefix starts every API key, so that a leaked one is recognisable.
const keyPrefix = "kiln_"

// CreateKey makes a new API key for tenant and returns it with its listing.
// Only the key's SHA-256 is stored: the key cannot be shown again.
func (a *Agent) CreateKey(ctx context.Context, tenant string) (string, Key, error) {
	if !nameRE.MatchString(tenant) {
		return "", Key{}, fmt.Errorf("%w: tenant %q must match %s", ErrInvalidArgument, tenant, nameRE)
	}
	secret := make([]byte, 24)
	idb := make([]byte, 6)
	if _, err := rand.Read(secret); err != nil {
		return "", Key{}, err
	}
	if _, err := rand.Read(idb); err != nil {
		return "", Key{}, err
	}
	key := keyPrefix + base64.RawURLEncoding.EncodeToString(secret)
	sum := sha256.Sum256([]byte(key))
	k, err := a.store.CreateAPIKey(ctx, "key-"+hex.EncodeToString(idb), tenant, sum[:])
	if err != nil {
		return "", Key{}, err
	}
	a.keysMu.Lock()
	a.keys[sum] = tenant
	a.keysMu.Unlock()
	return key, Key(k), nil
}

// ListKeys lists every API key, revoked ones included.
func (a *Agent) ListKeys(ctx context.Context) ([]Key, error) {
	ks, err := a.store.ListAPIKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Key, len(ks))
	for i, k := range ks {
		out[i] = Key(k)
	}
	return out, nil
}

// RevokeKey revokes the key id at once: calls with it fail from now on. An
// unknown id is an error wrapping ErrNotFound.
func (a *Agent) RevokeKey(ctx context.Context, id string) error {
	if err := a.store.RevokeAPIKey(ctx, id); err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("%w: api key %q", ErrNotFound, id)
		}
		return err
	}
	return a.loadKeys(ctx)
}

// Authenticate returns the tenant of a valid API key, or an error wrapping
// ErrUnauthenticated for an unknown or revoked one. It reads an in-memory
// table: no database access on the call path.
func (a *Agent) Authenticate(key string) (string, error) {
	if !strings.HasPrefix(key, keyPrefix) {
		return "", fmt.Errorf("%w: not a kiln API key", ErrUnauthenticated)
	}
	sum := sha256.Sum256([]byte(key))
	a.keysMu.RLock()
	tenant, ok := a.keys[sum]
	a.keysMu.RUnlock()
	if !ok {
		return "", fmt.Errorf("%w: unknown or revoked API key", ErrUnauthenticated)
	}
	return tenant, nil
}

// loadKeys rebuilds the table of valid keys from the store.
func (a *Agent) loadKeys(ctx context.Context) error {
	ks, err := a.store.ValidAPIKeyHashes(ctx)
	if err != nil {
		return fmt.Errorf("load api keys: %w", err)
	}
	m := make(map[[32]byte]string, len(ks))
	for h, tenant := range ks {
		m[h] = tenant
	}
	a.keysMu.Lock()
	a.keys = m
	a.keysMu.Unlock()
	return nil
}

// InfoFile is the name, in the data dir, of the file in which kilnd records
// the addresses it serves ({"http": URL, "grpc": ADDR}), so that a data dir
// says which agent it and its admin token belong to.
const InfoFile = "agent.json"

// AdminTokenFile is the name, in the data dir, of the file holding the
// management API's admin token.
const AdminTokenFile = "admin.token"

// LoadOrCreateAdminToken returns the admin token kept in dataDir, creating
// it (mode 0600) on first use.
func LoadOrCreateAdminToken(dataDir string) (string, error) {
	p := filepath.Join(dataDir, AdminTokenFile)
	b, err := os.ReadFile(p)
	if err == nil {
		if tok := strings.TrimSpace(string(b)); len(tok) >= 32 {
			return tok, nil
		}
		return "", fmt.Errorf("admin token file %s is malformed: remove it to make a new one", p)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := "kilnadm_" + base64.RawURLEncoding.EncodeToString(raw)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create admin token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", err
	}
	return tok, f.Close()
}

// TokenEqual compares two secrets in constant time.
func TokenEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// Usage reports, read from the rollups; see datastore.Store.Report.
func (a *Agent) Report(ctx context.Context, q datastore.ReportQuery) ([]datastore.ReportRow, error) {
	rows, err := a.store.Report(ctx, q)
	if errors.Is(err, datastore.ErrInvalidQuery) {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return rows, err
}

// GetCall returns the usage record of one call, or an error wrapping
// ErrNotFound.
func (a *Agent) GetCall(ctx context.Context, id string) (datastore.UsageRecord, error) {
	r, err := a.store.GetCall(ctx, id)
	if errors.Is(err, datastore.ErrNotFound) {
		return r, fmt.Errorf("%w: call %q", ErrNotFound, id)
	}
	return r, err
}

// ListCalls returns usage records, newest first.
func (a *Agent) ListCalls(ctx context.Context, f datastore.CallFilter) ([]datastore.UsageRecord, error) {
	return a.store.ListCalls(ctx, f)
}
