package datastore

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// openTest opens a fresh Store in a temporary directory and closes it when
// the test ends.
func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// appliedVersions lists schema_migrations in order.
func appliedVersions(t *testing.T, s *Store) []int {
	t.Helper()
	rows, err := s.read.QueryContext(t.Context(), `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestMigrationsAreNumberedInOrder(t *testing.T) {
	if err := checkMigrations(migrations); err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations {
		if m.name == "" || strings.TrimSpace(m.sql) == "" {
			t.Errorf("migration %d has no name or no SQL", m.version)
		}
	}
}

func TestOpenIsIdempotentAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kiln.db")
	want := make([]int, len(migrations))
	for i := range want {
		want[i] = i + 1
	}
	for i := range 3 {
		s, err := Open(t.Context(), path)
		if err != nil {
			t.Fatalf("open #%d: %v", i+1, err)
		}
		if _, err := s.PutFunction(t.Context(), Function{Name: fmt.Sprintf("f%d", i), Runtime: "go"}); err != nil {
			t.Fatalf("open #%d: put: %v", i+1, err)
		}
		got := appliedVersions(t, s)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("open #%d: schema_migrations versions = %v, want %v (each once)", i+1, got, want)
		}
		fs, err := s.ListFunctions(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) != i+1 {
			t.Errorf("open #%d: %d functions, want %d: data lost across reopen", i+1, len(fs), i+1)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kiln.db")
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	future := len(migrations) + 1
	if _, err := s.write.ExecContext(t.Context(),
		`INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, future); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(t.Context(), path)
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded on a database from a newer version")
	}
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Errorf("error %q does not wrap ErrSchemaTooNew", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(future)) {
		t.Errorf("error %q does not name the database's version %d", err, future)
	}
}

func TestMigrateAppliesOnlyPendingSteps(t *testing.T) {
	v1 := migration{version: 1, name: "a", sql: `CREATE TABLE a (x INTEGER)`}
	v2 := migration{version: 2, name: "b", sql: `CREATE TABLE b (x INTEGER); INSERT INTO a VALUES (2)`}
	broken := migration{version: 3, name: "broken", sql: `CREATE TABLE c (x INTEGER); INSERT INTO nowhere VALUES (1)`}
	gap := migration{version: 4, name: "gap", sql: `CREATE TABLE c (x INTEGER)`}

	path := filepath.Join(t.TempDir(), "kiln.db")
	// The steps share one file and build on each other, so they run in order
	// and stop at the first failure.
	steps := []struct {
		name     string
		migs     []migration
		wantErr  bool
		versions []int
		rowsInA  int // v2 inserts one row; more means it ran twice
	}{
		{"first run applies v1", []migration{v1}, false, []int{1}, 0},
		{"appended step applies v2 only", []migration{v1, v2}, false, []int{1, 2}, 1},
		{"rerun applies nothing", []migration{v1, v2}, false, []int{1, 2}, 1},
		{"failing step rolls back", []migration{v1, v2, broken}, true, []int{1, 2}, 1},
		{"gap in versions refused", []migration{v1, v2, gap}, true, []int{1, 2}, 1},
	}
	for _, st := range steps {
		ok := t.Run(st.name, func(t *testing.T) {
			s, err := open(t.Context(), path, st.migs)
			if (err != nil) != st.wantErr {
				t.Fatalf("open error = %v, want error: %v", err, st.wantErr)
			}
			if err == nil {
				s.Close()
			}
			// Inspect the file with the current code's idea of the schema.
			s, err = open(t.Context(), path, st.migs[:len(st.versions)])
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := appliedVersions(t, s); fmt.Sprint(got) != fmt.Sprint(st.versions) {
				t.Errorf("versions = %v, want %v", got, st.versions)
			}
			var n int
			if err := s.read.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM a`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != st.rowsInA {
				t.Errorf("table a has %d rows, want %d", n, st.rowsInA)
			}
			if err := s.read.QueryRowContext(t.Context(),
				`SELECT COUNT(*) FROM sqlite_schema WHERE name = 'c'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Error("table c exists: a failed or refused step left changes behind")
			}
		})
		if !ok {
			break
		}
	}
}

func TestPragmas(t *testing.T) {
	s := openTest(t)
	cases := []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "1"}, // NORMAL
		{"foreign_keys", "1"},
		{"busy_timeout", fmt.Sprint(busyTimeout.Milliseconds())},
	}
	for _, h := range []struct {
		name string
		q    querier
	}{{"write", s.write}, {"read", s.read}} {
		for _, c := range cases {
			t.Run(h.name+"/"+c.pragma, func(t *testing.T) {
				var got string
				if err := h.q.QueryRowContext(t.Context(), "PRAGMA "+c.pragma).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if !strings.EqualFold(got, c.want) {
					t.Errorf("PRAGMA %s = %q, want %q", c.pragma, got, c.want)
				}
			})
		}
	}
	t.Run("read handle is query_only", func(t *testing.T) {
		_, err := s.read.ExecContext(t.Context(), `DELETE FROM functions`)
		if err == nil {
			t.Error("write through the read handle succeeded")
		}
	})
}

func TestOpenRejectsNonFilePaths(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file::memory:?cache=shared"} {
		if s, err := Open(t.Context(), p); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

func TestOpenOddFileName(t *testing.T) {
	// Characters that mean something in a URI must reach the file system as is.
	dir := t.TempDir()
	path := filepath.Join(dir, "we?ird#na%20me.db")
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	matches, err := filepath.Glob(filepath.Join(dir, "*.db"))
	if err != nil {
		t.Fatal(err)
	}
	if len(matches) != 1 || matches[0] != path {
		t.Errorf("database files = %q, want [%q]", matches, path)
	}
}

func TestConcurrentOpenMigratesOnce(t *testing.T) {
	// Separate Stores on one new file stand in for several processes
	// starting at once.
	path := filepath.Join(t.TempDir(), "kiln.db")
	const n = 8
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = Open(t.Context(), path) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("open #%d: %v", i, err)
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		return
	}
	if got := appliedVersions(t, stores[0]); len(got) != len(migrations) {
		t.Errorf("schema_migrations = %v, want each of %d versions once", got, len(migrations))
	}
}
