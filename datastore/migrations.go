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
	{
		version: 2,
		name:    "calls",
		// One row per call, from UsageRecord. No CHECK constraints: a row
		// the journal holds must never be refused. Durations are
		// nanoseconds.
		sql: `
CREATE TABLE calls (
	call_id            TEXT    NOT NULL PRIMARY KEY,
	function           TEXT    NOT NULL,
	revision           TEXT    NOT NULL,
	tenant             TEXT    NOT NULL,
	trigger            TEXT    NOT NULL,
	received_ns        INTEGER NOT NULL,  -- unix nanoseconds, UTC
	queue_ns           INTEGER NOT NULL,
	start              TEXT    NOT NULL,  -- warm | thawed | stem | cold | ''
	init_ns            INTEGER NOT NULL,
	run_ns             INTEGER NOT NULL,
	total_ns           INTEGER NOT NULL,
	cpu_user_ns        INTEGER NOT NULL,
	cpu_system_ns      INTEGER NOT NULL,
	memory_peak_bytes  INTEGER NOT NULL,
	memory_limit_bytes INTEGER NOT NULL,
	shared             INTEGER NOT NULL,  -- 0 or 1
	bytes_in           INTEGER NOT NULL,
	bytes_out          INTEGER NOT NULL,
	status             INTEGER NOT NULL,
	error_class        TEXT    NOT NULL,
	container_id       TEXT    NOT NULL,
	node               TEXT    NOT NULL
) STRICT;
CREATE INDEX calls_function_received ON calls (function, received_ns);
CREATE INDEX calls_tenant_received   ON calls (tenant, received_ns);
CREATE INDEX calls_received          ON calls (received_ns);
`,
	},
	{
		version: 3,
		name:    "usage_rollup",
		// Sums of the calls ingested, kept when raw calls are pruned: per
		// UTC minute in usage_rollup, and the same per hour and per day so
		// that reports over long ranges read few rows. hist is the run-time
		// histogram (histogram.go).
		sql: rollupTableSQL("usage_rollup", "minute_ns", "start of the UTC minute") +
			rollupTableSQL("usage_rollup_hour", "hour_ns", "start of the UTC hour") +
			rollupTableSQL("usage_rollup_day", "day_ns", "start of the UTC day"),
	},
	{
		version: 4,
		name:    "ingest_position",
		// The journal position up to which calls and rollups hold every
		// record; written in the same transaction as those rows.
		sql: `
CREATE TABLE ingest_position (
	id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	segment     INTEGER NOT NULL,
	byte_offset INTEGER NOT NULL,
	updated_ns  INTEGER NOT NULL  -- unix nanoseconds, UTC
) STRICT;
`,
	},
	{
		version: 5,
		name:    "api_keys",
		sql: `
CREATE TABLE api_keys (
	id         TEXT    NOT NULL PRIMARY KEY,
	tenant     TEXT    NOT NULL,
	key_sha256 BLOB    NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never stored
	created_ns INTEGER NOT NULL,         -- unix nanoseconds, UTC
	revoked_ns INTEGER                   -- NULL while the key is valid
) STRICT;
CREATE INDEX api_keys_tenant ON api_keys (tenant);
`,
	},
}

// rollupTableSQL is the schema of one rollup table, keyed by the start of
// its time bucket in column col. The three rollup tables differ only in
// their names. Migration 3 is built from it: never change its output; a
// later schema change is a new step with its own SQL.
func rollupTableSQL(table, col, what string) string {
	return fmt.Sprintf(`
CREATE TABLE %[1]s (
	%[2]s  INTEGER NOT NULL,  -- %[3]s, unix nanoseconds
	function    TEXT    NOT NULL,
	tenant      TEXT    NOT NULL,
	status      INTEGER NOT NULL,
	start       TEXT    NOT NULL,
	count       INTEGER NOT NULL,
	run_ns      INTEGER NOT NULL,
	total_ns    INTEGER NOT NULL,
	queue_ns    INTEGER NOT NULL,
	gb_seconds  REAL    NOT NULL,
	cpu_ns      INTEGER NOT NULL,  -- user + system
	bytes_in    INTEGER NOT NULL,
	bytes_out   INTEGER NOT NULL,
	hist        BLOB    NOT NULL,
	PRIMARY KEY (%[2]s, function, tenant, status, start)
) STRICT, WITHOUT ROWID;
CREATE INDEX %[1]s_function ON %[1]s (function, %[2]s);
CREATE INDEX %[1]s_tenant   ON %[1]s (tenant, %[2]s);
`, table, col, what)
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
