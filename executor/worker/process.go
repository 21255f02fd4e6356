package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/executor/sdk"
)

// Errors of a worker process, to be matched with errors.Is.
var (
	// ErrExited: the worker process ended or closed its pipes.
	ErrExited = errors.New("worker exited")
	// ErrLoad: the worker could not load the handler (load_error).
	ErrLoad = errors.New("handler did not load")
	// ErrClosed: Close was called.
	ErrClosed = errors.New("worker closed")
)

// smallBody is the largest body written in the same write as its frame's
// header; a larger one is written on its own rather than copied.
const smallBody = 32 << 10

// exitGrace is how long a worker that closed its frame pipe has to exit
// before it is killed, so that its exit status can be reported.
const exitGrace = time.Second

// Options is how Start runs the worker process.
type Options struct {
	// Stdout and Stderr receive the worker's output (the function's logs).
	// An *os.File is handed to the worker as is; another writer is fed
	// through a pipe. nil discards.
	Stdout, Stderr io.Writer
	// Env is the worker's environment; nil means the executor's.
	Env []string
	// Dir is the worker's working directory; empty means the executor's.
	Dir string
}

// Process is a running worker: one interpreter serving one function's
// calls over the frame protocol. Its methods are safe for concurrent use.
type Process struct {
	cmd     *exec.Cmd
	version string // from its ready frame

	control chan *workerHeader // ready, loaded and load_error frames, in order

	wmu  sync.Mutex // guards to and wbuf: one frame written at a time
	to   *os.File   // the executor's end of the worker's fd 3
	wbuf []byte

	mu    sync.Mutex // guards calls and err
	calls map[string]chan callResult
	err   error // why the worker is unusable; set once, when dead is closed

	dead   chan struct{} // closed when err is set
	exited chan struct{} // closed when the process was waited for; state is then set
	state  *os.ProcessState
}

// callResult is a result frame handed from the reader to its call.
type callResult struct {
	h    *workerHeader
	body []byte
}

// resultChans recycles the channels calls wait on. A channel is put back
// only when it is known empty and no longer in calls.
var resultChans = sync.Pool{New: func() any { return make(chan callResult, 1) }}

// Start starts the worker argv and returns once it sent its ready frame.
// When ctx ends first, or the worker exits first, the worker is killed and
// Start returns the reason.
func Start(ctx context.Context, argv []string, opts Options) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("no worker command")
	}
	toR, toW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	fromR, fromW, err := os.Pipe()
	if err != nil {
		toR.Close()
		toW.Close()
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{toR, fromW} // fd 3 and fd 4
	cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stderr
	cmd.Env, cmd.Dir = opts.Env, opts.Dir
	cmd.WaitDelay = time.Second // output pipes a grandchild holds open
	// The worker dies with the executor. (The signal is sent when the
	// thread that started it exits; Go's threads outlive such goroutines
	// in practice, and in a container the executor's end ends them all.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	toR.Close()
	fromW.Close()
	if err != nil {
		toW.Close()
		fromR.Close()
		return nil, fmt.Errorf("start worker: %w", err)
	}
	p := &Process{
		cmd:     cmd,
		control: make(chan *workerHeader, 4),
		to:      toW,
		calls:   make(map[string]chan callResult),
		dead:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	go p.wait()
	go p.read(fromR)
	select {
	case h := <-p.control:
		if h.T != kindReady {
			p.fail(fmt.Errorf("%w: %q frame before ready", ErrProtocol, h.T))
			return nil, p.Err()
		}
		p.version = h.Version
		return p, nil
	case <-p.dead:
		return nil, fmt.Errorf("worker did not get ready: %w", p.Err())
	case <-ctx.Done():
		p.Close()
		return nil, ctx.Err()
	}
}

// Pid is the worker's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Version is the language version the worker reported, or "".
func (p *Process) Version() string { return p.version }

// Done is closed when the worker can take no more calls: it exited, broke
// the protocol or was closed. Err then says why.
func (p *Process) Done() <-chan struct{} { return p.dead }

// Err is why the worker can take no more calls, or nil while it can.
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// ExitState waits until the worker process has ended, for at most wait,
// and returns its state, or nil when it has not ended.
func (p *Process) ExitState(wait time.Duration) *os.ProcessState {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.exited:
		return p.state
	case <-t.C:
		return nil
	}
}

// Close kills the worker and waits for it to end. Calls in flight fail
// with ErrClosed.
func (p *Process) Close() error {
	p.fail(ErrClosed)
	<-p.exited
	return nil
}

