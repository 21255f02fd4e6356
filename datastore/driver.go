package datastore

import (
	"database/sql"
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// driverName is go-sqlite3 registered with kiln's SQL functions on every
// connection:
//
//	kiln_hist_merge(a, b BLOB) BLOB   the sum of two run-time histograms
//	                                  (histogram.go); NULL counts as empty
const driverName = "sqlite3_kiln"

func init() {
	sql.Register(driverName, &sqlite3.SQLiteDriver{
		ConnectHook: func(c *sqlite3.SQLiteConn) error {
			return c.RegisterFunc("kiln_hist_merge", histMergeSQL, true)
		},
	})
}

// histMergeSQL implements kiln_hist_merge. A malformed blob or an argument
// that is neither a blob nor NULL is an error, which fails the statement: a
// rollup is never silently rewritten.
func histMergeSQL(a, b any) ([]byte, error) {
	var h runHist
	for _, arg := range [2]any{a, b} {
		switch blob := arg.(type) {
		case nil: // go-sqlite3 passes NULL as a nil []byte, but in case
		case []byte:
			if blob == nil { // NULL
				continue
			}
			if err := h.mergeBlob(blob); err != nil {
				return nil, fmt.Errorf("kiln_hist_merge: %w", err)
			}
		default:
			return nil, fmt.Errorf("kiln_hist_merge: argument of type %T, want a blob", arg)
		}
	}
	return h.appendBlob(make([]byte, 0, 64)), nil
}
