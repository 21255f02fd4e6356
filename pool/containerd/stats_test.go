package containerd

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kilnfx/kiln/pool"
)

// writeTree creates files (path relative to root → content).
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupStats(t *testing.T) {
	const cg = "/kiln/c1"
	tests := []struct {
		name  string
		files map[string]string
		want  pool.Stats
	}{
		{
			name: "v1",
			files: map[string]string{
				"memory/kiln/c1/memory.usage_in_bytes":     "1000\n",
				"memory/kiln/c1/memory.max_usage_in_bytes": "5000\n",
				"cpuacct/kiln/c1/cpuacct.usage_user":       "3000000\n",
				"cpuacct/kiln/c1/cpuacct.usage_sys":        "7000000\n",
				"cpuacct/kiln/c1/cpuacct.stat":             "user 99\nsystem 99\n",
			},
			want: pool.Stats{CPUUser: 3 * time.Millisecond, CPUSystem: 7 * time.Millisecond, MemoryBytes: 1000, MemoryPeakBytes: 5000},
		},
		{
			name: "v1 cpuacct.stat fallback",
			files: map[string]string{
				"memory/kiln/c1/memory.usage_in_bytes":     "1000\n",
				"memory/kiln/c1/memory.max_usage_in_bytes": "5000\n",
				"cpuacct/kiln/c1/cpuacct.stat":             "user 12\nsystem 3\n",
			},
			want: pool.Stats{CPUUser: 120 * time.Millisecond, CPUSystem: 30 * time.Millisecond, MemoryBytes: 1000, MemoryPeakBytes: 5000},
		},
		{
			name: "v2 hybrid (unified) without memory.peak",
			files: map[string]string{
				"memory/memory.limit_in_bytes":   "9\n", // v1 root but no container cgroup there
				"unified/kiln/c1/memory.current": "4096\n",
				"unified/kiln/c1/cpu.stat":       "usage_usec 30\nuser_usec 10\nsystem_usec 20\nnr_periods 0\n",
			},
			want: pool.Stats{CPUUser: 10 * time.Microsecond, CPUSystem: 20 * time.Microsecond, MemoryBytes: 4096, MemoryPeakBytes: 4096},
		},
		{
			name: "v2 unified root",
			files: map[string]string{
				"kiln/c1/memory.current": "4096\n",
				"kiln/c1/memory.peak":    "8192\n",
				"kiln/c1/cpu.stat":       "usage_usec 30\nuser_usec 10\nsystem_usec 20\n",
			},
			want: pool.Stats{CPUUser: 10 * time.Microsecond, CPUSystem: 20 * time.Microsecond, MemoryBytes: 4096, MemoryPeakBytes: 8192},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			var s cgroupStats
			if err := s.open(root, cg); err != nil {
				t.Fatal(err)
			}
			defer s.close()
			got, err := s.read()
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("read = %+v, want %+v", got, tt.want)
			}
			// Files are read afresh on every call.
			if err := os.WriteFile(s.mem.Name(), []byte("2000\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := s.read(); err != nil || got.MemoryBytes != 2000 {
				t.Errorf("second read = %+v, %v; want memory 2000", got, err)
			}
			if allocs := testing.AllocsPerRun(100, func() { s.read() }); allocs != 0 {
				t.Errorf("read allocates %v times", allocs)
			}
			s.close()
			if _, err := s.read(); !errors.Is(err, pool.ErrContainerNotFound) {
				t.Errorf("read after close = %v, want ErrContainerNotFound", err)
			}
		})
	}
}

func TestCgroupStatsMissing(t *testing.T) {
	var s cgroupStats
	if err := s.open(t.TempDir(), "/kiln/none"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("open = %v, want ErrNotExist", err)
	}
	if s.opened || s.dead {
		t.Errorf("state after a failed open: %+v", s)
	}
}

func TestParseInt(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"123\n", 123, true},
		{"  42 \n", 42, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
		{"max\n", 0, false},
		{"-1", 0, false},
		{"", 0, false},
		{"\n", 0, false},
		{"1 2", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseInt([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestField(t *testing.T) {
	b := []byte("usage_usec 30\nuser_usec 10\nsystem_usec 20")
	for key, want := range map[string]int64{"usage_usec": 30, "user_usec": 10, "system_usec": 20} {
		if got, ok := field(b, key); !ok || got != want {
			t.Errorf("field(%s) = %d, %v", key, got, ok)
		}
	}
	for _, key := range []string{"user", "usec", "nr_periods", ""} {
		if _, ok := field(b, key); ok {
			t.Errorf("field(%q) found", key)
		}
	}
}

func FuzzParseInt(f *testing.F) {
	for _, s := range []string{"0", "123\n", "max", "-1", "99999999999999999999", " 7 "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := parseInt(b)
		if !ok {
			return
		}
		if got < 0 {
			t.Fatalf("parseInt(%q) = %d < 0", b, got)
		}
		want, err := strconv.ParseInt(string(trimSpace(b)), 10, 64)
		if err != nil || want != got {
			t.Fatalf("parseInt(%q) = %d; strconv says %d, %v", b, got, want, err)
		}
	})
}

func FuzzField(f *testing.F) {
	f.Add([]byte("user 1\nsystem 2\n"), "system")
	f.Add([]byte("user_usec 10"), "user_usec")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		field(b, key) // must not panic
	})
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}
