package goruntime

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    Config
		wantErr string // substring; empty means success
	}{
		{
			name: "minimal",
			yaml: "name: hello\n",
			want: Config{Name: "hello"},
		},
		{
			name: "full",
			yaml: `name: hello
runtime: go
memory: 256
timeout: 1m30s
min_warm: 1
max_containers: 4
concurrency: 8
freeze_after: -1s
idle_timeout: 10m
cpu: 500
env:
  GREETING: hi
  EMPTY: ""
`,
			want: Config{Name: "hello", Runtime: "go", Memory: 256, Timeout: "1m30s", MinWarm: 1, MaxContainers: 4,
				Concurrency: 8, FreezeAfter: "-1s", IdleTimeout: "10m", CPU: 500, Env: map[string]string{"GREETING": "hi", "EMPTY": ""}},
		},
		{name: "freeze at once", yaml: "name: a\nfreeze_after: 0s\n", want: Config{Name: "a", FreezeAfter: "0s"}},
		{name: "unknown key", yaml: "name: a\nmemroy: 128\n", wantErr: `unknown key "memroy"`},
		{name: "unknown nested", yaml: "name: a\nfoo:\n  bar: 1\n", wantErr: `unknown key "foo"`},
		{name: "empty", yaml: "", wantErr: "empty"},
		{name: "comment only", yaml: "# nothing\n", wantErr: "empty"},
		{name: "no name", yaml: "memory: 128\n", wantErr: "name: missing"},
		{name: "bad name", yaml: "name: Hello\n", wantErr: "name: invalid function name"},
		{name: "other runtime", yaml: "name: a\nruntime: python\n", wantErr: "runtime:"},
		{name: "negative memory", yaml: "name: a\nmemory: -1\n", wantErr: "memory: -1 MiB is negative"},
		{name: "memory with unit", yaml: "name: a\nmemory: 128Mi\n", wantErr: "128Mi"},
		{name: "negative cpu", yaml: "name: a\ncpu: -5\n", wantErr: "cpu: -5 millicores is negative"},
		{name: "huge memory", yaml: "name: a\nmemory: 4294967296\n", wantErr: "memory: 4294967296 MiB is too large"},
		{name: "duration without unit", yaml: "name: a\ntimeout: 30\n", wantErr: `timeout: invalid duration "30"`},
		{name: "bad duration", yaml: "name: a\ntimeout: soon\n", wantErr: `timeout: invalid duration "soon"`},
		{name: "zero timeout", yaml: "name: a\ntimeout: 0s\n", wantErr: "timeout: must be positive"},
		{name: "negative timeout", yaml: "name: a\ntimeout: -1s\n", wantErr: "timeout: -1s is negative"},
		{name: "bad freeze_after", yaml: "name: a\nfreeze_after: x\n", wantErr: "freeze_after: invalid duration"},
		{name: "negative idle_timeout", yaml: "name: a\nidle_timeout: -1m\n", wantErr: "idle_timeout:"},
		{name: "negative min_warm", yaml: "name: a\nmin_warm: -1\n", wantErr: "min_warm: -1 is negative"},
		{name: "negative concurrency", yaml: "name: a\nconcurrency: -2\n", wantErr: "concurrency:"},
		{name: "huge max_containers", yaml: "name: a\nmax_containers: 9999999999\n", wantErr: "max_containers:"},
		{name: "min_warm above max", yaml: "name: a\nmin_warm: 3\nmax_containers: 2\n", wantErr: "min_warm: 3 is above max_containers"},
		{name: "bad env name", yaml: "name: a\nenv:\n  \"A=B\": x\n", wantErr: "env: invalid variable name"},
		{name: "env not a map", yaml: "name: a\nenv: [a, b]\n", wantErr: "line 2"},
		{name: "two documents", yaml: "name: a\n---\nname: b\n", wantErr: "more than one YAML document"},
		{name: "not yaml", yaml: "name: [\n", wantErr: "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), ConfigFile)
			if err := os.WriteFile(path, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := LoadConfig(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadConfig = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				if !strings.HasPrefix(err.Error(), path+": ") {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadConfig = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml")); !os.IsNotExist(err) {
		t.Fatalf("LoadConfig = %v, want a not-exist error", err)
	}
}

func TestConfigSpec(t *testing.T) {
	c := Config{Name: "hello", Memory: 256, Timeout: "2s", MinWarm: 1, MaxContainers: 3, Concurrency: 4,
		FreezeAfter: "0s", IdleTimeout: "5m", CPU: 250, Env: map[string]string{"A": "b"}}
	got, err := c.Spec([]byte("archive"))
	if err != nil {
		t.Fatal(err)
	}
	want := &kilnv1.FunctionSpec{
		Runtime:       "go",
		Code:          []byte("archive"),
		MemoryMb:      256,
		Timeout:       durationpb.New(2 * time.Second),
		Env:           map[string]string{"A": "b"},
		MinWarm:       1,
		MaxContainers: 3,
		Concurrency:   4,
		FreezeAfter:   durationpb.New(0),
		IdleTimeout:   durationpb.New(5 * time.Minute),
		CpuMillis:     250,
	}
	if !proto.Equal(got, want) {
		t.Errorf("Spec = %v\nwant %v", got, want)
	}

	// Unset settings stay unset, so that the agent's defaults apply.
	got, err = Config{Name: "hello"}.Spec([]byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, &kilnv1.FunctionSpec{Runtime: "go", Code: []byte("a")}) {
		t.Errorf("Spec of a minimal config = %v", got)
	}

	if _, err := (Config{Name: "hello"}).Spec(nil); err == nil {
		t.Error("Spec(\"\") succeeded")
	}
	if _, err := (Config{Name: "hello", Memory: -1}).Spec([]byte("a")); err == nil {
		t.Error("Spec of an invalid config succeeded")
	}
}

// FuzzParseConfig checks that a kiln.yaml ParseConfig accepts is one Spec
// accepts, and that it round-trips: written back as YAML, it parses to
// the same deploy.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("name: hello\nruntime: go\nmemory: 128\ntimeout: 30s\n"))
	f.Add([]byte("name: a\nenv:\n  A: b\nfreeze_after: -1s\n"))
	f.Add([]byte("name: [\n"))
	f.Add([]byte("name: a\nruntime: python3\nhandler: \"x: y.py\"\npackages: [\"no\", \"~\"]\nenv:\n  \"yes\": \"null\"\n"))
	f.Add([]byte("name: a\nfreeze_after: never\nidle_timeout: 1h2m3.5s\nrequire_key: true\ncpu: 2147483647\n"))
	f.Add([]byte("name: a\nenv: {B: \"\\u2028\\t\", C: \"#\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		spec, err := c.Spec([]byte("a"))
		if err != nil {
			t.Fatalf("ParseConfig accepted a config Spec rejects: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("an accepted config does not marshal: %v", err)
		}
		back, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("an accepted config written back does not parse: %v\n%s", err, out)
		}
		if again, err := back.Spec([]byte("a")); err != nil || !proto.Equal(again, spec) {
			t.Fatalf("an accepted config written back is another deploy: %v, %v\nwas %v\n%s", again, err, spec, out)
		}
	})
}

func TestConfigRequireKey(t *testing.T) {
	c, err := ParseConfig([]byte("name: f\nruntime: go\nrequire_key: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Spec([]byte("a"))
	if err != nil || !s.RequireKey {
		t.Fatalf("spec = %v, %v", s, err)
	}
}

func TestFreezeAfterNever(t *testing.T) {
	for _, v := range []string{"-1", "never", "-1s", `"-1"`} {
		c, err := ParseConfig([]byte("name: f\nfreeze_after: " + v + "\n"))
		if err != nil {
			t.Fatalf("freeze_after: %s: %v", v, err)
		}
		s, err := c.Spec([]byte("a"))
		if err != nil {
			t.Fatalf("freeze_after: %s: %v", v, err)
		}
		if s.FreezeAfter.AsDuration() >= 0 {
			t.Errorf("freeze_after: %s gave %v, want negative (never)", v, s.FreezeAfter.AsDuration())
		}
	}
	if _, err := ParseConfig([]byte("name: f\nfreeze_after: sometimes\n")); err == nil || !strings.Contains(err.Error(), "never") {
		t.Errorf("freeze_after: sometimes: %v, want an error that names never", err)
	}
	if _, err := ParseConfig([]byte("name: f\ntimeout: never\n")); err == nil {
		t.Error("timeout: never accepted")
	}
}
