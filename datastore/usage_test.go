package datastore

import (
	"math"
	"testing"
	"time"
)

func TestGBSeconds(t *testing.T) {
	const gib = 1 << 30
	cases := []struct {
		name  string
		limit int64
		run   time.Duration
		want  float64
	}{
		{"1 GiB for 1 s", gib, time.Second, 1},
		{"128 MiB for 1 s", 128 << 20, time.Second, 0.125},
		{"rounds up to the next ms", gib, time.Millisecond + time.Nanosecond, 0.002},
		{"1 ns is 1 ms", gib, time.Nanosecond, 0.001},
		{"whole ms not rounded", gib, 3 * time.Millisecond, 0.003},
		{"no run time", gib, 0, 0},
		{"negative run time", gib, -time.Second, 0},
		{"no limit", 0, time.Second, 0},
		{"2 GiB for 1.5 s", 2 * gib, 1500 * time.Millisecond, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := UsageRecord{MemoryLimitBytes: c.limit, RunTime: c.run}
			if got := r.GBSeconds(); math.Abs(got-c.want) > 1e-12 {
				t.Errorf("GBSeconds = %v, want %v", got, c.want)
			}
		})
	}
}

func TestCPUSeconds(t *testing.T) {
	r := UsageRecord{CPUUser: 1500 * time.Millisecond, CPUSystem: 250 * time.Millisecond}
	if got := r.CPUSeconds(); got != 1.75 {
		t.Errorf("CPUSeconds = %v, want 1.75", got)
	}
}

func TestJournalPositionString(t *testing.T) {
	if got := (JournalPosition{Segment: 3, Offset: 4096}).String(); got != "3:4096" {
		t.Errorf("String = %q", got)
	}
}