// Load asks the worker to load handler (a file relative to dir) with env
// added to its environment, and waits for its answer. A load_error is
// returned wrapping ErrLoad with the worker's message. Load is called
// once, before any Call.
func (p *Process) Load(ctx context.Context, dir, handler string, env map[string]string) error {
	header, err := json.Marshal(struct {
		T       string            `json:"t"`
		Dir     string            `json:"dir"`
		Handler string            `json:"handler"`
		Env     map[string]string `json:"env"`
	}{kindLoad, dir, handler, env})
	if err != nil {
		return err
	}
	p.wmu.Lock()
	b := endHeader(append(beginFrame(p.wbuf[:0]), header...), 0, 0)
	_, err = p.to.Write(b)
	p.wmu.Unlock()
	if err != nil {
		p.pipeBroken()
		return p.Err()
	}
	select {
	case h := <-p.control:
		switch h.T {
		case kindLoaded:
			return nil
		case kindLoadError:
			return fmt.Errorf("%w: %s", ErrLoad, h.Error)
		}
		p.fail(fmt.Errorf("%w: %q frame in answer to load", ErrProtocol, h.T))
		return p.Err()
	case <-p.dead:
		return p.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Call runs req on the worker; it is an sdk.Handler. When ctx ends first
// the worker is sent a cancel and Call returns ctx.Err(). When the worker
// dies first Call returns an error wrapping ErrExited (or ErrProtocol, or
// ErrClosed). The result's error, when the worker sets one, is returned
// with the response. The result's usage members, when it has any, are the
// response's Usage.
func (p *Process) Call(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	ch := resultChans.Get().(chan callResult)
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		resultChans.Put(ch)
		return nil, p.err
	}
	if _, dup := p.calls[req.ID]; dup {
		p.mu.Unlock()
		resultChans.Put(ch)
		return nil, fmt.Errorf("call %q is already in flight", req.ID)
	}
	p.calls[req.ID] = ch
	p.mu.Unlock()

	if err := p.writeCall(ctx, req); err != nil {
		if p.forget(req.ID) {
			resultChans.Put(ch)
		}
		return nil, err
	}
	select {
	case r := <-ch:
		resultChans.Put(ch)
		return r.response()
	case <-ctx.Done():
		if !p.forget(req.ID) {
			// The reader took the result already: it is on its way.
			r := <-ch
			resultChans.Put(ch)
			return r.response()
		}
		resultChans.Put(ch)
		p.writeCancel(req.ID)
		return nil, ctx.Err()
	case <-p.dead:
		return nil, p.Err()
	}
}

// responseWithUsage is an answer with its usage figures, allocated at once.
type responseWithUsage struct {
	sdk.Response
	usage sdk.Usage
}

// response turns a result frame into the SDK's answer, with the worker's
// usage figures when the frame has any.
func (r callResult) response() (*sdk.Response, error) {
	var resp *sdk.Response
	if r.h.CPUUserUs != 0 || r.h.CPUSysUs != 0 || r.h.MaxRSSKB != 0 {
		ru := &responseWithUsage{usage: sdk.Usage{
			CPUUser:     time.Duration(max(r.h.CPUUserUs, 0)) * time.Microsecond,
			CPUSystem:   time.Duration(max(r.h.CPUSysUs, 0)) * time.Microsecond,
			MaxRSSBytes: max(r.h.MaxRSSKB, 0) << 10,
		}}
		ru.Response.Usage = &ru.usage
		resp = &ru.Response
	} else {
		resp = new(sdk.Response)
	}
	if r.h.bodyOverLimit > 0 {
		return resp, fmt.Errorf("%w: the worker answered %d bytes, over the %d byte limit", sdk.ErrResponseTooLarge, r.h.bodyOverLimit, MaxBody)
	}
	resp.Status, resp.Body = r.h.Status, r.body
	if len(r.h.Headers) > 0 {
		resp.Header = make(http.Header, len(r.h.Headers))
		for _, kv := range r.h.Headers {
			resp.Header[kv[0]] = append(resp.Header[kv[0]], kv[1])
		}
	}
	if r.h.Error != "" {
		return resp, errors.New(r.h.Error)
	}
	return resp, nil
}

// forget removes call id from the calls in flight and reports whether it
// was there (no result for it was taken by the reader).
func (p *Process) forget(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.calls[id]; !ok {
		return false
	}
	delete(p.calls, id)
	return true
}

// writeCall writes req's call frame.
func (p *Process) writeCall(ctx context.Context, req *sdk.Request) error {
	if len(req.Body) > MaxBody {
		return fmt.Errorf("request body of %d bytes is over the worker's limit of %d", len(req.Body), MaxBody)
	}
	var deadlineMs int64
	if d, ok := ctx.Deadline(); ok {
		left := time.Until(d)
		if left <= 0 {
			return context.DeadlineExceeded
		}
		deadlineMs = int64((left + time.Millisecond - 1) / time.Millisecond)
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	b := beginFrame(p.wbuf[:0])
	b = append(b, `{"t":"call"`...)
	b = appendMember(b, "id", req.ID)
	b = appendMember(b, "method", req.Method)
	b = appendMember(b, "path", req.Path)
	b = appendMember(b, "query", req.Query)
	b = append(b, `,"headers":[`...)
	first := true
	for k, vs := range req.Header {
		for _, v := range vs {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '[')
			b = appendJSONString(b, k)
			b = append(b, ',')
			b = appendJSONString(b, v)
			b = append(b, ']')
		}
	}
	b = append(b, ']')
	b = appendIntMember(b, "deadline_ms", deadlineMs)
	b = append(b, '}')
	if len(b)-8 > MaxHeader {
		return fmt.Errorf("request headers of %d bytes are over the worker's limit of %d", len(b)-8, MaxHeader)
	}
	b = endHeader(b, 0, len(req.Body))
	small := len(req.Body) <= smallBody
	if small {
		b = append(b, req.Body...)
	}
	_, err := p.to.Write(b)
	if err == nil && !small {
		_, err = p.to.Write(req.Body)
	}
	if cap(b) <= 1<<20 {
		p.wbuf = b
	}
	if err != nil {
		go p.pipeBroken()
		return fmt.Errorf("%w: %v", ErrExited, err)
	}
	return nil
}

// writeCancel writes a cancel frame for call id; the worker's death is
// noticed elsewhere, so an error is ignored.
func (p *Process) writeCancel(id string) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	b := beginFrame(p.wbuf[:0])
	b = append(b, `{"t":"cancel"`...)
	b = appendMember(b, "id", id)
	b = append(b, '}')
	b = endHeader(b, 0, 0)
	_, _ = p.to.Write(b)
	p.wbuf = b
}

