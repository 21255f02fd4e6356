package agent

import "github.com/kilnfx/kiln/errdefs"

// Error classes of the agent: the sentinels of package errdefs, named here
// for the agent's callers. Every error Agent methods return wraps at most
// one of them; errdefs.Classify maps each to its name, HTTP status and gRPC
// code, for the usage record here and for the answers of both edges.
var (
	ErrNotFound            = errdefs.ErrNotFound
	ErrInvalidArgument     = errdefs.ErrInvalidArgument
	ErrUnauthenticated     = errdefs.ErrUnauthenticated
	ErrResourceExhausted   = errdefs.ErrResourceExhausted
	ErrUnavailable         = errdefs.ErrUnavailable
	ErrDeadlineExceeded    = errdefs.ErrDeadlineExceeded
	ErrExecutorFailed      = errdefs.ErrExecutorFailed
	ErrOOM                 = errdefs.ErrOOM
	ErrPidsExhausted       = errdefs.ErrPidsExhausted
	ErrExited              = errdefs.ErrExited
	ErrResponseTooLarge    = errdefs.ErrResponseTooLarge
	ErrPayloadTooLarge     = errdefs.ErrPayloadTooLarge
	ErrInsufficientStorage = errdefs.ErrInsufficientStorage
	ErrCancelled           = errdefs.ErrCancelled
	ErrConflict            = errdefs.ErrConflict
)
