package containerd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kilnfx/kiln/pool"
)

// userHZ is the unit of cpuacct.stat: the kernel's USER_HZ, 100 on Linux.
const userHZ = 100

// cgroupStats reads one container's cgroup counters through files opened
// once, so that a reading costs a few pread calls and no allocation.
//
// cgroup v1 (memory controller mounted at <root>/memory) is preferred, as on
// hybrid hosts the v2 hierarchy at <root>/unified carries no controllers.
// Otherwise cgroup v2 is looked for under <root>/unified, then <root>.
type cgroupStats struct {
	opened bool
	dead   bool // closed by Remove or Close
	v2     bool

	// v1: cpuacct.usage_user and cpuacct.usage_sys (nanoseconds, but split
	// at tick granularity), with cpuTotal = cpuacct.usage (exact
	// nanoseconds), or, when the kernel lacks them, cpuStat = cpuacct.stat
	// (USER_HZ ticks). v2: cpuStat = cpu.stat (microseconds).
	cpuUser, cpuSys, cpuTotal, cpuStat *os.File
	// v1: memory.usage_in_bytes and memory.max_usage_in_bytes.
	// v2: memory.current and memory.peak (nil on kernels before 5.19).
	mem, memPeak *os.File

	buf [512]byte
}

// open finds the container's cgroup files under root (a cgroup mount root
// such as /sys/fs/cgroup) for the cgroup path cg.
func (s *cgroupStats) open(root, cg string) error {
	if s.dead {
		return pool.ErrContainerNotFound
	}
	var err error
	if memDir := filepath.Join(root, "memory", cg); exists(filepath.Join(memDir, "memory.usage_in_bytes")) {
		err = s.openV1(memDir, filepath.Join(root, "cpuacct", cg))
	} else {
		err = fmt.Errorf("no memory cgroup %s under %s: %w", cg, root, os.ErrNotExist)
		for _, base := range []string{filepath.Join(root, "unified"), root} {
			dir := filepath.Join(base, cg)
			if exists(filepath.Join(dir, "memory.current")) {
				err = s.openV2(dir)
				break
			}
		}
	}
	if err != nil {
		s.close()
		s.dead = false
		return err
	}
	s.opened = true
	return nil
}

func (s *cgroupStats) openV1(memDir, cpuDir string) error {
	var err error
	if s.mem, err = os.Open(filepath.Join(memDir, "memory.usage_in_bytes")); err != nil {
		return err
	}
	s.memPeak, _ = os.Open(filepath.Join(memDir, "memory.max_usage_in_bytes"))
	s.cpuUser, err = os.Open(filepath.Join(cpuDir, "cpuacct.usage_user"))
	if err == nil {
		s.cpuSys, err = os.Open(filepath.Join(cpuDir, "cpuacct.usage_sys"))
	}
	if err != nil {
		closeFile(&s.cpuUser)
		if s.cpuStat, err = os.Open(filepath.Join(cpuDir, "cpuacct.stat")); err != nil {
			return err
		}
		return nil
	}
	s.cpuTotal, _ = os.Open(filepath.Join(cpuDir, "cpuacct.usage"))
	return nil
}

func (s *cgroupStats) openV2(dir string) error {
	s.v2 = true
	var err error
	if s.mem, err = os.Open(filepath.Join(dir, "memory.current")); err != nil {
		return err
	}
	s.memPeak, _ = os.Open(filepath.Join(dir, "memory.peak"))
	if s.cpuStat, err = os.Open(filepath.Join(dir, "cpu.stat")); err != nil {
		return err
	}
	return nil
}

// close closes the files; later reads report the container gone.
func (s *cgroupStats) close() {
	for _, f := range []**os.File{&s.cpuUser, &s.cpuSys, &s.cpuTotal, &s.cpuStat, &s.mem, &s.memPeak} {
		closeFile(f)
	}
	s.opened = false
	s.dead = true
	s.v2 = false
}

func closeFile(f **os.File) {
	if *f != nil {
		(*f).Close()
		*f = nil
	}
}

// read takes one reading. It does not allocate unless it fails.
func (s *cgroupStats) read() (pool.Stats, error) {
	var st pool.Stats
	if s.dead || !s.opened {
		return st, pool.ErrContainerNotFound
	}
	var err error
	if st.MemoryBytes, err = s.readInt(s.mem); err != nil {
		return st, err
	}
	st.MemoryPeakBytes = st.MemoryBytes
	if s.memPeak != nil {
		if st.MemoryPeakBytes, err = s.readInt(s.memPeak); err != nil {
			return st, err
		}
		st.MemoryPeakBytes = max(st.MemoryPeakBytes, st.MemoryBytes)
	}
	switch {
	case s.v2:
		b, err := s.readFile(s.cpuStat)
		if err != nil {
			return st, err
		}
		user, ok1 := field(b, "user_usec")
		sys, ok2 := field(b, "system_usec")
		if !ok1 || !ok2 {
			return st, errors.New("cpu.stat: no user_usec/system_usec")
		}
		st.CPUUser, st.CPUSystem = time.Duration(user)*time.Microsecond, time.Duration(sys)*time.Microsecond
	case s.cpuUser != nil:
		user, err := s.readInt(s.cpuUser)
		if err != nil {
			return st, err
		}
		sys, err := s.readInt(s.cpuSys)
		if err != nil {
			return st, err
		}
		if s.cpuTotal != nil {
			// The kernel splits user from system time per tick, so a
			// container that ran less than a tick can read 0 for both;
			// cpuacct.usage is exact. Scale the split to it.
			if total, err := s.readInt(s.cpuTotal); err == nil && total > user+sys {
				if user+sys == 0 {
					user = total
				} else {
					u := int64(float64(total) * (float64(user) / float64(user+sys)))
					user, sys = u, total-u
				}
			}
		}
		st.CPUUser, st.CPUSystem = time.Duration(user), time.Duration(sys)
	default:
		b, err := s.readFile(s.cpuStat)
		if err != nil {
			return st, err
		}
		user, ok1 := field(b, "user")
		sys, ok2 := field(b, "system")
		if !ok1 || !ok2 {
			return st, errors.New("cpuacct.stat: no user/system")
		}
		st.CPUUser, st.CPUSystem = time.Duration(user)*(time.Second/userHZ), time.Duration(sys)*(time.Second/userHZ)
	}
	return st, nil
}

// readFile reads f from offset 0 into s.buf.
func (s *cgroupStats) readFile(f *os.File) ([]byte, error) {
	n, err := f.ReadAt(s.buf[:], 0)
	if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return s.buf[:n], nil
}

func (s *cgroupStats) readInt(f *os.File) (int64, error) {
	b, err := s.readFile(f)
	if err != nil {
		return 0, err
	}
	v, ok := parseInt(b)
	if !ok {
		return 0, fmt.Errorf("read %s: not a number: %q", f.Name(), b)
	}
	return v, nil
}

// parseInt parses a non-negative decimal integer surrounded by optional
// white space, as cgroup files hold it. It reports false for anything else,
// including "max" and values that overflow int64.
func parseInt(b []byte) (int64, bool) {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	if len(b) == 0 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if v > (1<<63-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }

// field finds the line "key value" in a flat-keyed cgroup file and parses
// value.
func field(b []byte, key string) (int64, bool) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) > len(key) && string(line[:len(key)]) == key && line[len(key)] == ' ' {
			return parseInt(line[len(key)+1:])
		}
	}
	return 0, false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
