// Command kiln is kiln's command line: it creates Go functions from a
// template, builds and deploys them, calls them, lists and removes them,
// shows their containers and logs, reports usage and single calls, and
// manages tenant API keys, talking to the kiln agent's HTTP API.
//
//	kiln init --runtime go hello     # a function in ./hello
//	kiln deploy hello                # build it and deploy it
//	echo world | kiln invoke hello   # Hello, world
//	kiln list
//	kiln ps hello                    # its containers
//	kiln logs -f hello               # its output, as it comes
//	kiln usage --from 24h --group-by function
//	kiln calls --function hello --limit 20
//	kiln keys create --tenant acme
//	kiln rm hello
//
// The agent is found at --agent, else $KILN_AGENT, else
// http://127.0.0.1:8080. Requests carry a bearer token from --token, else
// $KILN_TOKEN, else the agent's admin token file --data-dir/admin.token
// (/var/lib/kiln/admin.token), if readable. kiln exits 1 on any error, with
// the message on stderr.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
)

const (
	// defaultAgent is the agent's URL when neither --agent nor KILN_AGENT
	// is set.
	defaultAgent = "http://127.0.0.1:8080"
	// envAgent names the environment variable holding the agent's URL.
	envAgent = "KILN_AGENT"
	// envToken names the environment variable holding the bearer token.
	envToken = "KILN_TOKEN"
	// defaultDataDir is the agent's data directory when --data-dir is not
	// given (kilnd's default).
	defaultDataDir = "/var/lib/kiln"
	// adminTokenFile is the name, in the data directory, of the agent's
	// admin token (agent.AdminTokenFile).
	adminTokenFile = "admin.token"
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
	// now is the clock of relative times and ages; nil is time.Now.
	now func() time.Time

	// agent, token and dataDir are the flags --agent, --token and
	// --data-dir.
	agent, token, dataDir string
}

// clock returns the current time.
func (c *cli) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
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
kiln agent, calls them, lists them and removes them; it shows their
containers and logs, reports usage and single calls, and manages tenants'
API keys.

