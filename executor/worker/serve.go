package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/stem"
	pb "github.com/kilnfx/kiln/proto/executorpb"
	"github.com/kilnfx/kiln/runtimes/binary"
	"github.com/kilnfx/kiln/runtimes/java"
	"github.com/kilnfx/kiln/runtimes/node"
	"github.com/kilnfx/kiln/runtimes/python3"
	"github.com/kilnfx/kiln/runtimes/ruby"
)

// Environment variables of the generic executor, beside sdk.EnvSocket and
// sdk.EnvFunction.
const (
	EnvRuntime     = "KILN_RUNTIME"
	EnvCodeDir     = "KILN_CODE_DIR"
	EnvHandler     = "KILN_HANDLER"
	EnvConcurrency = "KILN_CONCURRENCY"
)

// Command returns the command line of runtime's worker, or false when the
// runtime has no long-lived worker. The bootstrap is passed on the command
// line, so nothing is written to the file system.
func Command(runtime string) ([]string, bool) {
	switch runtime {
	case python3.Name:
		// -u: logs unbuffered; -B: no bytecode written (a read-only root).
		return []string{"python3", "-u", "-B", "-c", string(python3.Worker)}, true
	case node.Name:
		return []string{"node", "-e", string(node.Worker)}, true
	case ruby.Name:
		// --disable-gems: rubygems is not loaded, so that the worker is
		// ready in about 15 ms instead of 60.
		return []string{"ruby", "--disable-gems", "-e", string(ruby.Worker)}, true
	case java.Name:
		return javaCommand(), true
	}
	return nil, false
}

// Config is what Serve needs.
type Config struct {
	// Runtime is python3, node, ruby or binary.
	Runtime string
	// Socket is the agent's socket; sdk.DefaultSocket when empty.
	Socket string
	// Function is the function's name; in stem mode Init gives it.
	Function string
	// CodeDir and Handler locate the handler; an empty Handler means stem
	// mode (Init gives both).
	CodeDir, Handler string
	// Env is the function's environment, KEY=value strings; the worker
	// runs with it.
	Env []string
	// Stdout and Stderr receive the function's logs (nil discards).
	Stdout, Stderr io.Writer
}

// ConfigFromEnv reads a Config from the executor's environment, KEY=value
// strings as os.Environ returns; the logs go to the process's stdout and
// stderr.
func ConfigFromEnv(environ []string) Config {
	get := func(key string) string {
		for i := len(environ) - 1; i >= 0; i-- {
			if v, ok := strings.CutPrefix(environ[i], key+"="); ok {
				return v
			}
		}
		return ""
	}
	return Config{
		Runtime:  get(EnvRuntime),
		Socket:   get(sdk.EnvSocket),
		Function: get(sdk.EnvFunction),
		CodeDir:  get(EnvCodeDir),
		Handler:  get(EnvHandler),
		Env:      environ,
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
	}
}

// Serve runs the executor of cfg until the agent ends the session (it
// returns nil) or ctx ends (nil too), or until it fails: the handler did
// not load, the worker died (the error wraps ErrExited and gives its exit
// status), or the agent could not be reached. The worker is killed before
// Serve returns.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Socket == "" {
		cfg.Socket = sdk.DefaultSocket
	}
	if cfg.Runtime == binary.Name {
		return serveFork(ctx, cfg)
	}
	if _, ok := ProgramCommand(cfg.Runtime, cfg.Handler); ok {
		return serveProgram(ctx, cfg)
	}
	argv, ok := Command(cfg.Runtime)
	if !ok {
		return fmt.Errorf("unknown runtime %q", cfg.Runtime)
	}
	env := cfg.Env
	if cfg.Runtime == node.Name && !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "NODE_EXTRA_CA_CERTS=") }) {
		// Debian's node reads the system's CA bundle at every start and
		// warns on stderr when it is missing, as it is in the runtime's
		// root filesystem (ca-certificates is not in it).
		env = append(slices.Clip(env), "NODE_EXTRA_CA_CERTS=")
	}
	if cfg.Runtime == java.Name {
		var cleanup func()
		var err error
		if argv, env, cleanup, err = prepareJava(cfg, argv, env); err != nil {
			return err
		}
		defer cleanup()
	}
	p, err := Start(ctx, argv, Options{Stdout: cfg.Stdout, Stderr: cfg.Stderr, Env: env, Dir: cfg.CodeDir})
	if err != nil {
		return err
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	died := supervise(ctx, cancel, cfg, p)

	function := cfg.Function
	if cfg.Handler == "" {
		err = stem.Run(ctx, cfg.Socket, cfg.Runtime, func(init *pb.Init) error {
			function = init.Function
			return p.Load(ctx, init.CodePath, init.Handler, envMap(cfg.Env, init.Env))
		})
	} else {
		err = p.Load(ctx, cfg.CodeDir, cfg.Handler, envMap(cfg.Env, nil))
	}
	if err != nil {
		return died(err)
	}
	err = sdk.RunWith(ctx, cfg.Socket, sdk.RunOptions{Function: function, Runtime: cfg.Runtime, Version: p.Version()}, callUntilDeath(ctx, p))
	return died(err)
}

