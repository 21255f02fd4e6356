// Package errdefs is kiln's one table of error classes: the sentinel error
// of each class, the name it travels under (package api/wire), the HTTP
// status and gRPC code both edges answer with, and whether the caller is
// told to retry. Every layer imports it, the way containerd's errdefs is
// imported everywhere: the agent wraps the sentinels, the edges map them
// with Classify, the usage record keeps Classify's name and status, and
// the Go client turns a class name back into its sentinel with Lookup, so
// that errors.Is works on both sides of the wire.
//
// It imports only the standard library, grpc's codes and api/wire, which
// imports nothing.
package errdefs

import (
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/kilnfx/kiln/api/wire"
)

// The sentinel errors of the classes. Errors wrap at most one of them,
// except that ErrOOM, ErrPidsExhausted and ErrExited are themselves
// executor failures: each wraps ErrExecutorFailed, so a caller that asks
// errors.Is(err, ErrExecutorFailed) still learns that the function's
// process failed, and Classify, which takes the first row an error
// wraps, finds their own rows first. ErrResponseTooLarge is not an
// executor failure: the container answered and keeps serving.
var (
	// ErrNotFound: the function, call, key or route does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidArgument: a name, spec, archive or request is malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnauthenticated: a key or token is missing, wrong or revoked.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrResourceExhausted: the function's queue, or a connection cap, is
	// full.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnavailable: the node cannot take the call now (shutting down, out
	// of memory, containerd away).
	ErrUnavailable = errors.New("unavailable")
	// ErrDeadlineExceeded: the call ran past its timeout. It is the
	// timeout class (HTTP 504).
	ErrDeadlineExceeded = errors.New("deadline exceeded")
	// ErrExecutorFailed: the function's process died or broke its session.
	ErrExecutorFailed = errors.New("executor failed")
	// ErrOOM: the kernel killed the function's process at its container's
	// memory limit. It wraps ErrExecutorFailed.
	ErrOOM error = &subclass{"out of memory", ErrExecutorFailed}
	// ErrPidsExhausted: the function's container reached its pids limit,
	// so that it could not fork or start a thread. It wraps
	// ErrExecutorFailed.
	ErrPidsExhausted error = &subclass{"pids exhausted", ErrExecutorFailed}
	// ErrExited: the function's process exited, or was killed by a signal,
	// during the call. It wraps ErrExecutorFailed.
	ErrExited error = &subclass{"process exited", ErrExecutorFailed}
	// ErrResponseTooLarge: the function's answer is over the response
	// limit; the container keeps serving.
	ErrResponseTooLarge = errors.New("response too large")
	// ErrPayloadTooLarge: the request body or code archive is over the
	// limit.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrInsufficientStorage: the node's disk is full.
	ErrInsufficientStorage = errors.New("insufficient storage")
	// ErrRequestTimeout: a request's headers or body did not arrive in
	// time. Only the HTTP edge meets it.
	ErrRequestTimeout = errors.New("request timeout")
	// ErrHeadersTooLarge: a request's line and headers are over the
	// limit, by their size or their number. Only the HTTP edge meets it.
	ErrHeadersTooLarge = errors.New("request headers too large")
	// ErrCancelled: the caller went away before the call finished.
	ErrCancelled = errors.New("cancelled")
	// ErrConflict: the request conflicts with the node's state (a runtime
	// still in use).
	ErrConflict = errors.New("conflict")
	// ErrFunction: the function's handler failed the call. The agent
	// answers it as the function's own status, not as an error; the client
	// reports it under this sentinel.
	ErrFunction = errors.New("function error")
	// ErrInternal: anything else.
	ErrInternal = errors.New("internal error")
)

// subclass is a sentinel that is also its parent class's: errors.Is(e,
// parent) holds.
type subclass struct {
	msg    string
	parent error
}

func (e *subclass) Error() string { return e.msg }
func (e *subclass) Unwrap() error { return e.parent }

// Class is one row of the table.
type Class struct {
	// Err is the class's sentinel.
	Err error
	// Name is the class's name on the wire (a wire.Class constant).
	Name string
	// HTTP is the status the HTTP edge answers with; GRPC the code the
	// gRPC edge answers with.
	HTTP int
	GRPC codes.Code
	// Retry says the answer carries Retry-After: the same call may succeed
	// later.
	Retry bool
}

// classes is the table. 499 is nginx's "client closed request": nobody
// reads that answer, but the usage record keeps it. A function error's
// status is the function's own; 500 is its default.
var classes = []Class{
	{ErrNotFound, wire.ClassNotFound, http.StatusNotFound, codes.NotFound, false},
	{ErrInvalidArgument, wire.ClassInvalidArgument, http.StatusBadRequest, codes.InvalidArgument, false},
	{ErrUnauthenticated, wire.ClassUnauthenticated, http.StatusUnauthorized, codes.Unauthenticated, false},
	{ErrResourceExhausted, wire.ClassResourceExhausted, http.StatusTooManyRequests, codes.ResourceExhausted, true},
	{ErrUnavailable, wire.ClassUnavailable, http.StatusServiceUnavailable, codes.Unavailable, true},
	{ErrDeadlineExceeded, wire.ClassDeadlineExceeded, http.StatusGatewayTimeout, codes.DeadlineExceeded, false},
	// The executor failures kiln could tell the cause of come before
	// executor_failure, which they wrap.
	{ErrOOM, wire.ClassOOM, http.StatusBadGateway, codes.Unavailable, false},
	{ErrPidsExhausted, wire.ClassPidsExhausted, http.StatusBadGateway, codes.Unavailable, false},
	{ErrExited, wire.ClassExited, http.StatusBadGateway, codes.Unavailable, false},
	{ErrExecutorFailed, wire.ClassExecutorFailure, http.StatusBadGateway, codes.Unavailable, false},
	{ErrResponseTooLarge, wire.ClassResponseTooLarge, http.StatusBadGateway, codes.ResourceExhausted, false},
	{ErrPayloadTooLarge, wire.ClassPayloadTooLarge, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, false},
	{ErrInsufficientStorage, wire.ClassInsufficientStorage, http.StatusInsufficientStorage, codes.ResourceExhausted, true},
	{ErrRequestTimeout, wire.ClassRequestTimeout, http.StatusRequestTimeout, codes.DeadlineExceeded, false},
	{ErrHeadersTooLarge, wire.ClassHeadersTooLarge, http.StatusRequestHeaderFieldsTooLarge, codes.ResourceExhausted, false},
	{ErrCancelled, wire.ClassCancelled, 499, codes.Canceled, false},
	{ErrConflict, wire.ClassConflict, http.StatusConflict, codes.FailedPrecondition, false},
	{ErrFunction, wire.ClassFunctionError, http.StatusInternalServerError, codes.Unknown, false},
}

// Internal is the class of an error that wraps no sentinel.
var Internal = Class{Err: ErrInternal, Name: wire.ClassInternal, HTTP: http.StatusInternalServerError, GRPC: codes.Internal}

// Classify returns the class of err: the first row whose sentinel err
// wraps, else Internal. nil is Internal too; callers classify failures.
func Classify(err error) Class {
	for _, c := range classes {
		if errors.Is(err, c.Err) {
			return c
		}
	}
	return Internal
}

// Lookup returns the class named name, and false for a name kiln does not
// answer with.
func Lookup(name string) (Class, bool) {
	if name == Internal.Name {
		return Internal, true
	}
	for _, c := range classes {
		if c.Name == name {
			return c, true
		}
	}
	return Class{}, false
}

// Classes returns every class, Internal last.
func Classes() []Class {
	return append(append([]Class(nil), classes...), Internal)
}
