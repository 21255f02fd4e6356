package api

import (
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api/wire"
)

// errorClass is one row of the single mapping from the agent's error classes
// to what both edges answer.
type errorClass struct {
	err   error
	name  string
	http  int
	grpc  codes.Code
	retry bool // answer with Retry-After
}

// errRequestTimeout is the class of an HTTP request whose headers or body
// did not arrive within their timeout. Only the edge meets it.
var errRequestTimeout = errors.New("request timeout")

var errorClasses = []errorClass{
	{agent.ErrNotFound, wire.ClassNotFound, http.StatusNotFound, codes.NotFound, false},
	{agent.ErrInvalidArgument, wire.ClassInvalidArgument, http.StatusBadRequest, codes.InvalidArgument, false},
	{agent.ErrUnauthenticated, wire.ClassUnauthenticated, http.StatusUnauthorized, codes.Unauthenticated, false},
	{agent.ErrResourceExhausted, wire.ClassResourceExhausted, http.StatusTooManyRequests, codes.ResourceExhausted, true},
	{agent.ErrUnavailable, wire.ClassUnavailable, http.StatusServiceUnavailable, codes.Unavailable, true},
	{agent.ErrDeadlineExceeded, wire.ClassDeadlineExceeded, http.StatusGatewayTimeout, codes.DeadlineExceeded, false},
	{agent.ErrExecutorFailed, wire.ClassExecutorFailure, http.StatusBadGateway, codes.Unavailable, false},
	{agent.ErrPayloadTooLarge, wire.ClassPayloadTooLarge, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, false},
	{agent.ErrInsufficientStorage, wire.ClassInsufficientStorage, http.StatusInsufficientStorage, codes.ResourceExhausted, true},
	{errRequestTimeout, wire.ClassRequestTimeout, http.StatusRequestTimeout, codes.DeadlineExceeded, false},
	// 499: the caller closed the request (nginx's convention); nobody
	// reads this answer, but the usage record keeps it.
	{agent.ErrCancelled, wire.ClassCancelled, 499, codes.Canceled, false},
}

var internalClass = errorClass{name: wire.ClassInternal, http: http.StatusInternalServerError, grpc: codes.Internal}

// classify returns the class of err.
func classify(err error) errorClass {
	for _, c := range errorClasses {
		if errors.Is(err, c.err) {
			return c
		}
	}
	return internalClass
}

// HTTPStatus returns the HTTP status and class name for err.
func HTTPStatus(err error) (int, string) {
	c := classify(err)
	return c.http, c.name
}

// GRPCCode returns the gRPC status code for err.
func GRPCCode(err error) codes.Code {
	return classify(err).grpc
}
