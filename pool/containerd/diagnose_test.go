package containerd

import (
	"context"
	"errors"
	"testing"

	"github.com/kilnfx/kiln/pool"
)

// TestDiagnose reads a container's exit status and fault counters from a
// fake cgroup tree, as v1 (this host's hybrid layout) and v2 write them.
func TestDiagnose(t *testing.T) {
	const cg = "/kiln/c1"
	for _, tt := range []struct {
		name   string
		files  map[string]string
		status uint32
		exited bool
		want   pool.Diagnosis
	}{
		{
			name: "v1 oom kill",
			files: map[string]string{
				"memory/kiln/c1/memory.usage_in_bytes":     "1000\n",
				"memory/kiln/c1/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
				"memory/kiln/c1/memory.failcnt":            "77\n",
				"memory/kiln/c1/memory.limit_in_bytes":     "33554432\n",
				"cpuacct/kiln/c1/cpuacct.stat":             "user 1\nsystem 2\n",
				"pids/kiln/c1/pids.events":                 "max 0\n",
				"pids/kiln/c1/pids.max":                    "256\n",
				"memory/kiln/c1/memory.max_usage_in_bytes": "33554432\n",
			},
			status: 137, exited: true,
			want: pool.Diagnosis{ExitCode: -1, Signal: 9, OOMKills: 1, MemoryLimitBytes: 32 << 20, PidsLimit: 256},
		},
		{
			name: "v1 without oom_kill: failcnt, pids events, exit status",
			files: map[string]string{
				"memory/kiln/c1/memory.usage_in_bytes": "1000\n",
				"memory/kiln/c1/memory.oom_control":    "oom_kill_disable 0\nunder_oom 0\n",
				"memory/kiln/c1/memory.failcnt":        "0\n",
				"memory/kiln/c1/memory.limit_in_bytes": "9223372036854771712\n",
				"cpuacct/kiln/c1/cpuacct.stat":         "user 1\nsystem 2\n",
				"pids/kiln/c1/pids.events":             "max 12\n",
				"pids/kiln/c1/pids.max":                "max\n",
			},
			status: 2, exited: true,
			want: pool.Diagnosis{ExitCode: 2, PidsMaxEvents: 12},
		},
		{
			name: "v2 unified, still running",
			files: map[string]string{
				"unified/kiln/c1/memory.current": "4096\n",
				"unified/kiln/c1/memory.events":  "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
				"unified/kiln/c1/memory.max":     "67108864\n",
				"unified/kiln/c1/pids.events":    "max 3\n",
				"unified/kiln/c1/pids.max":       "64\n",
				"unified/kiln/c1/cpu.stat":       "usage_usec 30\nuser_usec 10\nsystem_usec 20\n",
			},
			want: pool.Diagnosis{ExitCode: -1, OOMKills: 1, PidsMaxEvents: 3, MemoryLimitBytes: 64 << 20, PidsLimit: 64},
		},
		{
			name:   "unknown status",
			files:  map[string]string{"unified/kiln/c1/memory.current": "1\n", "unified/kiln/c1/memory.events": "oom_kill 0\n", "unified/kiln/c1/cpu.stat": "user_usec 1\nsystem_usec 1\n"},
			status: unknownExitStatus, exited: true,
			want: pool.Diagnosis{ExitCode: -1},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			c := &container{id: "c1", cgroup: cg, exited: make(chan struct{})}
			if tt.exited {
				c.markExitedWith(tt.status)
			}
			d := &Driver{opts: options{cgroupRoot: root}, ctrs: map[string]*container{"c1": c}}
			got, err := d.Diagnose(context.Background(), "c1")
			if err != nil {
				t.Fatal(err)
			}
			if !got.HasStats {
				t.Error("no Stats reading")
			}
			got.Stats, got.HasStats = pool.Stats{}, false
			if got != tt.want {
				t.Errorf("Diagnose = %+v, want %+v", got, tt.want)
			}
		})
	}
	d := &Driver{opts: options{cgroupRoot: t.TempDir()}, ctrs: map[string]*container{}}
	if _, err := d.Diagnose(context.Background(), "gone"); !errors.Is(err, pool.ErrContainerNotFound) {
		t.Errorf("Diagnose of an unknown container: %v", err)
	}
}
