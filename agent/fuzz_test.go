package agent

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	goruntime "github.com/kilnfx/kiln/runtimes/go"
)

// FuzzValidateName checks the one rule of function names: the agent and
// the CLI (runtimes/go) agree on it, and a name it accepts is safe
// wherever kiln puts one: a path component, a container id, a metrics
// label, a URL segment.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"echo", "a", "a-1", "Echo", "1a", "-a", "a_b", "a/b", "..", "a.b", "é", "\xff",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a\x00", "a\n", " a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName(name)
		cliErr := goruntime.ValidateName(name)
		if (err == nil) != (cliErr == nil) {
			t.Fatalf("%q: the agent says %v, the CLI %v", name, err, cliErr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("%q: error %v is no invalid_argument", name, err)
			}
			return
		}
		if len(name) == 0 || len(name) > 63 || name[0] < 'a' || name[0] > 'z' {
			t.Fatalf("%q accepted", name)
		}
		for _, c := range []byte(name) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				t.Fatalf("%q accepted with byte %q", name, c)
			}
		}
	})
}

// FuzzSpecJSON feeds a deploy's spec, as JSON, to normalizeSpec, as the
// HTTP edge does. It must refuse with invalid_argument or return a spec
// within every bound, leave its argument alone, and give back the same
// spec when given its own output, directly or through JSON.
func FuzzSpecJSON(f *testing.F) {
	for _, s := range []string{
		`{"runtime":"go"}`,
		`{"runtime":"go","memory_mb":64,"timeout":"5s","concurrency":8,"max_containers":3,"min_warm":1}`,
		`{"runtime":"python3","handler":"app/main.py","packages":["curl","curl","jq"]}`,
		`{"runtime":"node","env":{"A":"b","KILN_X":"y"}}`,
		`{"runtime":"go","handler":"../x"}`, `{"runtime":"go","timeout":"-1s"}`, `{"runtime":"go","timeout":"3601s"}`,
		`{"runtime":"go","freeze_after":"-1s","idle_timeout":"0s"}`, `{"runtime":"go","cpu_millis":-1}`,
		`{"runtime":"go","min_warm":11}`, `{"runtime":"cobol"}`, `{"runtime":"go","packages":["x"]}`,
		`{"runtime":"ruby","require_key":true,"memory_mb":65537}`, `{"runtime":"binary","handler":"bin/run"}`,
		`{"runtime":"go","timeout":"315576000001s"}`, `{"runtime":"go","env":{"":"x"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &kilnv1.FunctionSpec{}
		if err := protojson.Unmarshal(data, in); err != nil {
			return // the edge answers protojson's refusal itself
		}
		before := proto.Clone(in)
		s, err := normalizeSpec(in)
		if !proto.Equal(in, before) {
			t.Fatalf("normalizeSpec changed its argument: %v → %v", before, in)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("%s: error %v is no invalid_argument", data, err)
			}
			return
		}
		checkSpecBounds(t, s)
		again, err := normalizeSpec(s)
		if err != nil || !proto.Equal(again, s) {
			t.Fatalf("a normalized spec normalized again: %v, %v\nwas %v", again, err, s)
		}
		b, err := protojson.Marshal(s)
		if err != nil {
			t.Fatalf("a normalized spec does not marshal: %v", err)
		}
		back := &kilnv1.FunctionSpec{}
		if err := protojson.Unmarshal(b, back); err != nil {
			t.Fatalf("a normalized spec's JSON %s does not unmarshal: %v", b, err)
		}
		if again, err := normalizeSpec(back); err != nil || !proto.Equal(again, s) {
			t.Fatalf("a normalized spec through JSON: %v, %v\nwas %v", again, err, s)
		}
	})
}

// checkSpecBounds fails t unless s, a spec normalizeSpec returned, is
// within the bounds it promises.
func checkSpecBounds(t *testing.T, s *kilnv1.FunctionSpec) {
	t.Helper()
	switch {
	case s.MemoryMb < MinMemoryMB || s.MemoryMb > MaxMemoryMB:
		t.Fatalf("memory_mb %d", s.MemoryMb)
	case s.Timeout == nil || s.Timeout.AsDuration() <= 0 || s.Timeout.AsDuration() > MaxTimeout:
		t.Fatalf("timeout %v", s.Timeout)
	case s.MaxContainers < 1 || s.MaxContainers > MaxMaxContainers:
		t.Fatalf("max_containers %d", s.MaxContainers)
	case s.MinWarm < 0 || s.MinWarm > s.MaxContainers:
		t.Fatalf("min_warm %d of %d", s.MinWarm, s.MaxContainers)
	case s.Concurrency < 1 || s.Concurrency > MaxConcurrency:
		t.Fatalf("concurrency %d", s.Concurrency)
	case s.CpuMillis < 0 || s.CpuMillis > 1<<20:
		t.Fatalf("cpu_millis %d", s.CpuMillis)
	case s.FreezeAfter == nil || s.FreezeAfter.CheckValid() != nil:
		t.Fatalf("freeze_after %v", s.FreezeAfter)
	case s.IdleTimeout == nil || s.IdleTimeout.CheckValid() != nil || s.IdleTimeout.AsDuration() < 0:
		t.Fatalf("idle_timeout %v", s.IdleTimeout)
	case !handlerRE.MatchString(s.Handler) || strings.Contains(s.Handler, ".."):
		t.Fatalf("handler %q", s.Handler)
	}
	for k := range s.Env {
		if !envKeyRE.MatchString(k) || strings.HasPrefix(k, "KILN_") {
			t.Fatalf("env %q", k)
		}
	}
}

// FuzzKilnYAML feeds a kiln.yaml through the CLI's parser and, when the
// CLI accepts it, to the agent as the deploy it makes. Neither panics; the
// agent refuses what it refuses with invalid_argument, and what it accepts
// is within its bounds.
func FuzzKilnYAML(f *testing.F) {
	for _, s := range []string{
		"name: hello\nruntime: go\nmemory: 128\ntimeout: 30s\n",
		"name: a\nenv:\n  A: b\nfreeze_after: never\n",
		"name: a\nruntime: python3\nhandler: main.py\npackages: [curl]\nmin_warm: 2\nmax_containers: 1\n",
		"name: a\nmemory: 8\ncpu: 99999999\n", "name: a\nenv:\n  KILN_X: y\n  1A: b\n", "name: a\ntimeout: 2h\n",
		"name: a\nruntime: node\nhandler: ../../etc/passwd\n", "name: [\n", "name: a\n---\nname: b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := goruntime.ParseConfig(data)
		if err != nil {
			return
		}
		spec, err := c.Spec([]byte("code"))
		if err != nil {
			t.Fatalf("ParseConfig accepted what Spec refuses: %v", err)
		}
		s, err := normalizeSpec(spec)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error %v is no invalid_argument", err)
			}
			return
		}
		checkSpecBounds(t, s)
	})
}
