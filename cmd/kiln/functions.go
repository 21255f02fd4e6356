package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnfx/kiln/agent/bundle"
	"github.com/kilnfx/kiln/api/client"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	"github.com/kilnfx/kiln/runtimes"
	"github.com/kilnfx/kiln/runtimes/cpp"
	"github.com/kilnfx/kiln/runtimes/csharp"
	goruntime "github.com/kilnfx/kiln/runtimes/go"
	"github.com/kilnfx/kiln/runtimes/java"
)

// runtimeNames lists every runtime kiln init and kiln deploy know.
func runtimeNames() []string {
	return append([]string{goruntime.Runtime}, runtimes.Names()...)
}

func (c *cli) initCmd() *cobra.Command {
	var runtime, dir string
	var list bool
	cmd := &cobra.Command{
		Use:   "init [--runtime R] [--dir DIR] NAME | init --list",
		Short: "Create a function from a template",
		Long: `init writes a new function called NAME into the directory NAME (or --dir),
which must not exist or be empty, from the template of runtime R (default go).
--list names the runtimes.`,
		Example: "  kiln init --runtime go hello\n  kiln init --runtime python3 hello-py\n  kiln init --list",
		Args: func(cmd *cobra.Command, a []string) error {
			if list {
				return args(cobra.NoArgs)(cmd, a)
			}
			return args(cobra.ExactArgs(1))(cmd, a)
		},
		RunE: func(cmd *cobra.Command, a []string) error {
			if list {
				for _, r := range runtimeNames() {
					fmt.Fprintln(c.stdout, r)
				}
				return nil
			}
			name := a[0]
			rt := runtimes.Get(runtime)
			if runtime != goruntime.Runtime && rt == nil {
				return usageError{fmt.Errorf("unknown runtime %q (available: %s)", runtime, strings.Join(runtimeNames(), ", "))}
			}
			if err := goruntime.ValidateName(name); err != nil {
				return usageError{err}
			}
			if dir == "" {
				dir = name
			}
			var err error
			if rt == nil {
				err = goruntime.Init(dir, name)
			} else {
				err = goruntime.WriteTemplate(dir, name, rt.Template)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "Created the %s function %s in %s\n\n  cd %s\n  kiln deploy\n  kiln invoke %s -d world\n",
				runtime, name, dir, dir, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&runtime, "runtime", goruntime.Runtime, "language runtime of the function ("+strings.Join(runtimeNames(), ", ")+")")
	cmd.Flags().StringVar(&dir, "dir", "", "directory to create (default NAME)")
	cmd.Flags().BoolVar(&list, "list", false, "name the runtimes and exit")
	return cmd
}

func (c *cli) deployCmd() *cobra.Command {
	var image string
	cmd := &cobra.Command{
		Use:   "deploy [DIR] | deploy --image REF [NAME | DIR]",
		Short: "Build the function in DIR (default .) and deploy it",
		Long: `deploy reads DIR/kiln.yaml and sends the function's code and settings to
the agent, which may be on another machine. A Go function is built into one
static binary (DIR/.kiln/build/handler; this needs the go command) and that
binary is its code; so is a C++ function (DIR/handler.cpp compiled with
g++ -static and kiln's SDK; this needs g++), and a Java function's
classes (its .java files compiled with kiln's worker; this needs javac).
A csharp function is compiled with mcs (mono-mcs) into one
program, DIR/.kiln/build/handler.exe, its code. For the other runtimes the
code is the directory itself,
without version control and editor files (.git, .kiln, __pycache__, ...);
a node function with a package.json gets its dependencies installed first
(npm install --omit=dev; this needs npm). The packed code must stay under
64 MiB. The first deploy of a runtime builds its root filesystem on the
agent, which takes a minute or so.

With --image, the function runs the image REF imported into the agent
(kiln image import) instead of code: NAME names it, or the settings of
DIR/kiln.yaml (default .) are used without its code.`,
		Example: "  kiln deploy\n  kiln deploy --image example.com/hello:1 hello",
		Args:    args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			dir := "."
			if len(a) == 1 {
				dir = a[0]
			}
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			if image != "" {
				return c.deployImage(cmd, cl, image, dir)
			}
			cfgPath := filepath.Join(dir, goruntime.ConfigFile)
			cfg, err := goruntime.LoadConfig(cfgPath)
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s: no %s here (kiln init creates a function)", dir, goruntime.ConfigFile)
			}
			if err != nil {
				return err
			}
			archive, err := c.packCode(cmd, dir, cfg)
			if err != nil {
				return err
			}
			spec, err := cfg.Spec(archive)
			if err != nil {
				return fmt.Errorf("%s: %w", cfgPath, err)
			}
			fn, err := cl.Deploy(cmd.Context(), cfg.Name, spec)
			if err != nil {
				return fmt.Errorf("deploy %s: %w", cfg.Name, c.agentError(cmd, err))
			}
			fmt.Fprintf(c.stdout, "Deployed %s revision %s\n", fn.GetName(), fn.GetRevision())
			return nil
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "deploy the imported image `REF` instead of code")
	return cmd
}

// deployImage deploys the image ref as the function arg names, or with
// the settings of arg/kiln.yaml when arg is a directory holding one.
func (c *cli) deployImage(cmd *cobra.Command, cl *client.Client, ref, arg string) error {
	cfgPath := filepath.Join(arg, goruntime.ConfigFile)
	cfg, err := goruntime.LoadConfig(cfgPath)
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		if arg == "." {
			return usageError{fmt.Errorf("deploy --image %s: name the function (or run it where a %s is)", ref, goruntime.ConfigFile)}
		}
		cfg = goruntime.Config{Name: arg}
	case err != nil:
		return err
	}
	spec, err := cfg.ImageSpec(ref)
	if err != nil {
		return usageError{fmt.Errorf("deploy --image %s: %w", ref, err)}
	}
	fn, err := cl.Deploy(cmd.Context(), cfg.Name, spec)
	if err != nil {
		return fmt.Errorf("deploy %s: %w", cfg.Name, c.agentError(cmd, err))
	}
	fmt.Fprintf(c.stdout, "Deployed %s (image %s) revision %s\n", fn.GetName(), fn.GetSpec().GetImage(), fn.GetRevision())
	return nil
}

