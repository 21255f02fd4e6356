package api

import (
	"google.golang.org/grpc/codes"

	"github.com/kilnfx/kiln/errdefs"
)

// HTTPStatus returns the HTTP status and class name for err.
func HTTPStatus(err error) (int, string) {
	c := errdefs.Classify(err)
	return c.HTTP, c.Name
}

// GRPCCode returns the gRPC status code for err.
func GRPCCode(err error) codes.Code {
	return errdefs.Classify(err).GRPC
}
