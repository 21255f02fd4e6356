package datastore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math"
	"time"
)

// rollupLevel is one rollup table: the same sums over time buckets of one
// width. Every ingested call is added to every level in the same
// transaction, so the levels always agree; reports read the coarsest level
// that fits the range (see planRollups).
type rollupLevel struct {
	table  string
	column string // the bucket start, unix nanoseconds
	width  int64  // nanoseconds

	putSQL, selectSQL string
}

var rollupLevels = [...]*rollupLevel{
	newRollupLevel("usage_rollup", "minute_ns", time.Minute),
	newRollupLevel("usage_rollup_hour", "hour_ns", time.Hour),
	newRollupLevel("usage_rollup_day", "day_ns", 24*time.Hour),
}

const numLevels = len(rollupLevels)

func newRollupLevel(table, column string, width time.Duration) *rollupLevel {
	l := &rollupLevel{table: table, column: column, width: int64(width)}
	l.putSQL = fmt.Sprintf(`
INSERT INTO %[1]s (
	%[2]s, function, tenant, status, start, count, run_ns, total_ns,
	queue_ns, gb_seconds, cpu_ns, bytes_in, bytes_out, hist
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (%[2]s, function, tenant, status, start) DO UPDATE SET
	count      = count      + excluded.count,
	run_ns     = run_ns     + excluded.run_ns,
	total_ns   = total_ns   + excluded.total_ns,
	queue_ns   = queue_ns   + excluded.queue_ns,
	gb_seconds = gb_seconds + excluded.gb_seconds,
	cpu_ns     = cpu_ns     + excluded.cpu_ns,
	bytes_in   = bytes_in   + excluded.bytes_in,
	bytes_out  = bytes_out  + excluded.bytes_out,
	hist       = kiln_hist_merge(hist, excluded.hist)`, table, column)
	l.selectSQL = fmt.Sprintf(`
SELECT %[2]s, function, tenant, status, start, count, run_ns, total_ns,
	queue_ns, gb_seconds, cpu_ns, bytes_in, bytes_out, hist
FROM %[1]s WHERE %[2]s >= ? AND %[2]s < ?`, table, column)
	return l
}

// rollupKey is the key of a rollup row.
type rollupKey struct {
	bucket   int64 // start of the time bucket, unix nanoseconds
	function string
	tenant   string
	status   int
	start    string
}

// rollupRow is a rollup row's key and what a batch adds to it.
type rollupRow struct {
	key rollupKey
	acc *rollupAcc
}

// rollupAcc is what one batch adds to a rollup row.
type rollupAcc struct {
	count, runNs, totalNs, queueNs, cpuNs, bytesIn, bytesOut int64
	gbSeconds                                                float64
	hist                                                     runHist
}

func (a *rollupAcc) add(r *UsageRecord) {
	a.count++
	a.runNs += int64(r.RunTime)
	a.totalNs += int64(r.TotalTime)
	a.queueNs += int64(r.QueueWait)
	a.cpuNs += int64(r.CPUUser + r.CPUSystem)
	a.bytesIn += r.BytesIn
	a.bytesOut += r.BytesOut
	a.gbSeconds += r.GBSeconds()
	a.hist.add(int64(r.RunTime))
}

// rollupBatch gathers a batch's additions to every rollup level, and holds
// the scratch space of the batch's statements. Its zero value is ready to
// use; it is reused from batch to batch.
type rollupBatch struct {
	rows  [numLevels]map[rollupKey]*rollupAcc
	last  [numLevels]rollupRow // the row each level added to last, if any
	free  []*rollupAcc
	args  []any // statement parameters
	named []driver.NamedValue
	blob  []byte
}

// reset empties b, keeping its accumulators for reuse.
func (b *rollupBatch) reset() {
	for i, m := range b.rows {
		for _, a := range m {
			b.free = append(b.free, a)
		}
		if m == nil {
			b.rows[i] = make(map[rollupKey]*rollupAcc)
		}
		clear(b.rows[i])
	}
	clear(b.last[:])
}

