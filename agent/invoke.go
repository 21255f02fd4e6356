package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/kilnfx/kiln/api/wire"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/errdefs"
	"github.com/kilnfx/kiln/pool"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// Call is one invocation as an API edge hands it to the agent.
type Call struct {
	// Function is the function's name.
	Function string
	// Trigger names the edge: "http", "grpc" or "grpc-stream".
	Trigger string
	// Key is the API key the caller presented, or empty. A function with
	// require_key needs a valid one; for a public function a key only names
	// the tenant billed, and a wrong key is refused all the same.
	Key string
	// Received is when the edge received the call; zero means now.
	Received time.Time
	// Method, Path and Query describe the HTTP request, when there is one.
	Method, Path, Query string
	// Headers are passed to the function.
	Headers []Header
	// Body is the request body; the agent does not keep it after Invoke.
	Body []byte
	// Trace, when not nil, records when the call passed each TracePoint,
	// the executor's side included.
	Trace *Trace
}

// Header is one HTTP-style header of a call or its answer; a key may
// repeat.
type Header struct {
	Key, Value string
}

// toExecutorHeaders converts hs for the executor protocol in two
// allocations whatever their number.
func toExecutorHeaders(hs []Header) []*pb.Header {
	if len(hs) == 0 {
		return nil
	}
	vals := make([]pb.Header, len(hs))
	ptrs := make([]*pb.Header, len(hs))
	for i, h := range hs {
		vals[i].Key, vals[i].Value = h.Key, h.Value
		ptrs[i] = &vals[i]
	}
	return ptrs
}

// fromExecutorHeaders converts the executor's answer headers.
func fromExecutorHeaders(hs []*pb.Header) []Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]Header, len(hs))
	for i, h := range hs {
		out[i] = Header{Key: h.GetKey(), Value: h.GetValue()}
	}
	return out
}

// Result is the outcome of a call.
type Result struct {
	// CallID is the call's id (a UUIDv7).
	CallID string
	// Start says how the container was obtained: warm, thawed, stem, cold;
	// empty when the call never got one.
	Start string
	// Status is the function's HTTP status.
	Status int
	// Headers and Body are the function's answer.
	Headers []Header
	Body    []byte
	// FunctionError is the handler's error message, if it failed.
	FunctionError string
	// Exec is the handler's run time as the executor measured it.
	Exec time.Duration
}

// UsageSink receives the usage record of every call. Append returns nil
// only once the record is as durable as the sink promises (the journal:
// written to the kernel, so it survives the agent being killed). It is
// called concurrently and must not keep r.
type UsageSink interface {
	Append(r *datastore.UsageRecord) error
}

var recordPool = sync.Pool{New: func() any { return new(datastore.UsageRecord) }}

func init() {
	// Call ids come from a buffered pool of randomness instead of a
	// getrandom(2) per call.
	uuid.EnableRandPool()
}

// Invoke runs one call of a function and returns the function's answer. A
// handler error is not an error of Invoke: it is reported in the Result.
// Errors wrap one of the agent's error classes: ErrNotFound,
// ErrInvalidArgument, ErrPayloadTooLarge, ErrResourceExhausted (queue full
// or the call waited its whole timeout), ErrDeadlineExceeded (the timeout),
// ErrUnavailable (no capacity, shutting down, the container runtime
// unreachable while the call needed a new container, or the usage record
// could not be written), ErrResponseTooLarge, and ErrExecutorFailed or,
// when the pool could tell why the function's process failed, ErrOOM,
// ErrPidsExhausted or ErrExited (each also an ErrExecutorFailed).
//
// A call that failed once it had a container is metered as one that
// succeeded would be (see docs/METERING.md): its run time, CPU and memory
// come from the executor's Result when there is one, else from the
// agent's measure of the time the call held the container and the pool's
// reading of the container's cgroup.
//
// Every call, failed and rejected ones included, leaves exactly one usage
// record in the agent's UsageSink before Invoke returns; if the record
// cannot be written the call fails with ErrUnavailable rather than be
// answered unrecorded.
func (a *Agent) Invoke(ctx context.Context, call *Call) (*Result, error) {
	call.Trace.Mark(TraceAgentStart)
	received := call.Received
	if received.IsZero() {
		received = time.Now()
	}
	rec := recordPool.Get().(*datastore.UsageRecord)
	*rec = datastore.UsageRecord{}
	res, err := a.invoke(ctx, call, rec)
	err = a.meter(call, received, rec, res, err)
	recordPool.Put(rec)
	call.Trace.Mark(TraceMetered)
	return res, err
}