// read is the one reader of the worker's frames: it hands results to
// their calls and the other frames to control, until the pipe ends or a
// frame breaks the protocol.
func (p *Process) read(from *os.File) {
	defer from.Close()
	fr := newFrameReader(from)
	ready := false
	for {
		h, body, err := fr.next()
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				p.fail(err)
			} else {
				p.pipeBroken()
			}
			return
		}
		switch h.T {
		case kindResult:
			p.mu.Lock()
			ch, ok := p.calls[h.ID]
			delete(p.calls, h.ID)
			p.mu.Unlock()
			if ok {
				ch <- callResult{h, body}
			}
			continue
		case kindReady:
			if ready {
				p.fail(fmt.Errorf("%w: a second ready frame", ErrProtocol))
				return
			}
			ready = true
		case kindLoaded, kindLoadError:
		default:
			p.fail(fmt.Errorf("%w: unknown frame kind %q", ErrProtocol, h.T))
			return
		}
		if !ready {
			p.fail(fmt.Errorf("%w: %q frame before ready", ErrProtocol, h.T))
			return
		}
		select {
		case p.control <- h:
		default:
			p.fail(fmt.Errorf("%w: %q frame out of turn", ErrProtocol, h.T))
			return
		}
	}
}

// pipeBroken is called when a pipe to the worker ended: the worker is
// given exitGrace to exit, so that its status is the reason given, and
// is then killed.
func (p *Process) pipeBroken() {
	select {
	case <-p.exited: // wait failed the worker with its status
	case <-time.After(exitGrace):
		p.fail(fmt.Errorf("%w: it closed its frame pipes", ErrExited))
	}
}

// wait reaps the worker and fails it with its exit status.
func (p *Process) wait() {
	_ = p.cmd.Wait()
	p.state = p.cmd.ProcessState
	close(p.exited)
	p.fail(fmt.Errorf("%w: %v", ErrExited, p.state))
}

// fail makes err the reason the worker is unusable, unless it has one,
// fails the calls in flight and kills the worker.
func (p *Process) fail(err error) {
	p.mu.Lock()
	first := p.err == nil
	if first {
		p.err = err
		close(p.dead)
	}
	p.mu.Unlock()
	if first {
		_ = p.cmd.Process.Kill()
		p.wmu.Lock()
		p.to.Close()
		p.wmu.Unlock()
	}
}
