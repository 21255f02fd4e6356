package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// timeFlagHelp says what --from, --to and --since accept.
const timeFlagHelp = `Times are RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02, UTC
midnight), unix seconds, "now", or a duration before now: 30m, 1h, 1h30m, 7d.`

// groupings are the values of usage's --group-by.
var groupings = []string{wire.GroupByFunction, wire.GroupByTenant, wire.GroupByMinute, wire.GroupByHour, wire.GroupByDay}

func (c *cli) usageCmd() *cobra.Command {
	var from, to, function, tenant, groupBy string
	cmd := &cobra.Command{
		Use:   "usage [--from T] [--to T] [--function F] [--tenant T] [--group-by G] [-o table|json|csv]",
		Short: "Report usage: calls, run time, GB-seconds, CPU-seconds, bytes",
		Long: `usage reports the calls the agent metered, selected by time range
[--from, --to), function and tenant, in one row or grouped by function,
tenant, minute, hour or day (UTC). Reports have a resolution of one minute.

The table shows calls by status class and start kind, the run time's
estimated p50 and p99, GB-seconds, CPU-seconds and body bytes; -o json and
-o csv give every column exactly (csv as the agent writes it).

` + timeFlagHelp + `

With a tenant's API key as the token, only that tenant's usage is reported.`,
		Example: "  kiln usage --from 24h --group-by function\n  kiln usage --from 2026-01-01 --to 2026-02-01 --tenant acme -o csv > jan.csv",
		Args:    args(cobra.NoArgs),
	}
	output := addOutputFlag(cmd, outTable, outJSON, outCSV)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*output, outTable, outJSON, outCSV); err != nil {
			return err
		}
		if groupBy != "" && !slices.Contains(groupings, groupBy) {
			return usageError{fmt.Errorf("--group-by %q: want %s", groupBy, orList(groupings))}
		}
		now := c.clock()
		q := client.UsageQuery{Function: function, Tenant: tenant, GroupBy: groupBy}
		var err error
		if q.From, err = parseTimeFlag("from", from, now); err != nil {
			return err
		}
		if q.To, err = parseTimeFlag("to", to, now); err != nil {
			return err
		}
		if !q.From.IsZero() && !q.To.IsZero() && q.From.After(q.To) {
			return usageError{fmt.Errorf("--from %s is after --to %s", fmtTime(q.From), fmtTime(q.To))}
		}
		cl, err := c.client(cmd)
		if err != nil {
			return err
		}
		if *output == outCSV {
			b, err := cl.UsageCSV(cmd.Context(), q)
			if err != nil {
				return fmt.Errorf("usage: %w", c.agentError(cmd, err))
			}
			_, err = c.stdout.Write(b)
			return err
		}
		rep, err := cl.Usage(cmd.Context(), q)
		if err != nil {
			return fmt.Errorf("usage: %w", c.agentError(cmd, err))
		}
		if *output == outJSON {
			return writeJSON(c.stdout, rep)
		}
		return writeUsageTable(c, groupBy, rep)
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "start of the range, included (default: the first call)")
	f.StringVar(&to, "to", "", "end of the range, excluded (default: none)")
	f.StringVar(&function, "function", "", "only this function")
	f.StringVar(&tenant, "tenant", "", "only this tenant")
	f.StringVar(&groupBy, "group-by", "", "one row per "+orList(groupings)+" (default: one row)")
	return cmd
}

// writeUsageTable writes a usage report as a table.
func writeUsageTable(c *cli, groupBy string, rep *kilnv1.ReportResponse) error {
	w := newTable(c.stdout)
	group := "GROUP"
	switch groupBy {
	case wire.GroupByFunction:
		group = "FUNCTION"
	case wire.GroupByTenant:
		group = "TENANT"
	case wire.GroupByMinute, wire.GroupByHour, wire.GroupByDay:
		group = "TIME"
	}
	fmt.Fprintln(w, group+"\tCOUNT\t2XX\t4XX\t5XX\tWARM\tTHAWED\tSTEM\tCOLD\tRUN P50\tRUN P99\tGB-S\tCPU-S\tBYTES IN\tBYTES OUT")
	for _, r := range rep.Rows {
		name := r.Group
		switch {
		case groupBy == wire.GroupByNone:
			name = "all"
		case r.Time != nil:
			name = fmtTimestamp(r.Time)
		case name == "":
			name = "-"
		}
		i := func(n int64) string { return strconv.FormatInt(n, 10) }
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			name, i(r.Count), i(r.ByStatus[wire.Status2xx]), i(r.ByStatus[wire.Status4xx]), i(r.ByStatus[wire.Status5xx]),
			i(r.ByStart[wire.StartWarm]), i(r.ByStart[wire.StartThawed]), i(r.ByStart[wire.StartStem]), i(r.ByStart[wire.StartCold]),
			fmtMs(r.RunP50Ms), fmtMs(r.RunP99Ms), fmtFloat(r.GbSeconds), fmtFloat(r.CpuSeconds),
			fmtBytes(r.BytesIn), fmtBytes(r.BytesOut))
	}
	return w.Flush()
}

