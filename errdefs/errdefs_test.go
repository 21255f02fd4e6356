package errdefs

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/kilnfx/kiln/api/wire"
)

func TestEveryWireClassHasOneRow(t *testing.T) {
	var names []string
	for _, c := range Classes() {
		names = append(names, c.Name)
		got, ok := Lookup(c.Name)
		if !ok || got.Err != c.Err {
			t.Errorf("Lookup(%q) = %v, %v", c.Name, got, ok)
		}
		if c.Name != Internal.Name && c.Err != ErrFunction {
			if Classify(fmt.Errorf("%w: details", c.Err)).Name != c.Name {
				t.Errorf("a wrapped %v is not classified %s", c.Err, c.Name)
			}
		}
		if c.HTTP < 400 || c.HTTP > 599 {
			t.Errorf("%s: HTTP %d", c.Name, c.HTTP)
		}
	}
	want := wire.Classes()
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("table classes %v, wire names %v", names, want)
	}
	if Classify(errors.New("boom")) != Internal || Classify(nil) != Internal {
		t.Error("an error of no class is not Internal")
	}
	if _, ok := Lookup("teapot"); ok {
		t.Error("Lookup of an unknown class succeeded")
	}
}

func TestExecutorFailureCauses(t *testing.T) {
	for _, tt := range []struct {
		err            error
		name           string
		executorFailed bool
	}{
		{ErrOOM, wire.ClassOOM, true},
		{ErrPidsExhausted, wire.ClassPidsExhausted, true},
		{ErrExited, wire.ClassExited, true},
		{ErrExecutorFailed, wire.ClassExecutorFailure, true},
		{ErrResponseTooLarge, wire.ClassResponseTooLarge, false},
	} {
		err := fmt.Errorf("%w: function echo was killed", tt.err)
		if got := Classify(err); got.Name != tt.name || got.HTTP != 502 {
			t.Errorf("Classify(%v) = %s %d, want %s 502", err, got.Name, got.HTTP, tt.name)
		}
		if errors.Is(err, ErrExecutorFailed) != tt.executorFailed {
			t.Errorf("errors.Is(%v, ErrExecutorFailed) = %v", err, !tt.executorFailed)
		}
	}
	if Classify(ErrDeadlineExceeded).HTTP != 504 {
		t.Error("the timeout class is not 504")
	}
}
