// Package wire holds the names and limits of kiln's public API that its
// server (package api) and its Go client (package api/client) both speak:
// the headers and gRPC trailer keys kiln sets, the error classes it answers
// with, the start kinds and status classes of usage records and reports,
// the groupings of usage reports and the bounds of call listings.
//
// The messages themselves are the kiln.v1 protos (proto/kiln/v1): the gRPC
// API speaks them as they are, the HTTP API as JSON (protojson with the
// proto field names). This package names what travels beside them.
//
// It imports nothing, so that every program speaking to kiln can use it.
package wire

// Headers kiln sets on the answers of its HTTP API.
const (
	// HeaderCallID is the call's id (a UUIDv7) on the answer of every call
	// kiln gave a usage record, refused calls included: GET
	// /v1/calls/{id} shows that record.
	HeaderCallID = "X-Kiln-Call-Id"
	// HeaderStart says how the call's container was started: StartWarm,
	// StartThawed, StartStem or StartCold. It is absent when the call
	// reached no container.
	HeaderStart = "X-Kiln-Start"
	// HeaderError is the error class of every error answer kiln gives
	// itself, also in the body's class field; on the answer of a call it is
	// ClassFunctionError when the function failed the call, and absent
	// when the function answered.
	HeaderError = "X-Kiln-Error"
	// HeaderTrace, on a call's request with any non-empty value, asks a
	// kilnd started with --trace-calls to trace the call; the answer then carries it with
	// the CLOCK_MONOTONIC nanoseconds at which the call passed each point
	// of its way through kilnd and the executor, as comma-separated
	// name=ns pairs (see agent.TracePoint). Without --trace-calls it is
	// ignored.
	HeaderTrace = "X-Kiln-Trace"
)

// Trailer metadata keys kiln sets on a failed unary Invoke over gRPC.
const (
	// TrailerCallID holds the call's id when kiln gave it a usage record.
	TrailerCallID = "kiln-call-id"
	// TrailerErrorClass holds the error class, as HeaderError does over
	// HTTP. Every status error kiln answers itself also carries the class
	// in a kiln.v1.Error status detail.
	TrailerErrorClass = "kiln-error-class"
	// MetadataTrace is HeaderTrace over gRPC: in a unary Invoke's request
	// metadata it asks for a trace, which comes back in the answer's
	// header metadata under the same key.
	MetadataTrace = "kiln-trace"
)

// Error classes: the class field of kiln.v1.Error and kiln.v1.InvokeError,
// the value of HeaderError and TrailerErrorClass, and the error_class of a
// call's usage record. Each class has one HTTP status and one gRPC code
// (package api maps them, and README.md lists them); several classes share
// a gRPC code, so a gRPC client learns the class from the status detail,
// not from the code.
const (
	// ClassNotFound: the function, call, key or route does not exist.
	ClassNotFound = "not_found"
	// ClassInvalidArgument: a name, spec, parameter or request is
	// malformed, or the method is not allowed.
	ClassInvalidArgument = "invalid_argument"
	// ClassUnauthenticated: a token or key is missing, wrong, revoked, or
	// not enough for the request.
	ClassUnauthenticated = "unauthenticated"
	// ClassResourceExhausted: the function's queue is full, or the client's
	// address has too many connections open; retry later.
	ClassResourceExhausted = "resource_exhausted"
	// ClassUnavailable: the node cannot take the call now (out of memory,
	// too many connections, shutting down, containerd away while the call
	// needs a new container); retry later.
	ClassUnavailable = "unavailable"
	// ClassDeadlineExceeded: the call ran past its timeout (HTTP 504). It
	// is the timeout class: a call that outlived its function's timeout,
	// or the caller's shorter deadline, is recorded under it.
	ClassDeadlineExceeded = "deadline_exceeded"
	// ClassExecutorFailure: the function's process died or broke its
	// session for a reason kiln could not tell (none of ClassOOM,
	// ClassPidsExhausted, ClassExited); the next call gets a fresh
	// container.
	ClassExecutorFailure = "executor_failure"
	// ClassOOM: the function's container reached its memory limit and the
	// kernel killed its process (HTTP 502); the next call gets a fresh
	// container.
	ClassOOM = "oom"
	// ClassPidsExhausted: the function could not fork or start a thread
	// because its container reached its pids limit (HTTP 502), whether its
	// process died of it or its handler failed.
	ClassPidsExhausted = "pids_exhausted"
	// ClassExited: the function's process exited during the call, by
	// itself or killed by a signal; the message carries the exit status or
	// the signal (HTTP 502). The next call gets a fresh container.
	ClassExited = "exited"
	// ClassResponseTooLarge: the function's answer is over the response
	// limit (HTTP 502); the executor sent an error instead and the
	// container keeps serving.
	ClassResponseTooLarge = "response_too_large"
	// ClassPayloadTooLarge: the request body or code archive is over the
	// agent's limit.
	ClassPayloadTooLarge = "payload_too_large"
	// ClassInsufficientStorage: the disk of the agent's data directory is
	// full; retry later.
	ClassInsufficientStorage = "insufficient_storage"
	// ClassRequestTimeout: the request's headers or body did not arrive
	// within the server's read timeouts (HTTP 408; the connection is
	// closed).
	ClassRequestTimeout = "request_timeout"
	// ClassHeadersTooLarge: the request line and headers are over the
	// server's limit, by their size or their number (HTTP 431; the
	// connection is closed).
	ClassHeadersTooLarge = "headers_too_large"
	// ClassCancelled: the caller went away before the call finished. It is
	// seen in usage records; nobody reads the answer.
	ClassCancelled = "cancelled"
	// ClassConflict: the request conflicts with the node's state, as
	// removing a runtime a function still uses (409).
	ClassConflict = "conflict"
	// ClassFunctionError: the function's handler returned an error or
	// panicked. The answer is the function's (its status, 500 by default),
	// not kiln's.
	ClassFunctionError = "function_error"
	// ClassInternal: anything else; kiln's own failure.
	ClassInternal = "internal"
)