func (a *Agent) invoke(ctx context.Context, call *Call, rec *datastore.UsageRecord) (*Result, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("call id: %w", err)
	}
	res := &Result{CallID: id.String()}
	rec.CallID = res.CallID
	fn, err := a.lookup(call.Function)
	if err != nil {
		return res, err
	}
	rec.Revision = fn.record.Revision
	rec.MemoryLimitBytes = fn.pool.MemoryBytes
	if call.Key != "" {
		tenant, err := a.Authenticate(call.Key)
		if err != nil {
			return res, err
		}
		rec.Tenant = tenant
	} else if fn.requireKey {
		return res, fmt.Errorf("%w: function %q needs an API key (Authorization: Bearer KEY)", ErrUnauthenticated, fn.record.Name)
	}
	if len(call.Body) > a.maxBody {
		return res, fmt.Errorf("%w: body of %d bytes is over the %d byte limit", ErrPayloadTooLarge, len(call.Body), a.maxBody)
	}
	if err := checkCallText(call); err != nil {
		return res, err
	}
	if fn.unavailable != nil {
		return res, fn.unavailable
	}
	timeoutAt := time.Now().Add(fn.timeout)
	ctx, cancel := context.WithDeadline(ctx, timeoutAt)
	defer cancel()
	call.Trace.Mark(TraceAcquireStart)
	t0 := time.Now()
	c, kind, err := a.pool.Acquire(ctx, fn.pool)
	acquired := time.Now()
	waited := acquired.Sub(t0)
	call.Trace.Mark(TraceAcquired)
	if err != nil {
		rec.QueueWait = waited
		return res, a.callError(ctx, fn, err)
	}
	res.Start = kind.String()
	rec.Start = res.Start
	rec.ContainerID = c.ID()
	if kind == pool.StartWarm {
		rec.QueueWait = waited
	} else {
		rec.InitTime = waited
	}
	deadline, _ := ctx.Deadline()
	out, err := c.Invoke(ctx, &pb.Invoke{
		CallId:           res.CallID,
		DeadlineUnixNano: deadline.UnixNano(),
		Headers:          toExecutorHeaders(call.Headers),
		Body:             call.Body,
		Method:           call.Method,
		Path:             call.Path,
		Query:            call.Query,
		Trace:            call.Trace != nil,
	})
	call.Trace.Mark(TraceAgentWoke)
	rec.Shared = fn.pool.Concurrency > 1
	if err == nil && !time.Now().Before(deadline) {
		// The answer came at or after the deadline (a handler that
		// returned on ctx.Done, whose timer may fire a hair before ours):
		// the call still ran out of time.
		err = context.DeadlineExceeded
	}
	if err == nil && out.ErrorClass != "" {
		err = resultError(fn, out)
	}
	if err != nil {
		// Before the container is released or discarded: its cgroup is
		// read while it still exists.
		a.meterFailedCall(ctx, fn, c, rec, out, err, time.Since(acquired))
	}
	if errors.Is(err, context.DeadlineExceeded) && !deadline.Before(timeoutAt) {
		// A function past its own timeout may be stuck: kill its
		// container and let the pool replace it. A caller's shorter
		// deadline only cancels the call (the executor was told).
		a.pool.Discard(c)
	} else {
		a.pool.Release(c)
	}
	if err != nil {
		return res, a.callError(ctx, fn, err)
	}
	res.Status = int(out.Status)
	if res.Status == 0 {
		res.Status = 200
	}
	res.Headers = fromExecutorHeaders(out.Headers)
	res.Body = out.Body
	res.FunctionError = out.Error
	res.Exec = time.Duration(out.ExecNs)
	call.Trace.setExecutor(out.Trace)
	rec.RunTime = res.Exec
	rec.CPUUser = time.Duration(out.CpuUserNs)
	rec.CPUSystem = time.Duration(out.CpuSysNs)
	rec.MemoryPeakBytes = out.MaxRssBytes
	return res, nil
}

