package worker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/stem"
	pb "github.com/kilnfx/kiln/proto/executorpb"
	"github.com/kilnfx/kiln/runtimes/csharp"
)

// ProgramCommand returns the command line running program as the worker
// of runtime, or false when runtime's worker is not the function's own
// program. For csharp the program is handler.exe, the worker and the
// function compiled together by kiln deploy (runtimes/csharp.Build), run
// by mono.
func ProgramCommand(runtime, program string) ([]string, bool) {
	switch runtime {
	case csharp.Name:
		return []string{"mono", program}, true
	}
	return nil, false
}

// serveProgram serves cfg with a runtime whose worker is the function's
// own program (see ProgramCommand). It speaks the frame protocol as the
// other workers do, but nothing of the function's can run before its code
// is known: in stem mode the executor alone waits for Init, which starts
// the worker and loads it, so a stem cell saves the container's start and
// not the language's.
func serveProgram(ctx context.Context, cfg Config) error {
	dir, handler, function, env := cfg.CodeDir, cfg.Handler, cfg.Function, cfg.Env
	var p *Process
	startLoaded := func() error {
		argv, ok := ProgramCommand(cfg.Runtime, filepath.Join(dir, handler))
		if !ok {
			return fmt.Errorf("unknown runtime %q", cfg.Runtime)
		}
		var err error
		p, err = Start(ctx, argv, Options{Stdout: cfg.Stdout, Stderr: cfg.Stderr, Env: env, Dir: dir})
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrLoad, handler, err)
		}
		return p.Load(ctx, dir, handler, envMap(env, nil))
	}
	var err error
	if handler == "" {
		err = stem.Run(ctx, cfg.Socket, cfg.Runtime, func(init *pb.Init) error {
			dir, handler, function = init.CodePath, init.Handler, init.Function
			env = overlay(cfg.Env, init.Env)
			return startLoaded()
		})
	} else {
		err = startLoaded()
	}
	if p != nil {
		defer p.Close()
	}
	died := func(err error) error {
		if p == nil {
			return err
		}
		if perr := p.Err(); perr != nil && !errors.Is(perr, ErrClosed) {
			if st := p.ExitState(exitGrace); st != nil {
				fmt.Fprintf(stderrOf(cfg), "kiln-executor: worker %d exited: %v\n", p.Pid(), st)
			}
			return perr
		}
		return err
	}
	if err != nil {
		return died(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.Done():
			cancel() // ends the session at once: the agent replaces the container
		case <-ctx.Done():
		}
	}()
	err = sdk.RunWith(ctx, cfg.Socket, sdk.RunOptions{Function: function, Runtime: cfg.Runtime, Version: p.Version()}, callUntilDeath(ctx, p))
	return died(err)
}
