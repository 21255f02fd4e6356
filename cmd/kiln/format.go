package main

import (
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Output formats of -o.
const (
	outTable = "table"
	outJSON  = "json"
	outCSV   = "csv"
)

// addOutputFlag adds -o/--output to cmd with the formats allowed, the first
// being the default, and returns where its value goes.
func addOutputFlag(cmd *cobra.Command, formats ...string) *string {
	out := new(string)
	cmd.Flags().StringVarP(out, "output", "o", formats[0], "output format: "+strings.Join(formats, ", "))
	return out
}

// checkOutput checks the value of -o against the formats allowed.
func checkOutput(got string, formats ...string) error {
	if slices.Contains(formats, got) {
		return nil
	}
	return usageError{fmt.Errorf("-o %q: want %s", got, orList(formats))}
}

// orList is "a, b or c".
func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// newTable returns the writer of a table of columns separated by tabs.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// jsonOutput writes -o json: the agent's JSON (the proto field names, every
// field that is not unset), indented.
var jsonOutput = protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, EmitDefaultValues: true}

// writeJSON writes m as indented JSON and a newline.
func writeJSON(w io.Writer, m proto.Message) error {
	b, err := jsonOutput.Marshal(m)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// fmtTime formats a time in UTC to the second, "-" when zero.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// fmtTimestamp is fmtTime of ts, "-" when unset.
func fmtTimestamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return fmtTime(ts.AsTime())
}

// fmtBytes formats a byte count with binary units: 512B, 1.5KiB, 12.3MiB,
// 512KiB.
func fmtBytes(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + "B"
	}
	v := float64(n)
	for _, unit := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= 1024
		if v < 1024 || unit == "TiB" {
			if v >= 100 {
				return strconv.FormatFloat(v, 'f', 0, 64) + unit
			}
			return trimZeros(strconv.FormatFloat(v, 'f', 1, 64)) + unit
		}
	}
	panic("unreachable")
}

// fmtFloat formats v with four significant digits and no exponent: 1235,
// 12.35, 0.000125.
func fmtFloat(v float64) string { return fmtSig(v, 4) }

// fmtSig formats v with the given significant digits (at most 9 decimals)
// and no exponent.
func fmtSig(v float64, digits int) string {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	decimals := digits - 1 - int(math.Floor(math.Log10(math.Abs(v))))
	decimals = min(max(decimals, 0), 9)
	return trimZeros(strconv.FormatFloat(v, 'f', decimals, 64))
}

// trimZeros drops the trailing zeros of a decimal fraction: 1.50 is 1.5,
// 2.0 is 2.
func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// fmtMs formats a time in milliseconds with three significant digits:
// 42µs, 12.5ms, 1.5s.
func fmtMs(ms float64) string {
	switch {
	case ms == 0:
		return "0"
	case ms < 1:
		return fmtSig(ms*1000, 3) + "µs"
	case ms < 1000:
		return fmtSig(ms, 3) + "ms"
	}
	return fmtSig(ms/1000, 3) + "s"
}

// fmtAge formats how long ago t was, coarsely: 45s, 12m, 5h, 3d.
func fmtAge(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

var daysRE = regexp.MustCompile(`^([0-9]+)d(.*)$`)

// parseTimeFlag reads the time of the flag name: an RFC 3339 time, a date
// (UTC midnight), unix seconds, "now", or a duration before now such as
// 90m, 1h30m or 7d. Empty is the zero time (no bound).
func parseTimeFlag(name, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if v == "now" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return time.Time{}, usageError{fmt.Errorf("--%s %q: unix seconds must not be negative", name, v)}
		}
		return time.Unix(n, 0), nil
	}
	if d, ok := parseAgo(v); ok {
		if d <= 0 {
			return time.Time{}, usageError{fmt.Errorf("--%s %q: want a positive duration (1h means an hour ago)", name, v)}
		}
		return now.Add(-d), nil
	}
	return time.Time{}, usageError{fmt.Errorf("--%s %q: want an RFC 3339 time (2026-01-02T15:04:05Z), a date (2026-01-02), unix seconds, now, or a duration before now (30m, 1h, 7d)", name, v)}
}

// parseAgo parses a Go duration, also with a leading number of days:
// 7d, 1d12h.
func parseAgo(v string) (time.Duration, bool) {
	var days time.Duration
	if m := daysRE.FindStringSubmatch(v); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 32)
		if err != nil {
			return 0, false
		}
		days, v = time.Duration(n)*24*time.Hour, m[2]
		if v == "" {
			return days, true
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, false
	}
	return days + d, true
}

// writeFields writes the scalar and timestamp fields of m as "name: value"
// lines in declaration order, named as in its JSON; empty and unset values
// are "-", timestamps RFC 3339 in UTC.
func writeFields(w io.Writer, m proto.Message) error {
	tw := newTable(w)
	msg := m.ProtoReflect()
	fields := msg.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.IsList() || f.IsMap() {
			continue
		}
		val := "-"
		v := msg.Get(f)
		switch {
		case f.HasPresence() && !msg.Has(f):
		case f.Kind() == protoreflect.MessageKind:
			if ts, ok := v.Message().Interface().(*timestamppb.Timestamp); ok {
				val = ts.AsTime().UTC().Format(time.RFC3339Nano)
			} else {
				continue
			}
		case f.Kind() == protoreflect.DoubleKind:
			val = strconv.FormatFloat(v.Float(), 'f', -1, 64)
		case f.Kind() == protoreflect.StringKind:
			val = orDash(v.String())
		default:
			val = fmt.Sprint(v.Interface())
		}
		fmt.Fprintf(tw, "%s:\t%s\n", f.Name(), val)
	}
	return tw.Flush()
}
