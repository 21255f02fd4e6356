package agent

import "errors"

// Error classes of the agent. Every error Agent methods return wraps at most
// one of them; the API edges map each class to an HTTP and gRPC status in one
// place (api/errors.go).
var (
	// ErrNotFound: the function (or call) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidArgument: a name, spec or request is malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnauthenticated: a key or token is missing, wrong or revoked.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrResourceExhausted: the function's queue is full.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnavailable: the node cannot take the call now (shutting down, out
	// of memory, containerd unreachable while the call needs a new
	// container).
	ErrUnavailable = errors.New("unavailable")
	// ErrDeadlineExceeded: the call ran past its timeout.
	ErrDeadlineExceeded = errors.New("deadline exceeded")
	// ErrExecutorFailed: the function's process died or broke its session.
	ErrExecutorFailed = errors.New("executor failed")
	// ErrPayloadTooLarge: the request body is over the limit.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrInsufficientStorage: the node's disk is full.
	ErrInsufficientStorage = errors.New("insufficient storage")
	// ErrCancelled: the caller went away before the call finished.
	ErrCancelled = errors.New("cancelled")
)
