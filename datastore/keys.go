package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// APIKey is a tenant's API key as stored: only the SHA-256 of the key is
// kept, never the key.
type APIKey struct {
	ID      string
	Tenant  string
	Created time.Time // UTC
	Revoked time.Time // zero while the key is valid
}

// CreateAPIKey stores a new key of tenant under id with the key's SHA-256.
func (s *Store) CreateAPIKey(ctx context.Context, id, tenant string, sha256 []byte) (APIKey, error) {
	if id == "" || tenant == "" || len(sha256) != 32 {
		return APIKey{}, errors.New("datastore: create api key: id, tenant and a 32-byte hash are required")
	}
	now := s.now().UTC()
	_, err := s.write.ExecContext(ctx,
		`INSERT INTO api_keys (id, tenant, key_sha256, created_ns) VALUES (?, ?, ?, ?)`,
		id, tenant, sha256, now.UnixNano())
	if err != nil {
		return APIKey{}, fmt.Errorf("datastore: create api key: %w", err)
	}
	return APIKey{ID: id, Tenant: tenant, Created: fromNanos(now.UnixNano())}, nil
}

// ListAPIKeys returns every key, revoked ones included, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT id, tenant, created_ns, revoked_ns FROM api_keys ORDER BY created_ns, id`)
	if err != nil {
		return nil, fmt.Errorf("datastore: list api keys: %w", err)
	}
	defer rows.Close()
	keys := []APIKey{}
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("datastore: list api keys: %w", err)
	}
	return keys, nil
}

// LookupAPIKey returns the key whose SHA-256 is sha256, revoked or not, or
// an error wrapping [ErrNotFound].
func (s *Store) LookupAPIKey(ctx context.Context, sha256 []byte) (APIKey, error) {
	row := s.read.QueryRowContext(ctx, `SELECT id, tenant, created_ns, revoked_ns FROM api_keys WHERE key_sha256 = ?`, sha256)
	k, err := scanAPIKey(row)
	if errors.Is(err, sql.ErrNoRows) {
		return APIKey{}, fmt.Errorf("datastore: api key: %w", ErrNotFound)
	}
	return k, err
}

// RevokeAPIKey marks the key id revoked. Revoking a revoked key keeps its
// first revocation time; an unknown id is an error wrapping [ErrNotFound].
func (s *Store) RevokeAPIKey(ctx context.Context, id string) error {
	res, err := s.write.ExecContext(ctx,
		`UPDATE api_keys SET revoked_ns = COALESCE(revoked_ns, ?) WHERE id = ?`, s.now().UTC().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("datastore: revoke api key %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("datastore: api key %q: %w", id, ErrNotFound)
	}
	return nil
}

func scanAPIKey(sc interface{ Scan(...any) error }) (APIKey, error) {
	var (
		k       APIKey
		created int64
		revoked sql.NullInt64
	)
	if err := sc.Scan(&k.ID, &k.Tenant, &created, &revoked); err != nil {
		return APIKey{}, err
	}
	k.Created = fromNanos(created)
	if revoked.Valid {
		k.Revoked = fromNanos(revoked.Int64)
	}
	return k, nil
}

// ValidAPIKeyHashes returns the SHA-256 of every key not revoked, with its
// tenant.
func (s *Store) ValidAPIKeyHashes(ctx context.Context) (map[[32]byte]string, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT key_sha256, tenant FROM api_keys WHERE revoked_ns IS NULL`)
	if err != nil {
		return nil, fmt.Errorf("datastore: api keys: %w", err)
	}
	defer rows.Close()
	out := make(map[[32]byte]string)
	for rows.Next() {
		var (
			h      []byte
			tenant string
		)
		if err := rows.Scan(&h, &tenant); err != nil {
			return nil, fmt.Errorf("datastore: api keys: %w", err)
		}
		if len(h) == 32 {
			out[[32]byte(h)] = tenant
		}
	}
	return out, rows.Err()
}
