package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

const callColumns = `
	call_id, function, revision, tenant, trigger, received_ns, queue_ns, start,
	init_ns, run_ns, total_ns, cpu_user_ns, cpu_system_ns, memory_peak_bytes,
	memory_limit_bytes, shared, bytes_in, bytes_out, status, error_class,
	container_id, node`

// GetCall returns the record of the call with the given id, or an error
// wrapping [ErrNotFound] if the calls table does not hold it: never
// ingested yet, or pruned.
func (s *Store) GetCall(ctx context.Context, id string) (UsageRecord, error) {
	row := s.read.QueryRowContext(ctx, `SELECT `+callColumns+` FROM calls WHERE call_id = ?`, id)
	r, err := scanCall(row)
	if errors.Is(err, sql.ErrNoRows) {
		return UsageRecord{}, fmt.Errorf("datastore: call %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return UsageRecord{}, fmt.Errorf("datastore: get call %q: %w", id, err)
	}
	return r, nil
}

// CallFilter selects calls for [Store.ListCalls]. Empty fields do not
// filter. Function and Tenant match exactly (case-sensitive, no wildcards).
type CallFilter struct {
	Function string
	Tenant   string
	Since    time.Time // calls received at or after Since
	Limit    int       // at most this many; ≤ 0 means DefaultCallLimit, capped at MaxCallLimit
}

const (
	// DefaultCallLimit is the number of calls ListCalls returns when the
	// filter sets no limit.
	DefaultCallLimit = 100
	// MaxCallLimit is the most calls ListCalls returns at once.
	MaxCallLimit = 10000
)

// ListCalls returns the calls matching f, newest first (by received time,
// then by call id descending). No match gives an empty, non-nil slice.
func (s *Store) ListCalls(ctx context.Context, f CallFilter) ([]UsageRecord, error) {
	var (
		where []string
		args  []any
	)
	if f.Function != "" {
		where = append(where, "function = ?")
		args = append(args, f.Function)
	}
	if f.Tenant != "" {
		where = append(where, "tenant = ?")
		args = append(args, f.Tenant)
	}
	if !f.Since.IsZero() {
		where = append(where, "received_ns >= ?")
		args = append(args, f.Since.UnixNano())
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultCallLimit
	}
	limit = min(limit, MaxCallLimit)
	q := `SELECT ` + callColumns + ` FROM calls`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY received_ns DESC, call_id DESC LIMIT ?`
	args = append(args, limit)

	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("datastore: list calls: %w", err)
	}
	defer rows.Close()
	out := []UsageRecord{}
	for rows.Next() {
		r, err := scanCall(rows)
		if err != nil {
			return nil, fmt.Errorf("datastore: list calls: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("datastore: list calls: %w", err)
	}
	return out, nil
}

// pruneChunk is how many call rows one PruneCalls transaction deletes, so
// that ingestion is never held up for long. A variable for tests.
var pruneChunk int64 = 5000

// PruneCalls deletes the call rows received before the given time, in
// transactions of a few thousand rows, and returns how many it deleted.
// Rollups are kept, so reports still cover pruned calls. A cancelled ctx
// stops it between or inside transactions with an error wrapping ctx.Err();
// what was deleted before stays deleted.
//
// A record older than before that reaches the journal again after its row
// was pruned would be inserted and counted again: prune only well past the
// time a record can take to be ingested.
func (s *Store) PruneCalls(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		res, err := s.write.ExecContext(ctx, `
DELETE FROM calls WHERE rowid IN (
	SELECT rowid FROM calls WHERE received_ns < ? ORDER BY received_ns LIMIT ?)`,
			before.UnixNano(), pruneChunk)
		if err != nil {
			return total, fmt.Errorf("datastore: prune calls before %v: %w", before, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("datastore: prune calls before %v: %w", before, err)
		}
		total += n
		if n < pruneChunk {
			return total, nil
		}
	}
}

func scanCall(sc scanner) (UsageRecord, error) {
	var (
		r                                           UsageRecord
		received, queue, init, run, total, usr, sys int64
	)
	err := sc.Scan(&r.CallID, &r.Function, &r.Revision, &r.Tenant, &r.Trigger,
		&received, &queue, &r.Start, &init, &run, &total, &usr, &sys,
		&r.MemoryPeakBytes, &r.MemoryLimitBytes, &r.Shared, &r.BytesIn, &r.BytesOut,
		&r.Status, &r.ErrorClass, &r.ContainerID, &r.Node)
	if err != nil {
		return UsageRecord{}, err
	}
	r.ReceivedAt = fromNanos(received)
	r.QueueWait, r.InitTime, r.RunTime, r.TotalTime = time.Duration(queue), time.Duration(init), time.Duration(run), time.Duration(total)
	r.CPUUser, r.CPUSystem = time.Duration(usr), time.Duration(sys)
	return r, nil
}
