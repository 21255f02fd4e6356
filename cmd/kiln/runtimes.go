package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func (c *cli) runtimeCmd() *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "runtime",
		Short: "Build, list and remove the runtimes' root filesystems",
		Long: `runtime manages the root filesystems the agent builds from Debian packages
for the runtimes other than go (` + strings.Join(runtimeNames()[1:], ", ") + `). The first deploy of a
runtime builds it too; building it ahead spares that deploy the wait.`,
	})
	cmd.AddCommand(c.runtimeBuildCmd(), c.runtimeListCmd(), c.runtimeRmCmd())
	return cmd
}

func (c *cli) runtimeBuildCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "build NAME",
		Short:   "Build a runtime's root filesystem unless it is built",
		Example: "  kiln runtime build python3",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			rt, err := cl.BuildRuntime(cmd.Context(), a[0], func(ev *kilnv1.RuntimeBuildEvent) {
				fmt.Fprintf(c.stderr, "%-12s %s\n", ev.GetStage(), ev.GetElapsed().AsDuration().Round(100*time.Millisecond))
			})
			if err != nil {
				return fmt.Errorf("runtime build %s: %w", a[0], c.agentError(cmd, err))
			}
			fmt.Fprintf(c.stdout, "Built %s (recipe %s): %s in %s\n", rt.Name, rt.RecipeHash, fmtBytes(rt.SizeBytes), rt.BuildTime.AsDuration().Round(100*time.Millisecond))
			return nil
		},
	}
}

func (c *cli) runtimeListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the built runtimes",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			list, err := cl.Runtimes(cmd.Context())
			if err != nil {
				return fmt.Errorf("runtime list: %w", c.agentError(cmd, err))
			}
			w := newTable(c.stdout)
			fmt.Fprintln(w, "NAME\tRECIPE\tSIZE\tBUILT\tBUILD TIME\tPACKAGES")
			for _, r := range list {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.RecipeHash, fmtBytes(r.SizeBytes), fmtTimestamp(r.Built),
					r.BuildTime.AsDuration().Round(100*time.Millisecond), strings.Join(r.Packages, ","))
			}
			return w.Flush()
		},
	}
}

func (c *cli) runtimeRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a runtime's root filesystems that no function uses",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			if err := cl.RemoveRuntime(cmd.Context(), a[0]); err != nil {
				return fmt.Errorf("runtime rm %s: %w", a[0], c.agentError(cmd, err))
			}
			fmt.Fprintf(c.stdout, "Removed %s\n", a[0])
			return nil
		},
	}
}
