package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/kilnfx/kiln/agent"
)

// parseBudget reads a memory budget: a percentage of the machine's RAM
// ("75%"), or a size in bytes with an optional K, M, G (powers of 1000) or
// Ki, Mi, Gi (powers of 1024) suffix. "0" means unlimited.
func parseBudget(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(pct, 64)
		if err != nil || v <= 0 || v > 100 {
			return 0, errors.New("a percentage must be in (0, 100]")
		}
		var si syscall.Sysinfo_t
		if err := syscall.Sysinfo(&si); err != nil {
			return 0, fmt.Errorf("read RAM size: %w", err)
		}
		return int64(float64(si.Totalram) * float64(si.Unit) * v / 100), nil
	}
	units := []struct {
		suffix string
		mul    int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	mul := int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mul = v, u.mul
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a size such as 512Mi, 16G or 75%")
	}
	if n > 0 && mul > (1<<62)/n {
		return 0, errors.New("too large")
	}
	return n * mul, nil
}

// parseStemCells reads RUNTIME=N[,RUNTIME=N...].
func parseStemCells(s string) (map[string]int, error) {
	out := make(map[string]int)
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		rt, n, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%q: want RUNTIME=N", part)
		}
		if !slices.Contains(agent.RuntimeNames(), rt) {
			return nil, fmt.Errorf("unknown runtime %q (one of: %s)", rt, strings.Join(agent.RuntimeNames(), ", "))
		}
		count, err := strconv.Atoi(n)
		if err != nil || count < 0 || count > 64 {
			return nil, fmt.Errorf("%q: the count must be 0..64", part)
		}
		if _, dup := out[rt]; dup {
			return nil, fmt.Errorf("runtime %q given twice", rt)
		}
		out[rt] = count
	}
	return out, nil
}

// connBudget returns how many connections each of kilnd's two API
// listeners may keep open: want, but at most a quarter of the descriptor
// limit nofile (and at least 1), so that the listeners together never take
// more than half of it and the rest stays for containerd, SQLite, the usage
// journal and the containers' sockets.
func connBudget(want int, nofile uint64) int {
	return int(max(1, min(uint64(want), nofile/4)))
}
