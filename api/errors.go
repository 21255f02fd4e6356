package api

import (
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/kilnfx/kiln/agent"
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
	{agent.ErrNotFound, "not_found", http.StatusNotFound, codes.NotFound, false},
	{agent.ErrInvalidArgument, "invalid_argument", http.StatusBadRequest, codes.InvalidArgument, false},
	{agent.ErrUnauthenticated, "unauthenticated", http.StatusUnauthorized, codes.Unauthenticated, false},
	{agent.ErrResourceExhausted, "resource_exhausted", http.StatusTooManyRequests, codes.ResourceExhausted, true},
	{agent.ErrUnavailable, "unavailable", http.StatusServiceUnavailable, codes.Unavailable, true},
	{agent.ErrDeadlineExceeded, "deadline_exceeded", http.StatusGatewayTimeout, codes.DeadlineExceeded, false},
	{agent.ErrExecutorFailed, "executor_failure", http.StatusBadGateway, codes.Unavailable, false},
	{agent.ErrPayloadTooLarge, "payload_too_large", http.StatusRequestEntityTooLarge, codes.ResourceExhausted, false},
	{agent.ErrInsufficientStorage, "insufficient_storage", http.StatusInsufficientStorage, codes.ResourceExhausted, true},
	{errRequestTimeout, "request_timeout", http.StatusRequestTimeout, codes.DeadlineExceeded, false},
	// 499: the caller closed the request (nginx's convention); nobody
	// reads this answer, but the usage record keeps it.
	{agent.ErrCancelled, "cancelled", 499, codes.Canceled, false},
}

var internalClass = errorClass{name: "internal", http: http.StatusInternalServerError, grpc: codes.Internal}

// ClassFunctionError is the class of a call whose handler failed.
const ClassFunctionError = agent.ClassFunctionError

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