func (c *cli) callsCmd() *cobra.Command {
	var function, tenant, since string
	var limit int
	cmd := &cobra.Command{
		Use:   "calls [ID] [--function F] [--tenant T] [--since T] [--limit N] [-o table|json]",
		Short: "Show the usage records of single calls",
		Long: `calls lists the usage records of recent calls, newest first, or with ID
(an X-Kiln-Call-Id) shows that one call's record as "field: value" lines.

` + timeFlagHelp + `

With a tenant's API key as the token, only that tenant's calls are shown.`,
		Example: "  kiln calls --function hello --since 1h --limit 20\n  kiln calls 0197a3c2-5b1e-7c3d-9f00-1a2b3c4d5e6f -o json",
		Args:    args(cobra.MaximumNArgs(1)),
	}
	output := addOutputFlag(cmd, outTable, outJSON)
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		if err := checkOutput(*output, outTable, outJSON); err != nil {
			return err
		}
		if len(a) == 1 {
			for _, f := range []string{"function", "tenant", "since", "limit"} {
				if cmd.Flags().Changed(f) {
					return usageError{fmt.Errorf("--%s selects calls to list: not with a call ID", f)}
				}
			}
			return c.showCall(cmd, a[0], *output)
		}
		if limit < 1 || limit > wire.MaxCallLimit {
			return usageError{fmt.Errorf("--limit %d: want 1..%d", limit, wire.MaxCallLimit)}
		}
		q := client.CallQuery{Function: function, Tenant: tenant, Limit: limit}
		var err error
		if q.Since, err = parseTimeFlag("since", since, c.clock()); err != nil {
			return err
		}
		cl, err := c.client(cmd)
		if err != nil {
			return err
		}
		calls, err := cl.ListCalls(cmd.Context(), q)
		if err != nil {
			return fmt.Errorf("calls: %w", c.agentError(cmd, err))
		}
		if *output == outJSON {
			return writeJSON(c.stdout, &kilnv1.CallList{Calls: calls})
		}
		w := newTable(c.stdout)
		fmt.Fprintln(w, "CALL ID\tRECEIVED\tFUNCTION\tTENANT\tSTATUS\tSTART\tRUN\tTOTAL\tERROR")
		for _, r := range calls {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
				r.CallId, r.ReceivedAt.AsTime().Format("2006-01-02T15:04:05.000Z07:00"), r.Function, orDash(r.GetTenant()),
				r.Status, orDash(r.GetStart()), fmtMs(r.RunMs), fmtMs(r.TotalMs), orDash(r.GetErrorClass()))
		}
		return w.Flush()
	}
	f := cmd.Flags()
	f.StringVar(&function, "function", "", "only calls of this function")
	f.StringVar(&tenant, "tenant", "", "only calls of this tenant")
	f.StringVar(&since, "since", "", "only calls received at or after this time")
	f.IntVar(&limit, "limit", wire.DefaultCallLimit, fmt.Sprintf("most calls shown, 1..%d", wire.MaxCallLimit))
	return cmd
}

// showCall prints the record of the call id.
func (c *cli) showCall(cmd *cobra.Command, id, output string) error {
	cl, err := c.client(cmd)
	if err != nil {
		return err
	}
	call, err := cl.GetCall(cmd.Context(), id)
	if err != nil {
		return fmt.Errorf("calls %s: %w", id, c.agentError(cmd, err))
	}
	if output == outJSON {
		return writeJSON(c.stdout, call)
	}
	return writeFields(c.stdout, call)
}

func (c *cli) keysCmd() *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "keys",
		Short: "Manage tenant API keys",
		Long: `keys creates, lists and revokes tenants' API keys. A call presenting a key
(Authorization: Bearer KEY) is billed to its tenant, functions with
require_key accept only calls with a valid key, and a key may read its
tenant's usage and calls. Managing keys needs the admin token when the agent
runs with auth.`,
	})
	cmd.AddCommand(c.keysCreateCmd(), c.keysListCmd(), c.keysRevokeCmd())
	return cmd
}

func (c *cli) keysCreateCmd() *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "create --tenant NAME",
		Short: "Create an API key for a tenant",
		Long: `create makes a new API key for the tenant NAME and prints it on standard
output, alone on its line; its id and a reminder go to standard error. The
agent keeps only the key's hash: it cannot show the key again.`,
		Example: "  kiln keys create --tenant acme\n  kiln keys create --tenant acme > acme.key",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tenant == "" {
				return usageError{errors.New("--tenant is required")}
			}
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			k, err := cl.CreateKey(cmd.Context(), tenant)
			if err != nil {
				return fmt.Errorf("keys create: %w", c.agentError(cmd, err))
			}
			fmt.Fprintf(c.stderr, "Created API key %s for tenant %s.\nStore the key now: it is not shown again.\n", k.Id, k.Tenant)
			_, err = fmt.Fprintln(c.stdout, k.GetKey())
			return err
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "tenant the key authenticates and bills (required)")
	return cmd
}

func (c *cli) keysListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the API keys, revoked ones included",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			keys, err := cl.ListKeys(cmd.Context())
			if err != nil {
				return fmt.Errorf("keys list: %w", c.agentError(cmd, err))
			}
			w := newTable(c.stdout)
			fmt.Fprintln(w, "ID\tTENANT\tCREATED\tREVOKED")
			for _, k := range keys {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", k.Id, k.Tenant, fmtTimestamp(k.Created), fmtTimestamp(k.Revoked))
			}
			return w.Flush()
		},
	}
}

func (c *cli) keysRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID...",
		Short: "Revoke API keys at once",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, ids []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			failed := false
			for _, id := range ids {
				if err := cl.RevokeKey(cmd.Context(), id); err != nil {
					fmt.Fprintf(c.stderr, "kiln: keys revoke %s: %v\n", id, c.agentError(cmd, err))
					failed = true
					continue
				}
				fmt.Fprintf(c.stdout, "Revoked %s\n", id)
			}
			if failed {
				return errReported
			}
			return nil
		},
	}
}