func (c *cli) invokeCmd() *cobra.Command {
	var (
		data    string
		headers []string
	)
	cmd := &cobra.Command{
		Use:   "invoke NAME [-d DATA] [-H KEY:VALUE]...",
		Short: "Call a function and print its answer",
		Long: `invoke calls the function NAME with DATA as the body, or with standard
input when -d is not given (and it is not a terminal), and writes the
function's answer body to standard output. It exits 1 when the function
failed, answered with a status of 400 or more, or kiln could not call it.`,
		Example: "  kiln invoke hello -d world\n  echo world | kiln invoke hello -H Content-Type:text/plain",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			name := a[0]
			header, err := parseHeaders(headers)
			if err != nil {
				return usageError{err}
			}
			invoke, err := c.invoker(cmd)
			if err != nil {
				return err
			}
			var body []byte
			if cmd.Flags().Changed("data") {
				body = []byte(data)
			} else if !isTerminal(c.stdin) {
				if body, err = io.ReadAll(c.stdin); err != nil {
					return fmt.Errorf("reading standard input: %w", err)
				}
			}
			res, err := invoke(cmd.Context(), name, body, header)
			if err != nil {
				return fmt.Errorf("invoke %s: %w", name, err)
			}
			if _, err := c.stdout.Write(res.Body); err != nil {
				return err
			}
			switch {
			case res.FunctionError:
				return fmt.Errorf("invoke %s: the function failed (HTTP %d)", name, res.Status)
			case res.Status >= 400:
				return fmt.Errorf("invoke %s: the function answered HTTP %d %s", name, res.Status, http.StatusText(res.Status))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&data, "data", "d", "", "request body (default: standard input)")
	cmd.Flags().StringArrayVarP(&headers, "header", "H", nil, "request header KEY:VALUE (repeatable)")
	addGRPCFlags(cmd)
	return cmd
}

// parseHeaders parses KEY:VALUE flags.
func parseHeaders(flags []string) (http.Header, error) {
	h := make(http.Header, len(flags))
	for _, f := range flags {
		k, v, ok := strings.Cut(f, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\r\n") || strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("-H %q: want KEY:VALUE", f)
		}
		h.Add(k, strings.TrimSpace(v))
	}
	return h, nil
}

// isTerminal reports whether r is a terminal, so that invoke does not wait
// for a body nobody is typing.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (c *cli) listCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the deployed functions",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			fns, err := cl.List(cmd.Context())
			if err != nil {
				return fmt.Errorf("list: %w", c.agentError(cmd, err))
			}
			slices.SortFunc(fns, func(a, b *kilnv1.Function) int { return strings.Compare(a.GetName(), b.GetName()) })
			w := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tRUNTIME\tREVISION\tMEMORY\tTIMEOUT\tUPDATED")
			for _, fn := range fns {
				spec := fn.GetSpec()
				memory, timeout, updated := "-", "-", "-"
				if m := spec.GetMemoryMb(); m > 0 {
					memory = fmt.Sprintf("%dMiB", m)
				}
				if spec.GetTimeout() != nil {
					timeout = spec.GetTimeout().AsDuration().String()
				}
				if fn.GetUpdated() != nil {
					updated = fn.GetUpdated().AsTime().UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", fn.GetName(), orDash(spec.GetRuntime()), orDash(fn.GetRevision()), memory, timeout, updated)
			}
			return w.Flush()
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *cli) rmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove deployed functions",
		Args:    args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, names []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			out := bufio.NewWriter(c.stdout)
			defer out.Flush()
			failed := false
			for _, name := range names {
				if err := cl.Delete(cmd.Context(), name); err != nil {
					out.Flush()
					fmt.Fprintf(c.stderr, "kiln: rm %s: %v\n", name, c.agentError(cmd, err))
					failed = true
					continue
				}
				fmt.Fprintln(out, name)
			}
			if failed {
				return errReported
			}
			return nil
		},
	}
}

