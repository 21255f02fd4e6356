package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcFloor is an out-of-process floor (see bench/floor): its edge process,
// fasthttp (and, for grpc-hop, kiln's Invoker service), and for the hops
// the function's process the edge relays every call to over a unix socket.
// The harness starts both with the GOMAXPROCS of the part of kiln each
// stands for: the edge kilnd's, the function's process a function's.
type ProcFloor struct {
	// Kind is echo, hop or grpc-hop.
	Kind string
	// Addr is the edge's HTTP host:port; GRPCAddr its gRPC one (grpc-hop).
	Addr, GRPCAddr string
	// EdgeProcs and FnProcs are the GOMAXPROCS the processes reported
	// (FnProcs 0 without a function's process).
	EdgeProcs, FnProcs int
	edge, fn           *floorProc
	dir                string
}

// StartProcFloor starts the floor kind (echo, hop, grpc-hop) from the
// kiln-floor binary bin, the edge with GOMAXPROCS edgeProcs and the
// function's process with fnProcs, and waits until the edge serves.
func StartProcFloor(ctx context.Context, bin, kind string, edgeProcs, fnProcs int) (*ProcFloor, error) {
	f := &ProcFloor{Kind: kind}
	var sinkProto string
	switch kind {
	case "echo":
	case "hop":
		sinkProto = "frames"
	case "grpc-hop":
		sinkProto = "grpc"
	default:
		return nil, fmt.Errorf("floor %q: want echo, hop or grpc-hop", kind)
	}
	args := []string{kind, "-http", "127.0.0.1:0"}
	if sinkProto != "" {
		dir, err := os.MkdirTemp("/tmp", "kfl")
		if err != nil {
			return nil, err
		}
		f.dir = dir
		args = append(args, "-unix", filepath.Join(dir, "hop.sock"))
	}
	var err error
	if f.edge, err = startFloorProc(bin, edgeProcs, args...); err != nil {
		f.Close()
		return nil, err
	}
	if sinkProto != "" {
		if _, err := f.edge.await(ctx, "listening"); err != nil {
			f.Close()
			return nil, err
		}
		if f.fn, err = startFloorProc(bin, fnProcs, "sink", "-proto", sinkProto, "-unix", filepath.Join(f.dir, "hop.sock")); err != nil {
			f.Close()
			return nil, err
		}
		f.FnProcs = fnProcs
	}
	ready, err := f.edge.await(ctx, "ready")
	if err != nil {
		f.Close()
		return nil, err
	}
	f.Addr, f.GRPCAddr = ready["http"], ready["grpc"]
	f.EdgeProcs, _ = strconv.Atoi(ready["gomaxprocs"])
	return f, nil
}

// Procs says how the floor's processes run, for the report.
func (f *ProcFloor) Procs() string {
	if f.fn == nil {
		return fmt.Sprintf("one process, GOMAXPROCS=%d", f.EdgeProcs)
	}
	return fmt.Sprintf("edge GOMAXPROCS=%d, function's process GOMAXPROCS=%d", f.EdgeProcs, f.FnProcs)
}

// Close stops the floor's processes (the function's first) and removes its
// socket directory.
func (f *ProcFloor) Close() {
	if f.fn != nil {
		f.fn.stop()
	}
	if f.edge != nil {
		f.edge.stop()
	}
	if f.dir != "" {
		os.RemoveAll(f.dir)
	}
}

// floorProc is one kiln-floor process.
type floorProc struct {
	cmd    *exec.Cmd
	lines  chan string   // its stdout, line by line; closed at its end
	exited chan struct{} // closed when it exited

	mu     sync.Mutex   // guards stderr
	stderr bytes.Buffer // the start of what it printed on stderr
}

func startFloorProc(bin string, gomaxprocs int, args ...string) (*floorProc, error) {
	p := &floorProc{cmd: exec.Command(bin, args...), lines: make(chan string, 4), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(gomaxprocs))
	// Killed with the harness, should it die without stopping it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = limitedWriter{p}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kiln-floor %s: %w", args[0], err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// await waits for the process's line starting with word and returns its
// key=value fields.
func (p *floorProc) await(ctx context.Context, word string) (map[string]string, error) {
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.exited
				return nil, fmt.Errorf("kiln-floor %s exited before %q (%v): %s", p.cmd.Args[1], word, p.cmd.ProcessState, p.errors())
			}
			fields := strings.Fields(l)
			if len(fields) == 0 || fields[0] != word {
				continue
			}
			kv := map[string]string{}
			for _, f := range fields[1:] {
				if k, v, ok := strings.Cut(f, "="); ok {
					kv[k] = v
				}
			}
			return kv, nil
		case <-timeout:
			return nil, fmt.Errorf("kiln-floor %s: no %q after 30s: %s", p.cmd.Args[1], word, p.errors())
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *floorProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	go func() {
		for range p.lines { // drain, so that the reader reaches Wait
		}
	}()
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *floorProc) errors() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.TrimSpace(p.stderr.String())
}

// limitedWriter keeps the first 4 KiB written to a process's stderr.
type limitedWriter struct{ p *floorProc }

func (w limitedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if room := 4096 - w.p.stderr.Len(); room > 0 {
		w.p.stderr.Write(b[:min(room, len(b))])
	}
	return len(b), nil
}