// callUntilDeath returns p.Call, except that a call failed by the
// worker's death returns only once the call's own context is done. Its
// ancestor session, the context of the session with the agent, is
// cancelled as soon as the worker is dead (see supervise), and the SDK
// sends no result once its session's context is done. Waiting for the
// call's context, not session's, matters: a context's children are
// cancelled after its own Done channel closes, so only once the call's
// context is done is the SDK's (between the two) sure to be. The agent
// then answers the call as the container's failure (502), not as the
// function's error (500), whatever the order in which the call and the
// session notice the death.
func callUntilDeath(session context.Context, p *Process) sdk.Handler {
	return func(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
		resp, err := p.Call(ctx, req)
		if err != nil && p.Err() != nil {
			select {
			case <-ctx.Done():
			case <-session.Done():
				<-ctx.Done() // session's cancellation reaches ctx next
			}
		}
		return resp, err
	}
}

// supervise cancels ctx (with cancel) when p dies, which ends the session
// at once so that the agent replaces the container, and returns died: the
// error to return instead of err, which is p's death when p died (its exit
// status then printed on cfg's stderr).
func supervise(ctx context.Context, cancel context.CancelFunc, cfg Config, p *Process) (died func(err error) error) {
	go func() {
		select {
		case <-p.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	return func(err error) error {
		if perr := p.Err(); perr != nil && !errors.Is(perr, ErrClosed) {
			if st := p.ExitState(exitGrace); st != nil {
				fmt.Fprintf(stderrOf(cfg), "kiln-executor: worker %d exited: %v\n", p.Pid(), st)
			}
			return perr
		}
		return err
	}
}

// serveFork serves cfg with the binary runtime.
func serveFork(ctx context.Context, cfg Config) error {
	dir, handler, function, env := cfg.CodeDir, cfg.Handler, cfg.Function, cfg.Env
	if handler == "" {
		err := stem.Run(ctx, cfg.Socket, cfg.Runtime, func(init *pb.Init) error {
			dir, handler, function = init.CodePath, init.Handler, init.Function
			env = overlay(cfg.Env, init.Env)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if handler == "" {
		return errors.New("no handler to run")
	}
	f := NewFork(dir, handler, env, stderrOf(cfg))
	if _, err := os.Stat(f.program); err != nil {
		return fmt.Errorf("%w: %v", ErrLoad, err)
	}
	return sdk.RunWith(ctx, cfg.Socket, sdk.RunOptions{Function: function, Runtime: cfg.Runtime, Version: "fork"}, f.Call)
}

func stderrOf(cfg Config) io.Writer {
	if cfg.Stderr == nil {
		return io.Discard
	}
	return cfg.Stderr
}

// envMap returns environ (KEY=value strings) overlaid with extra, as a map.
func envMap(environ []string, extra map[string]string) map[string]string {
	m := make(map[string]string, len(environ)+len(extra))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// overlay returns environ (KEY=value strings) overlaid with extra.
func overlay(environ []string, extra map[string]string) []string {
	out := make([]string, 0, len(environ)+len(extra))
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := extra[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range extra {
		out = append(out, k+"="+v)
	}
	return out
}
