// Command kiln-executor is the stem cell executor of the go runtime: a
// static binary that kilnd runs in stem cell containers. On Init it execs
// the function's binary, which takes over the container as that function.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"syscall"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/stem"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

func main() {
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