// add adds a newly inserted call to its row at every level. Calls close
// together in the journal mostly share their rows, so the row of the
// previous call is tried before the map.
func (b *rollupBatch) add(r *UsageRecord) {
	ns := r.ReceivedAt.UnixNano()
	for i, l := range rollupLevels {
		k := rollupKey{floorTo(ns, l.width), r.Function, r.Tenant, r.Status, r.Start}
		if last := &b.last[i]; last.acc != nil && last.key == k {
			last.acc.add(r)
			continue
		}
		a := b.rows[i][k]
		if a == nil {
			if n := len(b.free); n > 0 {
				a = b.free[n-1]
				b.free = b.free[:n-1]
				*a = rollupAcc{}
			} else {
				a = new(rollupAcc)
			}
			b.rows[i][k] = a
		}
		b.last[i] = rollupRow{k, a}
		a.add(r)
	}
}

// upsert adds b to the rollup tables in tx with put, the prepared putSQL
// of each level: one statement per row, sums added by SQL, histograms
// merged by kiln_hist_merge (driver.go). Statements run under rowCtx (see
// ingestBatch); ctx is checked between them.
func (b *rollupBatch) upsert(ctx, rowCtx context.Context, tx *sql.Tx, put *[numLevels]*sql.Stmt) error {
	for i, l := range rollupLevels {
		if len(b.rows[i]) == 0 {
			continue
		}
		p := tx.StmtContext(ctx, put[i])
		for k, a := range b.rows[i] {
			if err := ctx.Err(); err != nil {
				return err
			}
			b.blob = a.hist.appendBlob(b.blob[:0])
			if _, err := p.ExecContext(rowCtx, k.bucket, k.function, k.tenant, int64(k.status), k.start,
				a.count, a.runNs, a.totalNs, a.queueNs, a.gbSeconds, a.cpuNs, a.bytesIn, a.bytesOut,
				b.blob); err != nil {
				return fmt.Errorf("%s row of %d, function %q, tenant %q: %w", l.table, k.bucket, k.function, k.tenant, err)
			}
		}
	}
	return nil
}

// rollupPart is a time range [from, to) to read from one rollup level.
type rollupPart struct {
	level    int
	from, to int64
}

// planRollups splits the minute-aligned range [lo, hi) into parts read from
// the coarsest level at most maxLevel whose buckets lie wholly inside the
// range, finer levels filling the edges: a day range reads one day row
// per key, a range from 10:30 to 14:15 reads minutes, three hours, then
// minutes. math.MinInt64 and math.MaxInt64 stand for open ends.
func planRollups(lo, hi int64, maxLevel int, out []rollupPart) []rollupPart {
	if lo >= hi {
		return out
	}
	if maxLevel == 0 {
		return append(out, rollupPart{0, lo, hi})
	}
	w := rollupLevels[maxLevel].width
	a, b := ceilTo(lo, w), floorTo(hi, w)
	if a >= b {
		return planRollups(lo, hi, maxLevel-1, out)
	}
	out = planRollups(lo, a, maxLevel-1, out)
	out = append(out, rollupPart{maxLevel, a, b})
	return planRollups(b, hi, maxLevel-1, out)
}

// floorTo rounds ns down to a multiple of unit; the open ends
// math.MinInt64 and math.MaxInt64 stay as they are.
func floorTo(ns, unit int64) int64 {
	if ns == math.MinInt64 || ns == math.MaxInt64 {
		return ns
	}
	q := ns / unit
	if ns%unit < 0 {
		q--
	}
	return q * unit
}

// ceilTo rounds ns up to a multiple of unit, saturating at math.MaxInt64;
// the open ends stay as they are.
func ceilTo(ns, unit int64) int64 {
	f := floorTo(ns, unit)
	switch {
	case f == ns:
		return ns
	case f > math.MaxInt64-unit:
		return math.MaxInt64
	}
	return f + unit
}

// minuteOf returns the start of the UTC minute holding ns.
func minuteOf(ns int64) int64 { return floorTo(ns, int64(time.Minute)) }
