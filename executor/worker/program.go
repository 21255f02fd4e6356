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
)

// serveProgram serves cfg with a runtime whose handler is its own worker
// (cpp): the program CodeDir/Handler, built with kiln's SDK, speaks the
// frame protocol itself. It is started in CodeDir with the function's
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
	p, err := Start(ctx, []string{program}, Options{Stdout: cfg.Stdout, Stderr: cfg.Stderr, Env: env, Dir: dir})
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
