package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
)

// TestRefusedNamesAreRecordedSafely calls functions by names a client makes
// up: bytes that are not UTF-8, a long name whose 63rd byte falls inside a
// character, names of no function. Each is refused with its class and
// recorded under a name that is valid UTF-8 of at most 63 bytes (it once
// panicked the metrics, and with them the process, and made the call
// listing unanswerable as JSON), and none adds a metrics series: a client
// making up names cannot make kilnd's memory grow.
func TestRefusedNamesAreRecordedSafely(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	store, err := datastore.Open(ctx, dir+"/kiln.db")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sk := &sink{}
	p, err := pool.New(fake.New(handler), shortDir(t))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(ctx, store, p, dir, agent.WithUsageSink(sk), agent.WithMetrics(agent.NewMetrics(reg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(context.Background()); store.Close() })
	e := &env{agent: a, code: packExe(t, selfExe(t))}
	if _, err := a.Deploy(ctx, "echo", e.spec()); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		want error
	}{
		{"\xff", agent.ErrInvalidArgument},
		{strings.Repeat("é", 40), agent.ErrInvalidArgument},
		{"a" + strings.Repeat("é", 40), agent.ErrInvalidArgument},
		{"Echo", agent.ErrInvalidArgument},
		{"../echo", agent.ErrInvalidArgument},
		{"", agent.ErrInvalidArgument},
		{"nope", agent.ErrNotFound},
		{"nope-2", agent.ErrNotFound},
	} {
		for _, refuse := range []bool{false, true} {
			call := &agent.Call{Function: tt.name, Trigger: "http"}
			if refuse {
				a.Reject(call, errors.New("refused at the edge"))
			} else if _, err := a.Invoke(ctx, call); !errors.Is(err, tt.want) {
				t.Errorf("Invoke(%q) = %v, want %v", tt.name, err, tt.want)
			}
			rec := sk.last(t)
			if !utf8.ValidString(rec.Function) || len(rec.Function) > 63 {
				t.Errorf("call of %q (reject %v) recorded as %q", tt.name, refuse, rec.Function)
			}
			if rec.Revision != "" {
				t.Errorf("call of %q has revision %q", tt.name, rec.Revision)
			}
		}
	}
	// A refusal of a deployed function keeps its name and revision.
	if _, err := a.Reject(&agent.Call{Function: "echo", Trigger: "http"}, agent.ErrPayloadTooLarge); !errors.Is(err, agent.ErrPayloadTooLarge) {
		t.Fatal(err)
	}
	if rec := sk.last(t); rec.Function != "echo" || rec.Revision == "" {
		t.Errorf("refused call of echo recorded as %q revision %q", rec.Function, rec.Revision)
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "function" && l.GetValue() != "" && l.GetValue() != "echo" {
					t.Errorf("%s has a series for function %q", mf.GetName(), l.GetValue())
				}
			}
		}
	}
}
