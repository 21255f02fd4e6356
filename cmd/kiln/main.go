// Command kiln is kiln's command line: it creates Go functions from a
// template, builds and deploys them, calls them, lists and removes them,
// talking to the kiln agent's HTTP API.
//
//	kiln init --runtime go hello     # a function in ./hello
//	kiln deploy hello                # build it and deploy it
//	echo world | kiln invoke hello   # Hello, world
//	kiln list
//	kiln rm hello
//
// The agent is found at --agent, else $KILN_AGENT, else
// http://127.0.0.1:8080. kiln exits 1 on any error, with the message on
// stderr.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kilnfx/kiln/api/client"
)

const (
	// defaultAgent is the agent's URL when neither --agent nor KILN_AGENT
	// is set.
	defaultAgent = "http://127.0.0.1:8080"
	// envAgent names the environment variable holding the agent's URL.
	envAgent = "KILN_AGENT"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// cli is the command line's environment, replaced in tests.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string

	// agent is the --agent flag.
	agent string
}

// usageError is a mistake in the command line (as opposed to a failure
// running it); run adds a pointer to --help.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// errReported is returned by a command that already wrote its errors to
// stderr and only needs the exit status to say so.
var errReported = errors.New("failed")

// run executes the command line args and returns the process's exit code.
func run(ctx context.Context, args []string, c *cli) (code int) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(c.stderr, "kiln: internal error (please report it): %v\n%s", p, debug.Stack())
			code = 1
		}
	}()
	root := c.rootCmd()
	root.SetArgs(args)
	root.SetIn(c.stdin)
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if !errors.Is(err, errReported) {
		fmt.Fprintf(c.stderr, "kiln: %v\n", err)
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(c.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return 1
}

func (c *cli) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "kiln",
		Short: "Build, deploy and call kiln functions",
		Long: `kiln creates Go functions from a template, builds and deploys them to a
kiln agent, calls them, lists them and removes them.

The agent is found at --agent, else $KILN_AGENT, else ` + defaultAgent + `.`,
		// Runnable only to reject unknown commands as usage errors.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q", args[0])
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
			}
			return usageError{errors.New(msg)}
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmd.Help()
		},
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{err}
	})
	root.PersistentFlags().StringVar(&c.agent, "agent", defaultAgent, "URL of the kiln agent (overrides $"+envAgent+")")
	root.AddCommand(
		c.initCmd(),
		c.deployCmd(),
		c.invokeCmd(),
		c.listCmd(),
		c.rmCmd(),
	)
	return root
}

// args wraps a cobra argument check so that its errors are usage errors.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// agentURL is the agent's URL: --agent when given, else $KILN_AGENT, else
// the default.
func (c *cli) agentURL(cmd *cobra.Command) string {
	if f := cmd.Flag("agent"); f != nil && f.Changed {
		return c.agent
	}
	if v := c.getenv(envAgent); v != "" {
		return v
	}
	return c.agent
}

// client returns a client of the agent.
func (c *cli) client(cmd *cobra.Command) (*client.Client, error) {
	u := c.agentURL(cmd)
	cl, err := client.New(u, client.WithUserAgent("kiln-cli"))
	if err != nil {
		return nil, usageError{fmt.Errorf("--agent or $%s: %w", envAgent, err)}
	}
	return cl, nil
}

// agentError makes a transport error say which agent could not be reached.
func (c *cli) agentError(cmd *cobra.Command, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("cannot reach the kiln agent at %s (see --agent and $%s): %w", c.agentURL(cmd), envAgent, ue.Err)
	}
	return err
}
