// Command echo is the benchmark's echo function: it answers with the body it
// was sent.
package main

import (
	"github.com/kilnfx/kiln/bench/functions/handlers"
	"github.com/kilnfx/kiln/executor/sdk"
)

func main() { sdk.Serve(handlers.Echo) }
