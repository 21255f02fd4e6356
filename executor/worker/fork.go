package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/executor/sdk"
)

// stderrTail is how much of a failed program's stderr is its call's error.
const stderrTail = 4 << 10

// ErrResponseTooLarge: a binary function wrote more than MaxBody bytes. It
// is sdk.ErrResponseTooLarge, so that the call is answered
// response_too_large.
var ErrResponseTooLarge = sdk.ErrResponseTooLarge

// Fork runs a program per call, with OpenFaaS classic watchdog semantics:
// the request body is its stdin, its stdout the response body (status
// 200), and a non-zero exit fails the call with status 500 and the last
// 4 KiB of its stderr as the error. All of its stderr also goes to the
// logs. Its environment is the function's plus, for the call:
//
//	Http_Method, Http_Path, Http_Query
//	Http_<Header_Name> for each request header, its name in canonical
//	    form with '-' as '_' (Content-Type: Http_Content_Type); the
//	    values of a repeated header joined with ", "
//
// Its working directory is the code directory, and it runs in a process
// group of its own, killed whole when the call's ctx ends. The program's
// resource usage (its own and that of the children it waited for) is the
// response's Usage.
type Fork struct {
	program string
	dir     string
	env     []string
	logs    io.Writer
}

// NewFork returns the binary runtime serving handler, a program relative
// to the code directory dir, with the function's environment env (KEY=value
// strings) and its stderr copied to logs (nil discards).
func NewFork(dir, handler string, env []string, logs io.Writer) *Fork {
	if logs == nil {
		logs = io.Discard
	}
	return &Fork{program: filepath.Join(dir, handler), dir: dir, env: env, logs: logs}
}

// Call runs one call; it is an sdk.Handler, safe for concurrent use.
func (f *Fork) Call(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	env := make([]string, 0, len(f.env)+3+len(req.Header))
	env = append(env, f.env...)
	env = append(env, "Http_Method="+req.Method, "Http_Path="+req.Path, "Http_Query="+req.Query)
	for k, vs := range req.Header {
		name := strings.ReplaceAll(textproto.CanonicalMIMEHeaderKey(k), "-", "_")
		env = append(env, "Http_"+name+"="+strings.Join(vs, ", "))
	}
	cmd := exec.CommandContext(ctx, f.program)
	cmd.Dir = f.dir
	cmd.Env = env
	cmd.Stdin = bytes.NewReader(req.Body)
	stdout := &boundedBuffer{limit: MaxBody}
	stderr := &tailWriter{logs: f.logs}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second // output pipes a background child holds open
	stdout.over = func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	usage := programUsage(cmd.ProcessState)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if stdout.exceeded {
		return nil, fmt.Errorf("%w: over %d bytes", ErrResponseTooLarge, MaxBody)
	}
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			return nil, err
		}
		msg := strings.TrimSpace(string(stderr.tail()))
		if msg == "" {
			msg = exit.Error()
		}
		return &sdk.Response{Status: http.StatusInternalServerError, Usage: usage}, errors.New(msg)
	}
	return &sdk.Response{Status: http.StatusOK, Body: stdout.buf.Bytes(), Usage: usage}, nil
}

// programUsage returns what a finished program (and the children it
// waited for) used, or nil when it did not start or end.
func programUsage(st *os.ProcessState) *sdk.Usage {
	if st == nil {
		return nil
	}
	ru, ok := st.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return nil
	}
	return &sdk.Usage{
		CPUUser:     time.Duration(ru.Utime.Nano()),
		CPUSystem:   time.Duration(ru.Stime.Nano()),
		MaxRSSBytes: ru.Maxrss << 10, // KiB on Linux
	}
}

// boundedBuffer keeps what is written up to limit bytes; past it, it calls
// over once, drops the rest and sets exceeded. It is written by one
// goroutine at a time.
type boundedBuffer struct {
	buf      bytes.Buffer
	limit    int
	exceeded bool
	over     func()
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if b.exceeded {
		return len(p), nil
	}
	if b.buf.Len()+len(p) > b.limit {
		b.exceeded = true
		b.over()
		return len(p), nil
	}
	return b.buf.Write(p)
}

// tailWriter copies what is written to logs and keeps its last stderrTail
// bytes.
type tailWriter struct {
	logs io.Writer
	mu   sync.Mutex // guards last
	last []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	_, _ = w.logs.Write(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(p) >= stderrTail {
		w.last = append(w.last[:0], p[len(p)-stderrTail:]...)
		return len(p), nil
	}
	if drop := len(w.last) + len(p) - stderrTail; drop > 0 {
		w.last = append(w.last[:0], w.last[drop:]...)
	}
	w.last = append(w.last, p...)
	return len(p), nil
}

func (w *tailWriter) tail() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}
