package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuList is a set of CPUs in the kernel's list format: "1", "0-3,6".
type cpuList []int

// parseCPUList reads a CPU list and checks that every CPU in it is one
// kilnd may run on (its affinity mask at start, which a cpuset around
// kilnd narrows). The empty list means no placement.
func parseCPUList(s string, allowed unix.CPUSet) (cpuList, error) {
	if s == "" {
		return nil, nil
	}
	var cpus cpuList
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil || first < 0 {
			return nil, fmt.Errorf("%q is not a CPU number or range", part)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil || last < first {
				return nil, fmt.Errorf("%q is not a CPU range (low-high)", part)
			}
		}
		for c := first; c <= last; c++ {
			if c >= 1024 || !allowed.IsSet(c) {
				return nil, fmt.Errorf("CPU %d is not one kilnd may run on (%s)", c, cpuListOf(allowed))
			}
			if !slices.Contains(cpus, c) {
				cpus = append(cpus, c)
			}
		}
	}
	slices.Sort(cpus)
	return cpus, nil
}

// String formats l in the kernel's list format, ranges joined.
func (l cpuList) String() string {
	var b strings.Builder
	for i := 0; i < len(l); {
		j := i
		for j+1 < len(l) && l[j+1] == l[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(l[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(l[j]))
		}
		i = j + 1
	}
	return b.String()
}

func (l cpuList) set() unix.CPUSet {
	var s unix.CPUSet
	for _, c := range l {
		s.Set(c)
	}
	return s
}

// cpuListOf lists the CPUs of s.
func cpuListOf(s unix.CPUSet) cpuList {
	var l cpuList
	for c := 0; c < 1024; c++ {
		if s.IsSet(c) {
			l = append(l, c)
		}
	}
	return l
}

// pinProcess confines every thread of this process to cpus. Threads made
// later inherit the mask of the thread that makes them, so once every
// thread has it, every future thread (and child process) has it too; the
// threads are listed again until a pass finds none left to pin.
func pinProcess(cpus cpuList) error {
	set := cpus.set()
	for pass := 0; pass < 10; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			var cur unix.CPUSet
			if unix.SchedGetaffinity(tid, &cur) == nil && cur == set {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pin thread %d to CPUs %s: %w", tid, cpus, err)
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("threads kept appearing unpinned after 10 passes")
}
