package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"

	"github.com/spf13/cobra"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func (c *cli) psCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ps NAME",
		Short: "List a function's containers",
		Long: `ps lists the containers of the function NAME, oldest first: their id,
state (creating, starting, ready, busy, frozen, thawing, specializing,
stopping), age, calls served and current memory use.`,
		Example: "  kiln ps hello",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			name := a[0]
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			cs, err := cl.Containers(cmd.Context(), name)
			if err != nil {
				return fmt.Errorf("ps %s: %w", name, c.agentError(cmd, err))
			}
			slices.SortStableFunc(cs, func(a, b *kilnv1.Container) int {
				return cmp.Or(a.GetCreated().AsTime().Compare(b.GetCreated().AsTime()), cmp.Compare(a.GetId(), b.GetId()))
			})
			now := c.clock()
			w := newTable(c.stdout)
			fmt.Fprintln(w, "ID\tSTATE\tAGE\tCALLS\tMEMORY")
			for _, ct := range cs {
				age, memory := "-", "-"
				if ct.GetCreated() != nil {
					age = fmtAge(now, ct.GetCreated().AsTime())
				}
				if m := ct.GetMemoryBytes(); m > 0 {
					memory = fmtBytes(m)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", ct.GetId(), orDash(ct.GetState()), age, ct.GetCalls(), memory)
			}
			return w.Flush()
		},
	}
}

func (c *cli) logsCmd() *cobra.Command {
	var (
		follow bool
		tail   int
	)
	cmd := &cobra.Command{
		Use:   "logs NAME [-f] [--tail N]",
		Short: "Print a function's output",
		Long: `logs prints the recent standard output and error of the function NAME's
containers, oldest first, as lines "TIME CONTAINER STREAM: TEXT". With -f
it then prints new lines as they come until interrupted (Ctrl-C, which exits
0) or the agent stops.`,
		Example: "  kiln logs hello --tail 20\n  kiln logs -f hello",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			name := a[0]
			if tail < 0 {
				return usageError{fmt.Errorf("--tail %d: want 0 (all) or more", tail)}
			}
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			body, err := cl.Logs(ctx, name, tail, follow)
			if err != nil {
				if ctx.Err() != nil {
					return nil // interrupted
				}
				return fmt.Errorf("logs %s: %w", name, c.agentError(cmd, err))
			}
			defer body.Close()
			// Without -f, and with -f when the agent stops, the body ends.
			if _, err := io.Copy(c.stdout, body); err != nil && ctx.Err() == nil {
				return fmt.Errorf("logs %s: %w", name, c.agentError(cmd, err))
			}
			return nil // done, or interrupted
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().IntVar(&tail, "tail", 100, "recent lines to print first (0: all the agent keeps)")
	return cmd
}
