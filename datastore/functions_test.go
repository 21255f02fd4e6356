package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeClock returns the times it is given, one per call, then keeps
// returning the last one.
type fakeClock struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.times[0]
	if len(c.times) > 1 {
		c.times = c.times[1:]
	}
	return t
}

func sameFunction(a, b Function) bool {
	return a.Name == b.Name && a.Runtime == b.Runtime && a.Revision == b.Revision &&
		bytes.Equal(a.Spec, b.Spec) && a.Created.Equal(b.Created) && a.Updated.Equal(b.Updated)
}

func TestPutGetListDelete(t *testing.T) {
	ctx := t.Context()
	s := openTest(t)

	puts := []Function{
		{Name: "resize", Runtime: "go", Revision: "r1", Spec: []byte(`{"memory":128}`)},
		{Name: "echo", Runtime: "python3", Revision: "a", Spec: []byte(`{}`)},
		{Name: "thumb", Runtime: "node", Revision: "7", Spec: nil},
		{Name: "bin\x00ary", Runtime: "binary", Revision: "x", Spec: []byte{0, 1, 2, 0xff}},
	}
	stored := map[string]Function{}
	for _, f := range puts {
		got, err := s.PutFunction(ctx, f)
		if err != nil {
			t.Fatalf("PutFunction(%q): %v", f.Name, err)
		}
		if got.Created.IsZero() || !got.Created.Equal(got.Updated) {
			t.Errorf("%q: first Put gave Created %v, Updated %v: want both set and equal", f.Name, got.Created, got.Updated)
		}
		if got.Created.Location() != time.UTC {
			t.Errorf("%q: Created in %v, want UTC", f.Name, got.Created.Location())
		}
		if !bytes.Equal(got.Spec, f.Spec) {
			t.Errorf("%q: Spec %q, want %q", f.Name, got.Spec, f.Spec)
		}
		stored[f.Name] = got
	}

	for _, f := range puts {
		t.Run("get/"+f.Name, func(t *testing.T) {
			got, err := s.GetFunction(ctx, f.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !sameFunction(got, stored[f.Name]) {
				t.Errorf("GetFunction = %+v, want %+v", got, stored[f.Name])
			}
			if got.Created.Location() != time.UTC || got.Updated.Location() != time.UTC {
				t.Error("times not in UTC")
			}
		})
	}

	t.Run("list is ordered by name", func(t *testing.T) {
		fs, err := s.ListFunctions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range fs {
			names = append(names, f.Name)
			if !sameFunction(f, stored[f.Name]) {
				t.Errorf("listed %+v, want %+v", f, stored[f.Name])
			}
		}
		want := []string{"bin\x00ary", "echo", "resize", "thumb"}
		if fmt.Sprintf("%q", names) != fmt.Sprintf("%q", want) {
			t.Errorf("names = %q, want %q", names, want)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if err := s.DeleteFunction(ctx, "echo"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetFunction(ctx, "echo"); !errors.Is(err, ErrNotFound) {
			t.Errorf("get after delete: %v, want ErrNotFound", err)
		}
		fs, err := s.ListFunctions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) != len(puts)-1 {
			t.Errorf("%d functions after delete, want %d", len(fs), len(puts)-1)
		}
	})
}

func TestPutKeepsCreatedAndAdvancesUpdated(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name        string
		clock       []time.Time // times of the first and second Put
		wantUpdated time.Time   // of the second Put
	}{
		{"clock moves on", []time.Time{t0, t0.Add(time.Second)}, t0.Add(time.Second)},
		{"clock stands still", []time.Time{t0, t0}, t0.Add(time.Nanosecond)},
		{"clock steps back", []time.Time{t0, t0.Add(-time.Hour)}, t0.Add(time.Nanosecond)},
		{"local time zone", []time.Time{t0.In(time.FixedZone("X", 3600)), t0.Add(time.Minute)}, t0.Add(time.Minute)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			s := openTest(t)
			s.now = (&fakeClock{times: c.clock}).now

			first, err := s.PutFunction(ctx, Function{Name: "f", Runtime: "go", Revision: "1", Spec: []byte(`{"a":1}`)})
			if err != nil {
				t.Fatal(err)
			}
			if !first.Created.Equal(t0) || first.Created.Location() != time.UTC {
				t.Errorf("first Created = %v, want %v UTC", first.Created, t0)
			}
			// Created and Updated passed in are ignored.
			second, err := s.PutFunction(ctx, Function{Name: "f", Runtime: "go", Revision: "2", Spec: []byte(`{"a":2}`),
				Created: t0.Add(-48 * time.Hour), Updated: t0.Add(48 * time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			if !second.Created.Equal(first.Created) {
				t.Errorf("second Created = %v, want kept %v", second.Created, first.Created)
			}
			if !second.Updated.Equal(c.wantUpdated) || !second.Updated.After(first.Updated) {
				t.Errorf("second Updated = %v, want %v, after %v", second.Updated, c.wantUpdated, first.Updated)
			}
			got, err := s.GetFunction(ctx, "f")
			if err != nil {
				t.Fatal(err)
			}
			if !sameFunction(got, second) {
				t.Errorf("GetFunction = %+v, want %+v", got, second)
			}
			if got.Revision != "2" || string(got.Spec) != `{"a":2}` {
				t.Errorf("update not stored: %+v", got)
			}
		})
	}
}

func TestNotFound(t *testing.T) {
	s := openTest(t)
	if _, err := s.PutFunction(t.Context(), Function{Name: "present", Runtime: "go"}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"get", func(ctx context.Context) error { _, err := s.GetFunction(ctx, "absent"); return err }},
		{"get empty name", func(ctx context.Context) error { _, err := s.GetFunction(ctx, ""); return err }},
		{"delete", func(ctx context.Context) error { return s.DeleteFunction(ctx, "absent") }},
		{"delete twice", func(ctx context.Context) error {
			if err := s.DeleteFunction(ctx, "present"); err != nil {
				return fmt.Errorf("first delete: %v", err) // not %w: must not count as not found
			}
			return s.DeleteFunction(ctx, "present")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call(t.Context())
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("error = %v, want one wrapping ErrNotFound", err)
			}
			if err == ErrNotFound {
				t.Error("bare ErrNotFound: want it wrapped with the name")
			}
		})
	}
}

func TestPutRejectsEmptyName(t *testing.T) {
	s := openTest(t)
	if _, err := s.PutFunction(t.Context(), Function{Runtime: "go"}); err == nil {
		t.Error("PutFunction with an empty name succeeded")
	}
}

func TestListEmpty(t *testing.T) {
	s := openTest(t)
	fs, err := s.ListFunctions(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if fs == nil || len(fs) != 0 {
		t.Errorf("ListFunctions on an empty store = %#v, want an empty non-nil slice", fs)
	}
}

func TestPutCopiesSpec(t *testing.T) {
	s := openTest(t)
	spec := []byte(`{"x":1}`)
	got, err := s.PutFunction(t.Context(), Function{Name: "f", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	spec[2] = 'y'
	if string(got.Spec) != `{"x":1}` {
		t.Errorf("returned Spec shares the caller's slice: %q", got.Spec)
	}
}

func TestCancelledContext(t *testing.T) {
	s := openTest(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	cases := []struct {
		name string
		call func() error
	}{
		{"put", func() error { _, err := s.PutFunction(ctx, Function{Name: "f"}); return err }},
		{"get", func() error { _, err := s.GetFunction(ctx, "f"); return err }},
		{"list", func() error { _, err := s.ListFunctions(ctx); return err }},
		{"delete", func() error { return s.DeleteFunction(ctx, "f") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(); !errors.Is(err, context.Canceled) {
				t.Errorf("error = %v, want one wrapping context.Canceled", err)
			}
		})
	}
	if _, err := s.GetFunction(t.Context(), "f"); !errors.Is(err, ErrNotFound) {
		t.Errorf("put with a cancelled ctx stored something: %v", err)
	}
}

func TestConcurrentPutsAllLand(t *testing.T) {
	ctx := t.Context()
	s := openTest(t)
	const writers, each = 32, 25

	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				name := fmt.Sprintf("fn-%02d-%02d", w, i)
				if _, err := s.PutFunction(ctx, Function{Name: name, Runtime: "go", Revision: "1"}); err != nil {
					errs <- err
					return
				}
				// Every writer also rewrites one shared name, and reads.
				if _, err := s.PutFunction(ctx, Function{Name: "shared", Runtime: "go", Revision: name}); err != nil {
					errs <- err
					return
				}
				if _, err := s.GetFunction(ctx, name); err != nil {
					errs <- fmt.Errorf("read own write: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	fs, err := s.ListFunctions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := writers*each + 1; len(fs) != want {
		t.Errorf("%d functions stored, want %d", len(fs), want)
	}
	seen := map[string]bool{}
	for _, f := range fs {
		seen[f.Name] = true
	}
	for w := range writers {
		for i := range each {
			if name := fmt.Sprintf("fn-%02d-%02d", w, i); !seen[name] {
				t.Errorf("%s missing", name)
			}
		}
	}
}
