// Command json is the benchmark's JSON transform function: it decodes an
// order and answers with its summary (see handlers.Transform).
package main

import (
	"github.com/kilnfx/kiln/bench/functions/handlers"
	"github.com/kilnfx/kiln/executor/sdk"
)

func main() { sdk.Serve(handlers.Transform) }
