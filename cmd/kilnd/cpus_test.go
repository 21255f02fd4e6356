package main

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseCPUList(t *testing.T) {
	var allowed unix.CPUSet
	for _, c := range []int{0, 1, 2, 3, 8} {
		allowed.Set(c)
	}
	for _, tt := range []struct {
		in, want string
		bad      bool
	}{
		{in: "", want: ""},
		{in: "1", want: "1"},
		{in: "3,0-2", want: "0-3"},
		{in: "0,0,2,8", want: "0,2,8"},
		{in: "1-1", want: "1"},
		{in: "4", bad: true},   // not allowed
		{in: "2-4", bad: true}, // 4 not allowed
		{in: "1-0", bad: true},
		{in: "-1", bad: true},
		{in: "a", bad: true},
		{in: "1,", bad: true},
		{in: "0-", bad: true},
		{in: "99999999999999999999", bad: true},
	} {
		got, err := parseCPUList(tt.in, allowed)
		if tt.bad {
			if err == nil {
				t.Errorf("parseCPUList(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("parseCPUList(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestPinProcess pins the test process to the CPU it may use first and
// checks that every thread, and one started after, has that mask.
func TestPinProcess(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	defer pinProcess(cpuListOf(all)) // give the test process its CPUs back
	first := cpuListOf(all)[:1]
	if err := pinProcess(first); err != nil {
		t.Fatal(err)
	}
	done := make(chan unix.CPUSet)
	go func() { // likely on a new thread: the mask is inherited
		var s unix.CPUSet
		_ = unix.SchedGetaffinity(0, &s)
		done <- s
	}()
	if got := <-done; cpuListOf(got).String() != first.String() {
		t.Errorf("a goroutine's thread runs on %s, want %s", cpuListOf(got), first)
	}
}
