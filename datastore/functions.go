package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Function is a deployed function as the registry stores it.
type Function struct {
	Name     string
	Runtime  string
	Revision string
	Spec     []byte    // the function's settings as opaque JSON, stored verbatim
	Created  time.Time // UTC, set on the first Put, kept by later Puts
	Updated  time.Time // UTC, set on every Put
}

// PutFunction inserts f, or replaces the function of the same name, in one
// statement. f.Created and f.Updated are ignored: Created is set on the
// first Put and kept afterwards, Updated is set to the current time on every
// Put and strictly increases for a name even if the wall clock steps back.
// It returns the record as stored. A nil Spec is stored as an empty one. The
// name must not be empty; other validation of names is the caller's.
func (s *Store) PutFunction(ctx context.Context, f Function) (Function, error) {
	if f.Name == "" {
		return Function{}, errors.New("datastore: put function: empty name")
	}
	if f.Spec == nil {
		f.Spec = []byte{}
	}
	now := s.now().UTC().UnixNano()
	var created, updated int64
	err := s.write.QueryRowContext(ctx, `
INSERT INTO functions (name, runtime, revision, spec, created_ns, updated_ns)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
	runtime    = excluded.runtime,
	revision   = excluded.revision,
	spec       = excluded.spec,
	updated_ns = MAX(excluded.updated_ns, functions.updated_ns + 1)
RETURNING created_ns, updated_ns`,
		f.Name, f.Runtime, f.Revision, f.Spec, now, now,
	).Scan(&created, &updated)
	if err != nil {
		return Function{}, fmt.Errorf("datastore: put function %q: %w", f.Name, err)
	}
	f.Spec = append([]byte{}, f.Spec...) // the caller may reuse its slice
	f.Created, f.Updated = fromNanos(created), fromNanos(updated)
	return f, nil
}

// GetFunction returns the function called name, or an error wrapping
// [ErrNotFound].
func (s *Store) GetFunction(ctx context.Context, name string) (Function, error) {
	row := s.read.QueryRowContext(ctx, `
SELECT name, runtime, revision, spec, created_ns, updated_ns
FROM functions WHERE name = ?`, name)
	f, err := scanFunction(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Function{}, fmt.Errorf("datastore: function %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Function{}, fmt.Errorf("datastore: get function %q: %w", name, err)
	}
	return f, nil
}

// ListFunctions returns every function ordered by name; an empty registry
// gives an empty, non-nil slice.
func (s *Store) ListFunctions(ctx context.Context) ([]Function, error) {
	rows, err := s.read.QueryContext(ctx, `
SELECT name, runtime, revision, spec, created_ns, updated_ns
FROM functions ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("datastore: list functions: %w", err)
	}
	defer rows.Close()
	fs := []Function{}
	for rows.Next() {
		f, err := scanFunction(rows)
		if err != nil {
			return nil, fmt.Errorf("datastore: list functions: %w", err)
		}
		fs = append(fs, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("datastore: list functions: %w", err)
	}
	return fs, nil
}

// DeleteFunction removes the function called name, or returns an error
// wrapping [ErrNotFound] if there is none.
func (s *Store) DeleteFunction(ctx context.Context, name string) error {
	res, err := s.write.ExecContext(ctx, `DELETE FROM functions WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("datastore: delete function %q: %w", name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("datastore: delete function %q: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("datastore: function %q: %w", name, ErrNotFound)
	}
	return nil
}

type scanner interface {
	Scan(dest ...any) error
}

func scanFunction(sc scanner) (Function, error) {
	var (
		f                Function
		created, updated int64
	)
	if err := sc.Scan(&f.Name, &f.Runtime, &f.Revision, &f.Spec, &created, &updated); err != nil {
		return Function{}, err
	}
	f.Created, f.Updated = fromNanos(created), fromNanos(updated)
	return f, nil
}

func fromNanos(ns int64) time.Time { return time.Unix(0, ns).UTC() }
