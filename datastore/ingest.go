package datastore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
)

// UsageSource is what an [Ingester] reads: the usage journal
// (datastore/journal.Journal), or a fake in tests. One Ingester at a time
// reads a source.
type UsageSource interface {
	// ReadUsage appends to buf at most max of the records that follow from
	// and returns the extended slice and the position just past the last
	// frame it consumed. It never waits: when nothing follows from it
	// returns no records and next == from. next may be past from with no
	// records, when it skipped damaged frames or moved to the next segment.
	ReadUsage(from JournalPosition, buf []UsageRecord, max int) (recs []UsageRecord, next JournalPosition, err error)

	// Ingested tells the source that SQLite durably holds every record
	// before pos, so it may discard them.
	Ingested(pos JournalPosition)

	// Appended returns a channel that receives a value after records are
	// appended; signals may be coalesced but never lost while a reader is
	// behind. A nil channel means the source cannot signal and the Ingester
	// polls instead.
	Appended() <-chan struct{}
}

// Ingester moves usage records from a [UsageSource] into the calls table and
// the per-minute rollups, one immediate transaction per batch.
//
// Each batch's transaction inserts the calls, skipping call ids already
// there, adds to the rollups only the rows it actually inserted, and
// stores the position the batch reached. A crash before the commit loses
// nothing (the batch is read again), a crash after it duplicates nothing (the
// batch is not read again, and a record read twice is a no-op), so every
// record in the source is counted exactly once.
//
// IngestAll and Run are safe for concurrent use; passes never overlap.
type Ingester struct {
	store *Store
	src   UsageSource
	o     ingesterOptions

	mu     sync.Mutex // held for a whole pass; guards the fields below
	pos    JournalPosition
	loaded bool // pos was read from the database
	buf    []UsageRecord
	acc    rollupBatch
}

type ingesterOptions struct {
	batch int
	delay time.Duration
	retry time.Duration
	log   *slog.Logger
}

// IngesterOption configures an [Ingester].
type IngesterOption func(*ingesterOptions)

// WithBatchSize sets the most records per transaction (default 4096).
func WithBatchSize(n int) IngesterOption { return func(o *ingesterOptions) { o.batch = n } }

// WithBatchDelay sets how long Run waits after a signal from the source
// before it ingests, so that calls arriving close together share a
// transaction (default 250ms): a record reaches SQLite about this long
// after it was appended, plus the time of the pass. It is also the polling
// period for a source that cannot signal.
func WithBatchDelay(d time.Duration) IngesterOption {
	return func(o *ingesterOptions) { o.delay = d }
}

// WithRetryDelay sets how long Run waits before retrying after a failed
// pass; it doubles on each further failure up to 16 times the setting
// (default 100ms).
func WithRetryDelay(d time.Duration) IngesterOption {
	return func(o *ingesterOptions) { o.retry = d }
}

// WithIngestLogger sets where Run reports failed passes (default slog.Default()).
func WithIngestLogger(l *slog.Logger) IngesterOption { return func(o *ingesterOptions) { o.log = l } }

// NewIngester returns an Ingester from src into s. It reads nothing until
// the first pass.
func NewIngester(s *Store, src UsageSource, opts ...IngesterOption) (*Ingester, error) {
	if s == nil || src == nil {
		return nil, errors.New("datastore: new ingester: store and source are required")
	}
	o := ingesterOptions{batch: 4096, delay: 250 * time.Millisecond, retry: 100 * time.Millisecond, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.batch <= 0 || o.delay < 0 || o.retry <= 0 || o.log == nil {
		return nil, fmt.Errorf("datastore: new ingester: invalid options (batch %d, delay %v, retry %v)", o.batch, o.delay, o.retry)
	}
	return &Ingester{store: s, src: src, o: o}, nil
}

// IngestAll ingests, batch after batch, everything the source holds past the
// stored position, and returns once a read finds nothing more. It returns
// the number of calls newly inserted (duplicates are not counted). kilnd
// runs it at start, before serving, so that SQLite holds whatever the journal
// kept from a previous run.
//
// A cancelled ctx stops it between or inside batches with an error wrapping
// ctx.Err(); the batches committed before stay committed.
func (in *Ingester) IngestAll(ctx context.Context) (int, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.loaded {
		pos, err := in.store.ingestPosition(ctx)
		if err != nil {
			return 0, err
		}
		in.pos, in.loaded = pos, true
	}
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("datastore: ingest: %w", err)
		}
		recs, next, err := in.src.ReadUsage(in.pos, in.buf[:0], in.o.batch)
		if err != nil {
			return total, fmt.Errorf("datastore: ingest: read from %v: %w", in.pos, err)
		}
		in.buf = recs[:0]
		if len(recs) == 0 && next == in.pos {
			return total, nil
		}
		n, err := in.store.ingestBatch(ctx, recs, next, &in.acc)
		clear(recs) // drop the strings until the next batch reuses the slots
		if err != nil {
			return total, err
		}
		total += n
		in.pos = next
		in.src.Ingested(next)
	}
}

