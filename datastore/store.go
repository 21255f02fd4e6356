package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
)

// ErrNotFound is wrapped, with the key looked for, by every method that
// finds no record.
var ErrNotFound = errors.New("not found")

// ErrSchemaTooNew is wrapped by [Open] when the database was migrated by a
// newer kiln than this one.
var ErrSchemaTooNew = errors.New("database schema is newer than this program")

// busyTimeout is how long a statement waits for a lock held by another
// connection (another process, or the writer during a checkpoint) before
// failing with SQLITE_BUSY.
const busyTimeout = 5 * time.Second

// Store is kiln's SQLite database. Its methods are safe for concurrent use.
type Store struct {
	write *sql.DB // one connection; every write goes here
	read  *sql.DB // several query_only connections

	now func() time.Time // clock for Created/Updated; time.Now outside tests

	ingestMu    sync.Mutex        // guards ingestStmts
	ingestStmts *ingestStatements // prepared on the write handle by the first batch; nil before
}

// Open opens the SQLite file at path, creating it if needed, switches it to
// WAL, and applies the migrations it lacks. It fails with an error wrapping
// [ErrSchemaTooNew] if the file's schema is newer than this code. ctx bounds
// the opening and the migrations only, not the Store's life.
func Open(ctx context.Context, path string) (*Store, error) {
	return open(ctx, path, migrations)
}

func open(ctx context.Context, path string, migs []migration) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("datastore: open %q: need the path of a database file", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("datastore: open %q: %w", path, err)
	}

	write, err := sql.Open(driverName, dsn(abs, url.Values{
		"_txlock": {"immediate"},
	}))
	if err != nil {
		return nil, fmt.Errorf("datastore: open %s: %w", abs, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)

	s := &Store{write: write, now: time.Now}
	if err := s.enableWAL(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("datastore: open %s: WAL: %w", abs, err)
	}
	if err := migrate(ctx, write, migs, s.now); err != nil {
		write.Close()
		return nil, fmt.Errorf("datastore: open %s: %w", abs, err)
	}

	// The read handle is opened only once the file exists in WAL mode with
	// its schema in place.
	read, err := sql.Open(driverName, dsn(abs, url.Values{
		"_query_only": {"1"},
	}))
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("datastore: open %s: %w", abs, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)
	if err := read.PingContext(ctx); err != nil {
		read.Close()
		write.Close()
		return nil, fmt.Errorf("datastore: open %s: read handle: %w", abs, err)
	}
	s.read = read
	return s, nil
}

// dsn builds a go-sqlite3 data source name for the file at abs with the
// settings common to both handles plus extra. The path goes in as a "file:"
// URI with the characters that URIs give a meaning to escaped, so any file
// name works.
func dsn(abs string, extra url.Values) string {
	q := url.Values{
		"_synchronous":  {"NORMAL"},
		"_busy_timeout": {fmt.Sprint(busyTimeout.Milliseconds())},
		"_foreign_keys": {"1"},
	}
	for k, v := range extra {
		q[k] = v
	}
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(abs)
	return "file:" + esc + "?" + q.Encode()
}

// enableWAL switches the file to WAL, which is persistent, and confirms it:
// SQLite silently keeps the old journal mode where WAL is impossible.
//
// The switch is not left to the DSN because converting a rollback-journal
// file to WAL can fail with SQLITE_BUSY at once, without the busy timeout,
// when another connection (another process starting) converts it at the
// same moment. It is retried here for up to busyTimeout.
func (s *Store) enableWAL(ctx context.Context) error {
	deadline := time.Now().Add(busyTimeout)
	wait := time.Millisecond
	for {
		var mode string
		err := s.write.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode)
		if err == nil {
			if !strings.EqualFold(mode, "wal") {
				return fmt.Errorf("journal_mode is %q, want wal (is the file on a file system without shared memory?)", mode)
			}
			return nil
		}
		if !isBusy(err) || time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("set journal_mode=WAL: %w", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("set journal_mode=WAL: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

func isBusy(err error) bool {
	var e sqlite3.Error
	return errors.As(err, &e) && (e.Code == sqlite3.ErrBusy || e.Code == sqlite3.ErrLocked)
}

// Close closes both handles. Statements still running finish first; the
// Store must not be used afterwards.
func (s *Store) Close() error {
	var errs []error
	s.ingestMu.Lock()
	if s.ingestStmts != nil {
		errs = append(errs, s.ingestStmts.close())
		s.ingestStmts = nil
	}
	s.ingestMu.Unlock()
	if s.read != nil {
		errs = append(errs, s.read.Close())
	}
	errs = append(errs, s.write.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datastore: close: %w", err)
	}
	return nil
}
