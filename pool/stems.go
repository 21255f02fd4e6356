package pool

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// refillStemsLocked starts stem cells of runtime in the background until
// there are Count of them, within the free memory budget.
func (p *Pool) refillStemsLocked(runtime string) {
	spec, ok := p.stemSpecs[runtime]
	if !ok {
		return
	}
	for len(p.stems[runtime])+p.stemStarting[runtime] < spec.Count {
		if !p.reserveLocked(spec.MemoryBytes, false, nil) {
			return
		}
		p.stemStarting[runtime]++
		p.goWorkLocked(func() { p.startStem(spec) })
	}
}

// startStem starts one stem cell and parks it frozen.
func (p *Pool) startStem(spec StemSpec) {
	c, err := p.start(p.bg, "stem."+spec.Runtime, spec.Runtime, ContainerSpec{
		RootFS:      spec.RootFS,
		Mounts:      spec.Mounts,
		Args:        spec.Args,
		Env:         spec.Env,
		MemoryBytes: spec.MemoryBytes,
	})
	var used int64
	if err == nil {
		used, err = p.freezeNew(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stemStarting[spec.Runtime]--
	if err == nil && c.hasExited() {
		err = fmt.Errorf("%w: stem cell %s exited as it started", ErrExecutorFailed, c.id)
	}
	if err != nil {
		if c != nil {
			p.failLocked(c, err.Error())
		} else {
			p.counters.failures.Add(1)
		}
		p.memoryUsed -= spec.MemoryBytes
		p.log.Warn("stem cell start failed", "runtime", spec.Runtime, "err", err)
		if !p.closed {
			// Try again later, as for min_warm.
			p.clock.AfterFunc(prewarmRetry, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				if !p.closed {
					p.refillStemsLocked(spec.Runtime)
				}
			})
		}
		return
	}
	c.memory, c.limit = spec.MemoryBytes, spec.MemoryBytes
	c.lastUsed = p.clock.Now()
	p.setStateLocked(c, StateFrozen)
	if p.closed {
		p.stopLocked(c, "pool closed")
		return
	}
	p.stems[spec.Runtime] = append(p.stems[spec.Runtime], c)
	p.lowerChargeLocked(c, used)
	p.log.Debug("stem cell ready", "runtime", spec.Runtime, "container", c.id)
}

// takeStemLocked takes a frozen stem cell able to become fn's container,
// or returns nil. It moves the stem cell's charge in the memory budget to
// fn's limit, evicting other frozen containers if need be, before the stem
// cell may thaw; it returns nil when the budget cannot hold it.
func (p *Pool) takeStemLocked(fn *Function) *Container {
	stems := p.stems[fn.Runtime]
	if fn.Code == "" || len(stems) == 0 {
		return nil
	}
	c := stems[len(stems)-1]
	if delta := fn.MemoryBytes - c.memory; delta > 0 {
		if !p.reserveLocked(delta, true, c) {
			p.counters.refusedThaws.Add(1)
			return nil
		}
	} else {
		p.memoryUsed += delta // give back what fn's lower limit frees
	}
	c.memory, c.limit = fn.MemoryBytes, fn.MemoryBytes
	// Evictions may have taken other stem cells out of the list.
	stems = p.stems[fn.Runtime]
	stems = slices.DeleteFunc(stems, func(x *Container) bool { return x == c })
	p.stems[fn.Runtime] = stems
	p.setStateLocked(c, StateSpecializing)
	c.active = 0
	p.refillStemsLocked(fn.Runtime)
	return c
}

// specialize turns a stem cell into fn's container for the waiting calls
// of s: thaw, code in, the function's limits, Init, and the function's own
// Ready.
func (p *Pool) specialize(s *set, fn *Function, c *Container) {
	err := p.load(p.bg, fn, c)
	if err == nil {
		p.markUsage(c) // the function's calls are not billed the stem's start
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.starting--
	if err == nil && c.hasExited() {
		err = fmt.Errorf("%w: container %s exited as it was specialised", ErrExecutorFailed, c.id)
	}
	if err != nil {
		p.log.Warn("stem cell specialisation failed", "function", fn.Name, "container", c.id, "err", err)
		p.failLocked(c, "specialisation failed")
		p.failWaitersLocked(s, err)
		return
	}
	p.counters.specializations.Add(1)
	p.adoptLocked(s, fn, c, StartStem, false)
}

// load is specialize's work on the Specializing c, without Pool.mu: thaw,
// the code hard-linked (or copied) into the container's directory, the
// function's limits, Init on the stem cell's session, and the function's
// own Ready on a new one.
func (p *Pool) load(ctx context.Context, fn *Function, c *Container) error {
	t0 := time.Now()
	c.freezeMu.Lock()
	err := p.driver.Thaw(ctx, c.id)
	c.freezeMu.Unlock()
	if err != nil {
		return fmt.Errorf("%w: thaw stem cell: %v", ErrExecutorFailed, err)
	}
	codePath, handler, err := loadCode(fn, c.dir)
	if err != nil {
		return fmt.Errorf("load code: %w", err)
	}
	tCode := time.Now()
	if err := p.driver.Update(ctx, c.id, fn.MemoryBytes, fn.CPUMillis); err != nil {
		return fmt.Errorf("%w: set limits: %v", ErrExecutorFailed, err)
	}
	env := make(map[string]string, len(fn.Env)+1)
	for _, kv := range fn.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	env["KILN_FUNCTION"] = fn.Name
	env[pb.EnvMaxResponse] = strconv.Itoa(p.maxResponse)
	p.mu.Lock()
	c.logRing.Store(p.logRingLocked(fn.Name))
	p.mu.Unlock()
	old := c.sess.Load()
	if old == nil {
		return fmt.Errorf("%w: stem cell has no session", ErrExecutorFailed)
	}
	select { // a stale session from a timed-out wait
	case <-c.readyC:
	default:
	}
	c.expectReady.Store(true)
	err = old.send(&pb.AgentMsg{Msg: &pb.AgentMsg_Init{Init: &pb.Init{
		Function: fn.Name,
		Revision: fn.Revision,
		CodePath: codePath,
		Handler:  handler,
		Env:      env,
	}}})
	if err != nil {
		c.expectReady.Store(false)
		return fmt.Errorf("%w: send Init: %v", ErrExecutorFailed, err)
	}
	tInit := time.Now()
	if err := c.waitReady(ctx, p.startTimeout); err != nil {
		return err
	}
	if got := c.sess.Load().ready.Function; got != fn.Name {
		return fmt.Errorf("%w: specialised executor says it serves %q, want %q", ErrExecutorFailed, got, fn.Name)
	}
	p.log.Debug("stem cell specialised", "function", fn.Name, "container", c.id,
		"thaw_and_code", tCode.Sub(t0), "limits", tInit.Sub(tCode), "init_to_ready", time.Since(tInit))
	return nil
}

// loadCode puts fn's code into the container directory dir, hard-linked
// (copied across file systems), and returns the code's path and handler as
// the container sees them: for the go runtime the executable
// ExecutorDir/code/handler, for the others the directory ExecutorDir/code
// and fn.Handler in it.
func loadCode(fn *Function, dir string) (codePath, handler string, err error) {
	codeDir := filepath.Join(dir, "code")
	if fn.Runtime == "go" {
		if err := os.MkdirAll(codeDir, 0o755); err != nil {
			return "", "", err
		}
		dst := filepath.Join(codeDir, "handler")
		if err := os.Link(fn.Code, dst); err != nil {
			if err := copyExecutable(fn.Code, dst); err != nil {
				return "", "", err
			}
		}
		return ExecutorDir + "/code/handler", "handler", nil
	}
	if err := linkTree(fn.Code, codeDir); err != nil {
		return "", "", err
	}
	return ExecutorDir + "/code", fn.Handler, nil
}

// linkTree recreates the tree src at dst (which must not exist):
// directories made anew, regular files hard-linked (copied where a link
// fails), symbolic links copied as links. Anything else is an error.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.Mkdir(to, 0o755)
		case d.Type().IsRegular():
			if os.Link(path, to) == nil {
				return nil
			}
			return copyFile(path, to)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		default:
			return fmt.Errorf("%s: not a regular file, directory or symbolic link", path)
		}
	})
}

// copyFile copies the regular file src to a new file dst with src's mode.
func copyFile(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, fi.Mode().Perm())
}

// copyExecutable copies the file src to a new executable dst.
func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
