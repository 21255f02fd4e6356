package datastore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// ErrInvalidQuery is wrapped by [Store.Report] when the query itself is
// wrong (a range that ends before it starts, an unknown grouping), as
// opposed to a failure to answer it.
var ErrInvalidQuery = errors.New("invalid query")

// Groupings of a [ReportQuery].
const (
	GroupByNone     = ""         // one row for everything selected
	GroupByFunction = "function" // one row per function
	GroupByTenant   = "tenant"   // one row per tenant
	GroupByMinute   = "minute"   // one row per UTC minute
	GroupByHour     = "hour"     // one row per UTC hour
	GroupByDay      = "day"      // one row per UTC day
)

// ReportQuery selects and groups usage for [Store.Report].
//
// Reports read rollups, so their time resolution is the minute: a minute
// counts when its start lies in [From rounded down to the minute, To). A
// zero From or To leaves that side open. With an hour or day grouping, the
// buckets at the ends of the range hold only the minutes inside it.
// Function and Tenant, when set, must match exactly (case-sensitive, no
// wildcards): a query for one tenant never sees another tenant's calls.
type ReportQuery struct {
	From, To time.Time
	Function string
	Tenant   string
	GroupBy  string // one of the GroupBy constants
}

// ReportRow is the usage of one group of calls.
//
// Status counts are by class: Status2xx counts 200..299 and so on;
// StatusOther counts anything below 200 or above 599 (0 when the call got no
// answer). Start counts are by start kind; NoContainer counts calls rejected
// before a container (Start "") and any start kind this version does not
// know.
type ReportRow struct {
	// Group is the function or tenant name, the bucket's start in RFC 3339
	// for time groupings, or "" for GroupByNone.
	Group string
	// Time is the start of the bucket (UTC) for time groupings, else zero.
	Time time.Time

	Count                                                   int64
	Status2xx, Status3xx, Status4xx, Status5xx, StatusOther int64
	Warm, Thawed, Stem, Cold, NoContainer                   int64

	RunTime   time.Duration // sum over the group
	QueueWait time.Duration // sum
	TotalTime time.Duration // sum
	// RunP50 and RunP99 are estimated from run-time histograms with 4
	// buckets per power of two: within one bucket (about 19%) of the exact
	// nearest-rank percentile.
	RunP50, RunP99 time.Duration

	GBSeconds  float64
	CPUSeconds float64
	BytesIn    int64
	BytesOut   int64
}

// validate checks q and returns its time bucket width (0 for name
// groupings).
func (q *ReportQuery) validate() (time.Duration, error) {
	if !q.From.IsZero() && !q.To.IsZero() && q.From.After(q.To) {
		return 0, fmt.Errorf("datastore: report: from %v is after to %v: %w",
			q.From.UTC().Format(time.RFC3339Nano), q.To.UTC().Format(time.RFC3339Nano), ErrInvalidQuery)
	}
	switch q.GroupBy {
	case GroupByNone, GroupByFunction, GroupByTenant:
		return 0, nil
	case GroupByMinute:
		return time.Minute, nil
	case GroupByHour:
		return time.Hour, nil
	case GroupByDay:
		return 24 * time.Hour, nil
	}
	return 0, fmt.Errorf("datastore: report: unknown group_by %q (want function, tenant, minute, hour or day): %w", q.GroupBy, ErrInvalidQuery)
}

type reportAcc struct {
	row  ReportRow
	cpu  int64
	hist runHist
}