// packCode builds the function of cfg in dir where its runtime needs it and
// returns its code archive.
func (c *cli) packCode(cmd *cobra.Command, dir string, cfg goruntime.Config) ([]byte, error) {
	limit := bundle.DefaultLimits.ArchiveBytes
	switch cfg.Runtime {
	case "", goruntime.Runtime:
		fmt.Fprintf(c.stderr, "Building %s...\n", cfg.Name)
		bin, err := goruntime.Build(cmd.Context(), dir)
		if err != nil {
			return nil, err
		}
		return bundle.PackBytes("", map[string]string{"handler": bin}, limit)
	case cpp.Name:
		fmt.Fprintf(c.stderr, "Building %s (%s)...\n", cfg.Name, cpp.Compiler)
		bin, err := cpp.Build(cmd.Context(), dir)
		if err != nil {
			return nil, err
		}
		return bundle.PackBytes("", map[string]string{cpp.Handler: bin}, limit)
	case java.Name:
		fmt.Fprintf(c.stderr, "Building %s (%s)...\n", cfg.Name, java.Compiler)
		classes, err := java.Build(cmd.Context(), dir)
		if err != nil {
			return nil, err
		}
		return bundle.PackBytes(classes, nil, limit)
	case csharp.Name:
		if cfg.Handler != "" && cfg.Handler != csharp.Handler {
			return nil, fmt.Errorf("handler: the csharp runtime's handler is the program kiln deploy builds (%s); leave it out", csharp.Handler)
		}
		fmt.Fprintf(c.stderr, "Compiling %s (mcs)...\n", cfg.Name)
		program, err := csharp.Build(cmd.Context(), dir)
		if err != nil {
			return nil, err
		}
		return bundle.PackBytes("", map[string]string{csharp.Handler: program}, limit)
	case "node":
		if _, err := os.Stat(filepath.Join(dir, "package.json")); err == nil {
			fmt.Fprintf(c.stderr, "Installing the dependencies of %s (npm install --omit=dev)...\n", cfg.Name)
			npm := exec.CommandContext(cmd.Context(), "npm", "install", "--omit=dev", "--no-audit", "--no-fund")
			npm.Dir = dir
			npm.Stdout = c.stderr
			npm.Stderr = c.stderr
			if err := npm.Run(); err != nil {
				return nil, fmt.Errorf("npm install in %s: %w", dir, err)
			}
		}
	}
	fmt.Fprintf(c.stderr, "Packing %s...\n", dir)
	return bundle.PackBytes(dir, nil, limit)
}
