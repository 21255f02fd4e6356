// Command primes is the benchmark's CPU-bound function: it counts the primes
// up to the N in its body (see handlers.Primes).
package main

import (
	"github.com/kilnfx/kiln/bench/functions/handlers"
	"github.com/kilnfx/kiln/executor/sdk"
)

func main() { sdk.Serve(handlers.Primes) }
