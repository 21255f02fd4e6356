package datastore

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migration is one step of the schema. Its SQL may hold several statements;
// it runs in one transaction together with the row that records it.
type migration struct {
	version int    // 1, 2, 3, ... with no gaps
	name    string // what the step does, for error messages
	sql     string
}

// migrations is the schema, oldest first. Append a step with the next
// version to change it; never edit or reorder a step that has been released,
// since databases in the field have already run it.
var migrations = []migration{
	{
		version: 1,
		name:    "functions",
		sql: `
CREATE TABLE functions (
	name       TEXT    NOT NULL PRIMARY KEY,
	runtime    TEXT    NOT NULL,
	revision   TEXT    NOT NULL,
	spec       BLOB    NOT NULL,  -- opaque JSON, stored verbatim
	created_ns INTEGER NOT NULL,  -- unix nanoseconds, UTC
	updated_ns INTEGER NOT NULL   -- unix nanoseconds, UTC
) STRICT;
`,
	},
}

// schemaMigrationsTable records each applied step. It is created outside the
// numbered steps because they depend on it.
const schemaMigrationsTable = `
CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER NOT NULL PRIMARY KEY,
	applied_at INTEGER NOT NULL  -- unix nanoseconds, UTC
) STRICT`

// migrate brings db up to the last step of migs. db's transactions must
// begin IMMEDIATE, so that the version read inside a step's transaction
// cannot change before it commits, even with another process migrating the
// same file.
func migrate(ctx context.Context, db *sql.DB, migs []migration, now func() time.Time) error {
	if err := checkMigrations(migs); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, schemaMigrationsTable); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	latest := len(migs) // versions are 1..len(migs)
	v, err := schemaVersion(ctx, db)
	if err != nil {
		return err
	}
	if v > latest {
		return fmt.Errorf("%w: database is at version %d, this program knows up to %d", ErrSchemaTooNew, v, latest)
	}
	for _, m := range migs[v:] {
		if err := applyMigration(ctx, db, m, now); err != nil {
			return err
		}
	}
	return nil
}

// checkMigrations guards against a badly edited migrations slice.
func checkMigrations(migs []migration) error {
	for i, m := range migs {
		if m.version != i+1 {
			return fmt.Errorf("migration %d (%s) has version %d, want %d: versions must run 1, 2, 3, ... in order", i, m.name, m.version, i+1)
		}
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func applyMigration(ctx context.Context, db *sql.DB, m migration, now func() time.Time) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
		}
	}()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit

	// Another process may have applied this step since we looked.
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return err
	}
	switch {
	case v >= m.version:
		return nil
	case v != m.version-1:
		return fmt.Errorf("database is at version %d, expected %d", v, m.version-1)
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
		m.version, now().UTC().UnixNano()); err != nil {
		return err
	}
	return tx.Commit()
}