The agent is found at --agent, else $KILN_AGENT, else the agent whose data
directory --data-dir (or $KILN_DATA_DIR) names, else ` + defaultAgent + `. Requests carry the
bearer token --token, else $KILN_TOKEN, else that agent's admin token, read
from its data directory (--data-dir, default ` + defaultDataDir + `, readable by
root) when the directory belongs to the agent called: the management API
needs the admin token, and a tenant's API key may read that tenant's usage
and calls.`,
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{err}
	})
	groupCmd(root)
	root.PersistentFlags().StringVar(&c.agent, "agent", defaultAgent, "URL of the kiln agent (overrides $"+envAgent+")")
	root.PersistentFlags().StringVar(&c.token, "token", "", "bearer token: the admin token or a tenant's API key (overrides $"+envToken+" and the admin token file)")
	root.PersistentFlags().StringVar(&c.dataDir, "data-dir", defaultDataDir, "the agent's data directory: its admin token file "+adminTokenFile+" is read, and its agent is called when --agent is not given")
	root.AddCommand(
		c.initCmd(),
		c.deployCmd(),
		c.invokeCmd(),
		c.listCmd(),
		c.rmCmd(),
		c.psCmd(),
		c.logsCmd(),
		c.usageCmd(),
		c.callsCmd(),
		c.keysCmd(),
		c.runtimeCmd(),
		c.imageCmd(),
	)
	return root
}

// groupCmd makes cmd a command that only groups subcommands: alone it
// prints its help, and an unknown subcommand is a usage error.
func groupCmd(cmd *cobra.Command) *cobra.Command {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	// Runnable only to reject unknown commands as usage errors.
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q", args[0])
		if cmd.HasParent() {
			msg += " for " + cmd.CommandPath()
		}
		if s := closest(args[0], cmd.SuggestionsFor(args[0])); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
		}
		return usageError{errors.New(msg)}
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return cmd.Help()
	}
	return cmd
}

// closest keeps the suggestions for typed that start with it, or else those
// nearest to it in edit distance, so that "lst" suggests list but not ps.
func closest(typed string, suggestions []string) []string {
	best, out := -1, []string(nil)
	for _, s := range suggestions {
		d := editDistance(strings.ToLower(typed), strings.ToLower(s))
		if strings.HasPrefix(strings.ToLower(s), strings.ToLower(typed)) {
			d = 0
		}
		switch {
		case best < 0 || d < best:
			best, out = d, []string{s}
		case d == best:
			out = append(out, s)
		}
	}
	return out
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
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
// the agent that an explicit --data-dir belongs to (its agent.json), else
// the default.
func (c *cli) agentURL(cmd *cobra.Command) string {
	if f := cmd.Flag("agent"); f != nil && f.Changed {
		return c.agent
	}
	if v := c.getenv(envAgent); v != "" {
		return v
	}
	if dir, ok := c.explicitDataDir(cmd); ok {
		if ai, err := readAgentInfo(dir); err == nil && ai.HTTP != "" {
			return ai.HTTP
		}
	}
	return c.agent
}

// tokenSource is where a bearer token came from.
type tokenSource struct {
	token string
	// from says where the token came from, or why there is none.
	from string
	// fileErr is why the admin token file could not be read, when that
	// was not for its absence.
	fileErr error
}

// resolveToken finds the bearer token: --token when given (even empty,
// which sends none), else $KILN_TOKEN, else the admin token file of the
// agent the CLI talks to (see tokenFileFor). A missing or unreadable file
// means no token.
func (c *cli) resolveToken(cmd *cobra.Command) tokenSource {
	if f := cmd.Flag("token"); f != nil && f.Changed {
		return tokenSource{token: c.token, from: "--token"}
	}
	if v := c.getenv(envToken); v != "" {
		return tokenSource{token: v, from: "$" + envToken}
	}
	path, why := c.tokenFileFor(cmd, c.agentURL(cmd))
	if path == "" {
		return tokenSource{from: why, fileErr: errors.New(why)}
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return tokenSource{from: path}
	case err != nil:
		return tokenSource{from: path, fileErr: err}
	}
	return tokenSource{token: strings.TrimSpace(string(b)), from: path}
}

// client returns a client of the agent, sending the bearer token of
// resolveToken.
func (c *cli) client(cmd *cobra.Command) (*client.Client, error) {
	u := c.agentURL(cmd)
	cl, err := client.New(u, client.WithUserAgent("kiln-cli"), client.WithToken(c.resolveToken(cmd).token))
	if err != nil {
		return nil, usageError{fmt.Errorf("--agent or $%s: %w", envAgent, err)}
	}
	return cl, nil
}

// agentError makes a transport error say which agent could not be reached,
// and a refused or missing token say where the token came from.
func (c *cli) agentError(cmd *cobra.Command, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("cannot reach the kiln agent at %s (see --agent and $%s): %w", c.agentURL(cmd), envAgent, ue.Err)
	}
	var ae *client.APIError
	if errors.As(err, &ae) && (ae.Class == wire.ClassUnauthenticated || ae.Status == http.StatusUnauthorized) {
		ts := c.resolveToken(cmd)
		switch {
		case ts.token != "":
			return fmt.Errorf("%w; the token sent came from %s", err, ts.from)
		case ts.fileErr != nil:
			return fmt.Errorf("%w; no token was sent: %v (give this agent's token with --token or $%s, or its data directory with --data-dir)", err, ts.fileErr, envToken)
		default:
			return fmt.Errorf("%w; no token was sent: %s does not exist (give this agent's token with --token or $%s, or its data directory with --data-dir; root can read the token there)", err, ts.from, envToken)
		}
	}
	return err
}