// Run ingests until ctx is done: a pass at once, then one each time the
// source signals an append, after the batch delay. A failed pass is logged
// and retried with backoff. Run returns ctx.Err() when ctx is done and no
// other error; records appended after its last pass are left to the next
// IngestAll (kilnd runs one at shutdown with a fresh ctx).
func (in *Ingester) Run(ctx context.Context) error {
	wake := in.src.Appended()
	var poll <-chan time.Time
	if wake == nil {
		t := time.NewTicker(max(in.o.delay, time.Millisecond))
		defer t.Stop()
		poll = t.C
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	sleep := func(d time.Duration) bool {
		timer.Reset(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C:
			return true
		}
	}

	backoff := in.o.retry
	for {
		_, err := in.IngestAll(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			in.o.log.Error("usage ingestion failed; retrying", "err", err, "retry_in", backoff)
			if !sleep(backoff) {
				return ctx.Err()
			}
			backoff = min(2*backoff, 16*in.o.retry)
			continue
		}
		backoff = in.o.retry
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-poll:
		}
		if wake != nil && in.o.delay > 0 && !sleep(in.o.delay) {
			return ctx.Err()
		}
	}
}

// insertChunkSizes are the row counts of the multi-row INSERT statements
// of the calls table, largest first. A batch is cut into chunks of the
// largest size that fits what is left, so that a batch of any size
// prepares at most four statements and, past its 256-row chunks, runs each
// at most seven times. 256 rows bind 5,632 parameters, well under SQLite's
// limit of 32,766.
var insertChunkSizes = [...]int{256, 32, 4, 1}

// callParams is the number of columns a calls row binds.
const callParams = 22

const callInsertPrefix = `
INSERT INTO calls (
	call_id, function, revision, tenant, trigger, received_ns, queue_ns, start,
	init_ns, run_ns, total_ns, cpu_user_ns, cpu_system_ns, memory_peak_bytes,
	memory_limit_bytes, shared, bytes_in, bytes_out, status, error_class,
	container_id, node
) VALUES `

// insertCallSQL inserts one call, doing nothing when its id is already there.
var insertCallSQL = callInsertPrefix + callValuesRow + `
ON CONFLICT (call_id) DO NOTHING`

// callValuesRow is the placeholders of one calls row.
var callValuesRow = "(" + strings.Repeat("?, ", callParams-1) + "?)"

// insertCallsSQL inserts n calls with one statement and no conflict clause:
// a call id already in the table, or twice among the n, fails the whole
// statement and SQLite backs out the rows it had inserted, leaving the rest
// of the transaction as it was.
func insertCallsSQL(n int) string {
	var b strings.Builder
	b.WriteString(callInsertPrefix)
	for i := range n {
		if i > 0 {
			b.WriteString(",\n\t")
		}
		b.WriteString(callValuesRow)
	}
	return b.String()
}

const storePositionSQL = `
INSERT INTO ingest_position (id, segment, byte_offset, updated_ns) VALUES (1, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
	segment = excluded.segment, byte_offset = excluded.byte_offset, updated_ns = excluded.updated_ns`

// ingestStatements are the statements of a batch but its multi-row
// INSERTs (see callInserter), prepared on the write handle once and reused
// by every batch's transaction.
type ingestStatements struct {
	insertCall *sql.Stmt            // insertCallSQL
	putRollup  [numLevels]*sql.Stmt // rollupLevels[i].putSQL
	position   *sql.Stmt            // storePositionSQL
}