// Classes returns every error class, each once, in the order of the Class
// constants. The slice is the caller's.
func Classes() []string {
	return []string{
		ClassNotFound, ClassInvalidArgument, ClassUnauthenticated, ClassResourceExhausted,
		ClassUnavailable, ClassDeadlineExceeded, ClassExecutorFailure, ClassOOM, ClassPidsExhausted,
		ClassExited, ClassResponseTooLarge, ClassPayloadTooLarge,
		ClassInsufficientStorage, ClassRequestTimeout, ClassHeadersTooLarge, ClassCancelled, ClassConflict, ClassFunctionError, ClassInternal,
	}
}

// Start kinds: how a call's container was started, as HeaderStart, the
// start of a call's usage record and the keys of a report row's by_start
// name them.
const (
	StartWarm   = "warm"   // an idle, running container was reused
	StartThawed = "thawed" // a frozen container was thawed
	StartStem   = "stem"   // a stem cell became the function's container
	StartCold   = "cold"   // a new container was started
	// StartNone is the by_start key of calls refused before they reached a
	// container; such calls have no start and no HeaderStart.
	StartNone = "none"
)

// Keys of a report row's by_status: the calls counted by the class of the
// HTTP status they were answered with.
const (
	Status2xx   = "2xx"
	Status3xx   = "3xx"
	Status4xx   = "4xx"
	Status5xx   = "5xx"
	StatusOther = "other" // below 200 or above 599; 0 when the call got no answer
)

// Groupings of a usage report: the group_by parameter of GET /v1/usage and
// field of kiln.v1.ReportRequest, echoed in kiln.v1.ReportResponse.
const (
	GroupByNone     = ""         // one row for everything selected
	GroupByFunction = "function" // one row per function
	GroupByTenant   = "tenant"   // one row per tenant
	GroupByMinute   = "minute"   // one row per UTC minute
	GroupByHour     = "hour"     // one row per UTC hour
	GroupByDay      = "day"      // one row per UTC day
)

// Bounds of a listing of calls (GET /v1/calls).
const (
	// DefaultCallLimit is how many calls a listing that sets no limit
	// returns at most.
	DefaultCallLimit = 100
	// MaxCallLimit is the most calls one listing returns: its limit
	// parameter is 1..MaxCallLimit.
	MaxCallLimit = 10000
)

// DefaultStreamMaxInFlight is how many requests of one InvokeStream the
// server runs at once unless configured otherwise, and how many a client
// sends before waiting for answers.
const DefaultStreamMaxInFlight = 256
