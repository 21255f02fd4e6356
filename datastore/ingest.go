package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
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
// Each batch's transaction inserts the calls with ON CONFLICT (call_id) DO
// NOTHING, adds to the rollups only the rows it actually inserted, and
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

// WithBatchSize sets the most records per transaction (default 1000).
func WithBatchSize(n int) IngesterOption { return func(o *ingesterOptions) { o.batch = n } }

// WithBatchDelay sets how long Run waits after a signal from the source
// before it ingests, so that calls arriving close together share a
// transaction (default 50ms). It is also the polling period for a source
// that cannot signal.
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
	o := ingesterOptions{batch: 1000, delay: 50 * time.Millisecond, retry: 100 * time.Millisecond, log: slog.Default()}
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

const insertCallSQL = `
INSERT INTO calls (
	call_id, function, revision, tenant, trigger, received_ns, queue_ns, start,
	init_ns, run_ns, total_ns, cpu_user_ns, cpu_system_ns, memory_peak_bytes,
	memory_limit_bytes, shared, bytes_in, bytes_out, status, error_class,
	container_id, node
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO NOTHING`

// ingestBatch writes recs and the position next in one transaction and
// returns how many calls were new. acc is scratch space, reset on entry.
func (s *Store) ingestBatch(ctx context.Context, recs []UsageRecord, next JournalPosition, acc *rollupBatch) (inserted int, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("datastore: ingest batch of %d up to %v: %w", len(recs), next, err)
		}
	}()
	acc.reset()
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit

	// go-sqlite3 runs each statement under a cancellable ctx in a goroutine
	// of its own, which costs more than the insert itself. The row
	// statements get a ctx that cannot be cancelled, and ctx is checked
	// between them instead; BEGIN and COMMIT keep ctx.
	rowCtx := context.WithoutCancel(ctx)
	if len(recs) > 0 {
		ins, err := tx.PrepareContext(ctx, insertCallSQL)
		if err != nil {
			return 0, err
		}
		defer ins.Close()
		for i := range recs {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			r := &recs[i]
			res, err := ins.ExecContext(rowCtx,
				r.CallID, r.Function, r.Revision, r.Tenant, r.Trigger,
				r.ReceivedAt.UnixNano(), int64(r.QueueWait), r.Start,
				int64(r.InitTime), int64(r.RunTime), int64(r.TotalTime),
				int64(r.CPUUser), int64(r.CPUSystem), r.MemoryPeakBytes,
				r.MemoryLimitBytes, r.Shared, r.BytesIn, r.BytesOut, r.Status,
				r.ErrorClass, r.ContainerID, r.Node)
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
	}
	if err := acc.upsert(ctx, rowCtx, tx); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `
INSERT INTO ingest_position (id, segment, byte_offset, updated_ns) VALUES (1, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
	segment = excluded.segment, byte_offset = excluded.byte_offset, updated_ns = excluded.updated_ns`,
		int64(next.Segment), next.Offset, s.now().UTC().UnixNano()); err != nil {
		return 0, fmt.Errorf("store position: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return inserted, nil
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