// Report answers q from the rollups only, so it covers calls whose raw rows
// were pruned. It reads each part of the range from the coarsest rollup
// level that fits (days, then hours, then minutes at the edges), all in one
// read transaction, so it sees one consistent state of the ingestion. It
// returns one row per group that has calls, ordered by name for name
// groupings and by time for time groupings; nothing selected gives an
// empty, non-nil slice. An invalid q gives an error wrapping
// [ErrInvalidQuery]. A cancelled ctx stops it with an error wrapping
// ctx.Err().
func (s *Store) Report(ctx context.Context, q ReportQuery) ([]ReportRow, error) {
	unit, err := q.validate()
	if err != nil {
		return nil, err
	}
	lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
	if !q.From.IsZero() {
		lo = minuteOf(q.From.UnixNano())
	}
	if !q.To.IsZero() {
		hi = ceilTo(q.To.UnixNano(), int64(time.Minute)) // a minute counts if it starts before To
	}
	maxLevel := numLevels - 1
	for unit > 0 && rollupLevels[maxLevel].width > int64(unit) {
		maxLevel--
	}
	var filter string
	var filterArgs []any
	if q.Function != "" {
		filter += ` AND function = ?`
		filterArgs = append(filterArgs, q.Function)
	}
	if q.Tenant != "" {
		filter += ` AND tenant = ?`
		filterArgs = append(filterArgs, q.Tenant)
	}

	tx, err := s.read.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("datastore: report: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read only

	agg := reportAggregator{q: &q, unit: int64(unit), byName: map[string]*reportAcc{}, byTime: map[int64]*reportAcc{}}
	for _, p := range planRollups(lo, hi, maxLevel, nil) {
		args := append([]any{p.from, p.to}, filterArgs...)
		if err := agg.read(ctx, tx, rollupLevels[p.level].selectSQL+filter, args); err != nil {
			return nil, fmt.Errorf("datastore: report: %w", err)
		}
	}
	return agg.rows(), nil
}

// reportAggregator adds rollup rows into report groups.
type reportAggregator struct {
	q      *ReportQuery
	unit   int64 // time grouping width, or 0
	byName map[string]*reportAcc
	byTime map[int64]*reportAcc
}

// read adds the rows of one rollup query.
func (g *reportAggregator) read(ctx context.Context, tx *sql.Tx, query string, args []any) error {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	var (
		bucket, status, count, run, total, queue, cpu, bIn, bOut int64
		gb                                                       float64
		function, tenant, start, hist                            sql.RawBytes
	)
	for rows.Next() {
		if err := rows.Scan(&bucket, &function, &tenant, &status, &start, &count, &run, &total,
			&queue, &gb, &cpu, &bIn, &bOut, &hist); err != nil {
			return err
		}
		a := g.group(bucket, function, tenant)
		r := &a.row
		r.Count += count
		switch status / 100 {
		case 2:
			r.Status2xx += count
		case 3:
			r.Status3xx += count
		case 4:
			r.Status4xx += count
		case 5:
			r.Status5xx += count
		default:
			r.StatusOther += count
		}
		switch string(start) {
		case "warm":
			r.Warm += count
		case "thawed":
			r.Thawed += count
		case "stem":
			r.Stem += count
		case "cold":
			r.Cold += count
		default:
			r.NoContainer += count
		}
		r.RunTime += time.Duration(run)
		r.TotalTime += time.Duration(total)
		r.QueueWait += time.Duration(queue)
		r.GBSeconds += gb
		a.cpu += cpu
		r.BytesIn += bIn
		r.BytesOut += bOut
		if err := a.hist.mergeBlob(hist); err != nil {
			return fmt.Errorf("rollup of %d, function %q: %w", bucket, function, err)
		}
	}
	return rows.Err()
}

// group returns the accumulator of a rollup row's group.
func (g *reportAggregator) group(bucket int64, function, tenant []byte) *reportAcc {
	if g.unit > 0 {
		t := floorTo(bucket, g.unit)
		a := g.byTime[t]
		if a == nil {
			a = &reportAcc{row: ReportRow{Time: fromNanos(t)}}
			a.row.Group = a.row.Time.Format(time.RFC3339)
			g.byTime[t] = a
		}
		return a
	}
	var name []byte
	switch g.q.GroupBy {
	case GroupByFunction:
		name = function
	case GroupByTenant:
		name = tenant
	}
	a := g.byName[string(name)]
	if a == nil {
		a = &reportAcc{row: ReportRow{Group: string(name)}}
		g.byName[a.row.Group] = a
	}
	return a
}

// rows finishes the groups and returns them in order.
func (g *reportAggregator) rows() []ReportRow {
	out := make([]ReportRow, 0, len(g.byName)+len(g.byTime))
	finish := func(a *reportAcc) {
		a.row.CPUSeconds = float64(a.cpu) / float64(time.Second)
		a.row.RunP50 = a.hist.quantile(0.50)
		a.row.RunP99 = a.hist.quantile(0.99)
		out = append(out, a.row)
	}
	for _, a := range g.byName {
		finish(a)
	}
	for _, a := range g.byTime {
		finish(a)
	}
	slices.SortFunc(out, func(x, y ReportRow) int {
		if c := x.Time.Compare(y.Time); c != 0 {
			return c
		}
		return cmp.Compare(x.Group, y.Group)
	})
	return out
}
