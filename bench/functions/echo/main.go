// Command echo is the benchmark's echo function: it answers with the body it
// was sent.
package main

import (
	"context"

	"github.com/kilnfx/kiln/executor/sdk"
)

func handle(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	return &sdk.Response{Body: req.Body}, nil
}

func main() { sdk.Serve(handle) }