// resultError is the error of a Result the executor failed itself, by its
// error_class.
func resultError(fn *function, out *pb.Result) error {
	if out.ErrorClass == pb.ErrorClassResponseTooLarge {
		return fmt.Errorf("%w: function %q: %s", ErrResponseTooLarge, fn.record.Name, out.Error)
	}
	return fmt.Errorf("%w: function %q: executor error of class %q: %s", ErrExecutorFailed, fn.record.Name, out.ErrorClass, out.Error)
}

// meterFailedCall fills rec's run time, CPU and memory for a call that
// failed after it got container c, as a call that succeeded would have
// them: the executor's figures when its Result came (out), else held (the
// time the call held the container, as the agent measured it) and the
// pool's reading of the container's cgroup (pool.FailedCallUsage), its CPU
// bounded by what the container's CPUs could have done in that time.
func (a *Agent) meterFailedCall(ctx context.Context, fn *function, c *pool.Container, rec *datastore.UsageRecord, out *pb.Result, err error, held time.Duration) {
	if out != nil {
		rec.RunTime = time.Duration(out.ExecNs)
		rec.CPUUser = time.Duration(out.CpuUserNs)
		rec.CPUSystem = time.Duration(out.CpuSysNs)
		rec.MemoryPeakBytes = out.MaxRssBytes
	}
	if rec.RunTime <= 0 {
		rec.RunTime = held
	}
	if out != nil && rec.MemoryPeakBytes > 0 {
		return
	}
	used, ok := a.pool.FailedCallUsage(ctx, c, err)
	if !ok {
		return
	}
	if rec.MemoryPeakBytes == 0 {
		rec.MemoryPeakBytes = used.MemoryPeakBytes
	}
	if out != nil {
		return
	}
	cores := float64(runtime.NumCPU())
	if fn.pool.CPUMillis > 0 {
		cores = min(cores, float64(fn.pool.CPUMillis)/1000)
	}
	if most := time.Duration(float64(held) * cores); used.CPUUser+used.CPUSystem > most {
		scale := float64(most) / float64(used.CPUUser+used.CPUSystem)
		used.CPUUser = time.Duration(float64(used.CPUUser) * scale)
		used.CPUSystem = most - used.CPUUser
	}
	rec.CPUUser, rec.CPUSystem = used.CPUUser, used.CPUSystem
}

// meter completes rec from the call's outcome, writes it to the usage sink
// and updates the metrics. It returns the error the caller must answer
// with: err, or ErrUnavailable when the record could not be written.
func (a *Agent) meter(call *Call, received time.Time, rec *datastore.UsageRecord, res *Result, err error) error {
	rec.ReceivedAt = received
	rec.TotalTime = time.Since(received)
	rec.Function = recordedName(call.Function)
	rec.Trigger = call.Trigger
	rec.Node = a.node
	rec.BytesIn = int64(len(call.Body))
	if err != nil {
		c := errdefs.Classify(err)
		rec.Status, rec.ErrorClass = c.HTTP, c.Name
	} else {
		rec.Status = res.Status
		rec.BytesOut = int64(len(res.Body))
		if res.FunctionError != "" {
			rec.ErrorClass = ClassFunctionError
		}
	}
	a.metrics.observe(rec)
	if a.usage == nil {
		return err
	}
	if rec.CallID == "" {
		// No id could be made: record the call under a fresh one anyway.
		rec.CallID = uuid.NewString()
	}
	if werr := a.usage.Append(rec); werr != nil {
		a.log.Error("usage record not written; failing the call", "call", rec.CallID, "err", werr)
		return fmt.Errorf("%w: cannot record usage: %v", ErrUnavailable, werr)
	}
	return err
}

