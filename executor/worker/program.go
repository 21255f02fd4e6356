package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/stem"
	pb "github.com/kilnfx/kiln/proto/executorpb"
	"github.com/kilnfx/kiln/runtimes/cpp"
	"github.com/kilnfx/kiln/runtimes/csharp"
)

// ProgramCommand returns the command line running program as the worker
// of runtime, or false when runtime's worker is not the function's own
// program. For cpp the program is the function's static binary, built
// with kiln's header-only SDK (runtimes/cpp.Build); for csharp it is
// handler.exe, kiln's worker and the function compiled together by kiln
// deploy (runtimes/csharp.Build), run by mono.
func ProgramCommand(runtime, program string) ([]string, bool) {
	switch runtime {
	case cpp.Name:
		return []string{program}, true
	case csharp.Name:
		return []string{"mono", program}, true
	}
	return nil, false
}

// serveProgram serves cfg with a runtime whose handler is its own worker
// (see ProgramCommand): the program CodeDir/Handler speaks the frame
// protocol itself. It is started in CodeDir with the function's
// environment and then sent load as any worker is (the SDK applies env and
// dir, and answers loaded).
//
// In stem mode there is no interpreter to keep up: the stem cell waits for
// Init with no worker, then starts the program Init names. A stem cell of
// such a runtime spares a call only the container's start.
func serveProgram(ctx context.Context, cfg Config) error {
	if cfg.Handler != "" {
		return runProgram(ctx, cfg, cfg.Function, cfg.CodeDir, cfg.Handler, cfg.Env)
	}
	var function, dir, handler string
	var env []string
	err := stem.Run(ctx, cfg.Socket, cfg.Runtime, func(init *pb.Init) error {
		function, dir, handler = init.Function, init.CodePath, init.Handler
		env = overlay(cfg.Env, init.Env)
		return nil
	})
	if err != nil {
		return err
	}
	if handler == "" {
		return errors.New("no handler to run")
	}
	return runProgram(ctx, cfg, function, dir, handler, env)
}

// runProgram starts the program dir/handler as the worker, loads it and
// serves function's calls with it.
func runProgram(ctx context.Context, cfg Config, function, dir, handler string, env []string) error {
	program := filepath.Join(dir, handler)
	if _, err := os.Stat(program); err != nil {
		return fmt.Errorf("%w: %v", ErrLoad, err)
	}
	argv, ok := ProgramCommand(cfg.Runtime, program)
	if !ok {
		return fmt.Errorf("unknown runtime %q", cfg.Runtime)
	}
	p, err := Start(ctx, argv, Options{Stdout: cfg.Stdout, Stderr: cfg.Stderr, Env: env, Dir: dir})
	if err != nil {
		return err
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	died := supervise(ctx, cancel, cfg, p)
	if err := p.Load(ctx, dir, handler, envMap(env, nil)); err != nil {
		return died(err)
	}
	err = sdk.RunWith(ctx, cfg.Socket, sdk.RunOptions{Function: function, Runtime: cfg.Runtime, Version: p.Version()}, callUntilDeath(ctx, p))
	return died(err)
}
