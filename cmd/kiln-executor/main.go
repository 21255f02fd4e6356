// Command kiln-executor is the generic executor: a static binary that
// kilnd runs in the containers of functions that are not Go binaries, and
// in stem cell containers.
//
// With KILN_RUNTIME unset or "go" it is the Go stem cell: it says Ready
// with no function and, on Init, execs the function's binary, which takes
// over the container as that function. With KILN_RUNTIME python3, node,
// ruby or binary it serves the function through a worker process (package
// executor/worker, whose doc comment lists the environment it reads). It
// exits 1 when it fails: the handler did not load, the worker died, or the
// agent could not be reached.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"syscall"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/stem"
	"github.com/kilnfx/kiln/executor/worker"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

func main() {
	if rt := os.Getenv(worker.EnvRuntime); rt != "" && rt != "go" {
		if err := worker.Serve(context.Background(), worker.ConfigFromEnv(os.Environ())); err != nil {
			fmt.Fprintln(os.Stderr, "kiln-executor:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	socket := os.Getenv(sdk.EnvSocket)
	if socket == "" {
		socket = sdk.DefaultSocket
	}
	err := stem.Run(context.Background(), socket, "go", func(init *pb.Init) error {
		env := []string{sdk.EnvSocket + "=" + socket}
		keys := make([]string, 0, len(init.Env))
		for k := range init.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			env = append(env, k+"="+init.Env[k])
		}
		return syscall.Exec(init.CodePath, []string{init.CodePath}, env)
	})
	fmt.Fprintln(os.Stderr, "kiln-executor:", err)
	os.Exit(1)
}