// ingestStatements returns the prepared statements of ingestBatch,
// preparing them on first use.
func (s *Store) ingestStatements(ctx context.Context) (*ingestStatements, error) {
	s.ingestMu.Lock()
	defer s.ingestMu.Unlock()
	if s.ingestStmts != nil {
		return s.ingestStmts, nil
	}
	var (
		st  = new(ingestStatements)
		all []*sql.Stmt
		err error
	)
	prepare := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var p *sql.Stmt
		if p, err = s.write.PrepareContext(ctx, q); err == nil {
			all = append(all, p)
		}
		return p
	}
	st.insertCall = prepare(insertCallSQL)
	for i, l := range rollupLevels {
		st.putRollup[i] = prepare(l.putSQL)
	}
	st.position = prepare(storePositionSQL)
	if err != nil {
		for _, p := range all {
			p.Close()
		}
		return nil, fmt.Errorf("prepare: %w", err)
	}
	s.ingestStmts = st
	return st, nil
}

// close closes the statements.
func (st *ingestStatements) close() error {
	errs := []error{st.insertCall.Close()}
	for _, p := range st.putRollup {
		errs = append(errs, p.Close())
	}
	errs = append(errs, st.position.Close())
	return errors.Join(errs...)
}

// ingestBatch writes recs and the position next in one transaction and
// returns how many calls were new. acc is scratch space, reset on entry.
//
// The calls go in as multi-row INSERTs of insertChunkSizes rows. A chunk
// whose statement fails on a call id already present (a record read again
// after a crash, or twice in the journal) is backed out by SQLite as a
// whole and inserted again row by row with ON CONFLICT DO NOTHING, so that
// the first record of an id wins and only the rows actually inserted reach
// the rollups.
func (s *Store) ingestBatch(ctx context.Context, recs []UsageRecord, next JournalPosition, acc *rollupBatch) (inserted int, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("datastore: ingest batch of %d up to %v: %w", len(recs), next, err)
		}
	}()
	acc.reset()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	st, err := s.ingestStatements(ctx)
	if err != nil {
		return 0, err
	}
	// The write handle's one connection, held for the whole batch so that
	// the multi-row INSERTs can run on it directly (see callInserter).
	conn, err := s.write.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()

	// go-sqlite3 runs each statement under a cancellable ctx in a goroutine
	// of its own, which costs more than the insert itself. The statements
	// get a ctx that cannot be cancelled, and ctx is checked between them
	// instead. So does the transaction: under ctx, database/sql would roll
	// it back by itself when ctx ends, and an insert run on the driver
	// connection after that would commit on its own.
	rowCtx := context.WithoutCancel(ctx)
	tx, err := conn.BeginTx(rowCtx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	var ins callInserter
	defer conn.Raw(func(any) error { return ins.close() }) //nolint:errcheck // closing a prepared statement of a good connection does not fail

	for rest := recs; len(rest) > 0; {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		k := 0
		for insertChunkSizes[k] > len(rest) {
			k++
		}
		chunk := rest[:insertChunkSizes[k]]
		rest = rest[len(chunk):]
		var fresh bool
		err := conn.Raw(func(dc any) (err error) {
			fresh, err = ins.insert(rowCtx, dc, k, chunk, acc)
			return err
		})
		if err != nil {
			return 0, err
		}
		if fresh {
			for i := range chunk {
				acc.add(&chunk[i])
			}
			inserted += len(chunk)
			continue
		}
		n, err := insertCallsOneByOne(ctx, rowCtx, tx.StmtContext(ctx, st.insertCall), chunk, acc)
		if err != nil {
			return 0, err
		}
		inserted += n
	}
	if err := acc.upsert(ctx, rowCtx, tx, &st.putRollup); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if _, err := tx.StmtContext(ctx, st.position).ExecContext(rowCtx,
		int64(next.Segment), next.Offset, s.now().UTC().UnixNano()); err != nil {
		return 0, fmt.Errorf("store position: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return inserted, nil
}

// callInserter runs the multi-row INSERTs of the calls table on the driver
// connection itself rather than through database/sql, which would copy the
// parameters of every statement into a new []driver.NamedValue: most of
// what ingestion allocated. Its statements are prepared on the batch's
// connection as the batch needs them and closed at its end.
type callInserter struct {
	stmts [len(insertChunkSizes)]driver.Stmt // insertCallsSQL(insertChunkSizes[i]), nil until used
}

// insert inserts chunk, of insertChunkSizes[k] calls, on the driver
// connection dc with one statement and reports whether it did. It reports
// false, with nothing inserted, when a call id of chunk is already in the
// table or appears twice in chunk.
//
// The statement runs as a query rather than an exec: go-sqlite3 then binds
// all parameters and steps in one cgo call instead of one call per
// parameter.
func (ci *callInserter) insert(rowCtx context.Context, dc any, k int, chunk []UsageRecord, acc *rollupBatch) (bool, error) {
	if ci.stmts[k] == nil {
		p, ok := dc.(driver.ConnPrepareContext)
		if !ok {
			return false, fmt.Errorf("the driver's connection is %T, which cannot prepare with a context", dc)
		}
		st, err := p.PrepareContext(rowCtx, insertCallsSQL(insertChunkSizes[k]))
		if err != nil {
			return false, fmt.Errorf("prepare the insert of %d calls: %w", insertChunkSizes[k], err)
		}
		ci.stmts[k] = st
	}
	q, ok := ci.stmts[k].(driver.StmtQueryContext)
	if !ok {
		return false, fmt.Errorf("the driver's statements are %T, which cannot query with a context", ci.stmts[k])
	}
	args := acc.args[:0]
	for i := range chunk {
		args = appendCallArgs(args, &chunk[i])
	}
	acc.args = args
	named := acc.named[:0]
	for i, v := range args {
		named = append(named, driver.NamedValue{Ordinal: i + 1, Value: v})
	}
	acc.named = named
	rows, err := q.QueryContext(rowCtx, named)
	clear(args) // drop the strings until the next chunk
	clear(named)
	if isDuplicateCallID(err) {
		return false, nil
	}
	if err == nil {
		err = rows.Close()
	}
	if err != nil {
		return false, fmt.Errorf("insert %d calls from %q: %w", len(chunk), chunk[0].CallID, err)
	}
	return true, nil
}

// close closes the statements prepared; the caller holds their connection.
func (ci *callInserter) close() error {
	var errs []error
	for i, st := range ci.stmts {
		if st != nil {
			errs = append(errs, st.Close())
			ci.stmts[i] = nil
		}
	}
	return errors.Join(errs...)
}

// insertCallsOneByOne inserts the calls of chunk one at a time with ins
// (insertCallSQL), adds to acc those it inserted and returns their number.
func insertCallsOneByOne(ctx, rowCtx context.Context, ins *sql.Stmt, chunk []UsageRecord, acc *rollupBatch) (int, error) {
	inserted := 0
	for i := range chunk {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		r := &chunk[i]
		acc.args = appendCallArgs(acc.args[:0], r)
		res, err := ins.ExecContext(rowCtx, acc.args...)
		if err != nil {
			return 0, fmt.Errorf("insert call %q: %w", r.CallID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, err
		}
		if n == 0 {
			continue // a duplicate: already counted
		}
		inserted++
		acc.add(r)
	}
	clear(acc.args)
	return inserted, nil
}

// appendCallArgs appends the callParams parameters of r's calls row, in
// column order, as the driver's own types so that database/sql need not
// convert them.
func appendCallArgs(args []any, r *UsageRecord) []any {
	return append(args,
		r.CallID, r.Function, r.Revision, r.Tenant, r.Trigger,
		r.ReceivedAt.UnixNano(), int64(r.QueueWait), r.Start,
		int64(r.InitTime), int64(r.RunTime), int64(r.TotalTime),
		int64(r.CPUUser), int64(r.CPUSystem), r.MemoryPeakBytes,
		r.MemoryLimitBytes, r.Shared, r.BytesIn, r.BytesOut, int64(r.Status),
		r.ErrorClass, r.ContainerID, r.Node)
}

// isDuplicateCallID reports whether err is the calls table refusing a call
// id it already holds: the table's only uniqueness constraint.
func isDuplicateCallID(err error) bool {
	var e sqlite3.Error
	return errors.As(err, &e) &&
		(e.ExtendedCode == sqlite3.ErrConstraintPrimaryKey || e.ExtendedCode == sqlite3.ErrConstraintUnique)
}

// ingestPosition returns the stored position, or the zero position before
// the first batch.
func (s *Store) ingestPosition(ctx context.Context) (JournalPosition, error) {
	var seg, off int64
	err := s.write.QueryRowContext(ctx,
		`SELECT segment, byte_offset FROM ingest_position WHERE id = 1`).Scan(&seg, &off)
	if errors.Is(err, sql.ErrNoRows) {
		return JournalPosition{}, nil
	}
	if err != nil {
		return JournalPosition{}, fmt.Errorf("datastore: read ingest position: %w", err)
	}
	return JournalPosition{Segment: uint64(seg), Offset: off}, nil
}