// Reject records a call an edge refused before handing it to Invoke (no or
// a bad API key, an unreadable request) and returns the call's id. err is
// the refusal, wrapping one of the agent's error classes.
func (a *Agent) Reject(call *Call, err error) (string, error) {
	rec := recordPool.Get().(*datastore.UsageRecord)
	*rec = datastore.UsageRecord{}
	defer recordPool.Put(rec)
	rec.CallID = uuid.NewString()
	if id, e := uuid.NewV7(); e == nil {
		rec.CallID = id.String()
	}
	received := call.Received
	if received.IsZero() {
		received = time.Now()
	}
	a.mu.RLock()
	if fn := a.functions[call.Function]; fn != nil {
		rec.Revision = fn.record.Revision
		rec.MemoryLimitBytes = fn.pool.MemoryBytes
	}
	a.mu.RUnlock()
	return rec.CallID, a.meter(call, received, rec, nil, err)
}

// ClassFunctionError is the error class of a call whose handler failed.
const ClassFunctionError = wire.ClassFunctionError

// checkCallText refuses a call whose method, path, query or a header is
// not UTF-8: the executor's protocol carries them as protobuf strings, and
// a message that cannot be marshalled fails the container's session, and
// with it the container and every call it is running. The body is bytes
// and may hold anything. Errors wrap ErrInvalidArgument.
func checkCallText(call *Call) error {
	bad := func(what string) error {
		return fmt.Errorf("%w: the request's %s is not UTF-8 (percent-encode other bytes)", ErrInvalidArgument, what)
	}
	switch {
	case !utf8.ValidString(call.Method):
		return bad("method")
	case !utf8.ValidString(call.Path):
		return bad("path")
	case !utf8.ValidString(call.Query):
		return bad("query")
	}
	for _, h := range call.Headers {
		if !utf8.ValidString(h.Key) || !utf8.ValidString(h.Value) {
			return bad("header " + strconv.Quote(h.Key))
		}
	}
	return nil
}

// recordedName is a call's function name as its usage record and the
// metrics keep it. A refused call's name is whatever the client sent: it
// is made valid UTF-8 (each bad byte becomes U+FFFD) and cut to at most 63
// bytes at a character boundary, so that it can be stored, answered as
// JSON and exported.
func recordedName(name string) string {
	const maxBytes = 63
	if len(name) <= maxBytes && utf8.ValidString(name) {
		return name
	}
	name = strings.ToValidUTF8(name, string(utf8.RuneError))
	if len(name) <= maxBytes {
		return name
	}
	cut := maxBytes
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut]
}

// callError maps a pool error to the agent's error classes.
func (a *Agent) callError(ctx context.Context, fn *function, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("%w: the caller went away", ErrCancelled)
	case errors.Is(err, ErrResponseTooLarge):
		return err
	case errors.As(err, new(*pool.Fault)):
		return faultError(err)
	case errors.Is(err, pool.ErrQueueFull), errors.Is(err, pool.ErrQueueTimeout):
		return fmt.Errorf("%w: function %q: %v", ErrResourceExhausted, fn.record.Name, err)
	case errors.Is(err, pool.ErrNoCapacity), errors.Is(err, pool.ErrUnavailable):
		return fmt.Errorf("%w: function %q: %v", ErrUnavailable, fn.record.Name, err)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: function %q did not answer within %v", ErrDeadlineExceeded, fn.record.Name, fn.timeout)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: call cancelled", ErrCancelled)
	case errors.Is(err, pool.ErrClosed):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	case errors.Is(err, pool.ErrExecutorFailed):
		return fmt.Errorf("%w: function %q: %v", ErrExecutorFailed, fn.record.Name, err)
	}
	return fmt.Errorf("%w: function %q: %v", ErrExecutorFailed, fn.record.Name, err)
}

// faultError maps a pool.Fault, the diagnosed failure of a container's
// process, to its error class.
func faultError(err error) error {
	var f *pool.Fault
	errors.As(err, &f)
	switch f.Cause {
	case pool.CauseOOM:
		return fmt.Errorf("%w: %v", ErrOOM, f)
	case pool.CausePidsExhausted:
		return fmt.Errorf("%w: %v", ErrPidsExhausted, f)
	case pool.CauseExited:
		return fmt.Errorf("%w: %v", ErrExited, f)
	}
	return fmt.Errorf("%w: %v", ErrExecutorFailed, f)
}
