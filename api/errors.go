package api

import (
	"google.golang.org/grpc/codes"

	"github.com/kilnfx/kiln/errdefs"
)

// errRequestTimeout is the class of an HTTP request whose headers or body
// did not arrive within their timeout. Only the edge meets it.
var errRequestTimeout = errdefs.ErrRequestTimeout

// classify returns the class of err from the one table, errdefs.
func classify(err error) errdefs.Class { return errdefs.Classify(err) }

// HTTPStatus returns the HTTP status and class name for err.
func HTTPStatus(err error) (int, string) {
	c := classify(err)
	return c.HTTP, c.Name
}

// GRPCCode returns the gRPC status code for err.
func GRPCCode(err error) codes.Code {
	return classify(err).GRPC
}
