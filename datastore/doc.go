// Package datastore is kiln's SQLite store: the schema and its migrations,
// the function registry, and metering: one row per call, per-minute usage
// rollups, and usage reports. The usage journal that feeds them lives in
// package datastore/journal; the api_keys table is there for the API's
// authentication.
//
// # Storage
//
// The database is one SQLite file opened through github.com/mattn/go-sqlite3
// in WAL mode with synchronous=NORMAL, a busy timeout and foreign keys on.
// With WAL, a commit with synchronous=NORMAL survives a crash of the process,
// though not always a power cut. WAL is checked after opening: a file system
// that cannot do WAL makes [Open] fail rather than run slowly in another
// journal mode.
//
// Times are stored as INTEGER unix nanoseconds (UTC) and come back as UTC
// [time.Time] values without a monotonic reading.
//
// # Two handles
//
// A [Store] holds two *sql.DB handles on the same file:
//
//   - a write handle limited to one connection (SetMaxOpenConns(1)), whose
//     transactions begin IMMEDIATE. SQLite allows one writer at a time anyway;
//     queueing writers on Go's pool instead of on SQLite's lock means no
//     SQLITE_BUSY between our own goroutines, and an immediate transaction
//     never fails half way when it upgrades from a read lock to a write lock.
//   - a read handle with several connections, each opened with query_only.
//     Under WAL, readers neither block the writer nor wait for it, so reports
//     and lookups run in parallel with ingestion.
//
// A reader sees every write committed before its statement starts.
// Because of the two handles the path must name a real file; ":memory:" is
// not supported.
//
// # Migrations
//
// The schema is a Go slice of numbered SQL steps (see migrations.go). [Open]
// applies those the file has not seen yet, in order, each in its own
// transaction together with its row in schema_migrations(version,
// applied_at), so a failed step leaves the database at the previous version.
// Two processes opening the same file at once are safe: each step rechecks
// the version inside its write transaction. A file whose version is newer
// than this code knows is refused with [ErrSchemaTooNew], so an old binary
// never writes to a schema it does not understand. To change the schema,
// append a step with the next version; never edit a released one.
//
// # Usage records
//
// Every call yields a [UsageRecord]. The agent appends it to the usage
// journal before it answers (that append is what makes the call
// acknowledged); an [Ingester] reads the journal through the narrow
// [UsageSource] interface and, one immediate transaction per batch of up to
// 4096 records (by default; a batch is what the journal holds when the
// ingester wakes, 250ms after an append):
//
//   - inserts the records into calls, keyed by call id, ignoring ids already
//     there. Rows go in with prepared multi-row INSERTs of up to 256 rows;
//     a statement that meets an id already there fails as a whole and its
//     rows go in again one by one with ON CONFLICT DO NOTHING, so the first
//     record of an id wins;
//   - adds the records it did insert, and only those, to usage_rollup: one
//     row per (UTC minute, function, tenant, status, start kind) with the
//     count, sums of run, total and queue time, GB-seconds, CPU time, bytes
//     in and out, and a run-time histogram (4 log-scale buckets per power
//     of two from about 1 µs to about 73 min, see histogram.go); and the
//     same to usage_rollup_hour and usage_rollup_day, per UTC hour and day.
//     A batch sums its calls per rollup row in memory first, then writes
//     one upsert per row it touched;
//   - stores in ingest_position the journal position the batch reached.
//
// Because the position moves in the same transaction as the rows, a crash
// at any point neither loses nor double-counts a record. [Store.GetCall] and
// [Store.ListCalls] read raw calls; [Store.Report] reads only the rollups,
// each part of its range from the coarsest level that fits, merging
// histograms for percentiles, so it stays fast over millions of calls and
// still covers calls that [Store.PruneCalls] has deleted. Histograms are
// merged inside SQLite by kiln_hist_merge, a function registered on every
// connection (driver.go).
//
// # Errors and concurrency
//
// Every method of [Store] is safe for concurrent use and honours ctx: a
// cancelled or expired ctx interrupts the running statement and its error
// wraps ctx.Err(). Getters and deleters wrap [ErrNotFound] with the name they
// looked for, so callers test with errors.Is.
package datastore
