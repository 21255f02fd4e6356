// Command kiln-bench runs kiln's benchmark scenarios against a kilnd it
// starts itself, beside the in-process floor measured in the same run, and
// writes the results as JSON and a markdown report.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/bench"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kilndBin = flag.String("kilnd", "./bin/kilnd", "kilnd `binary` to benchmark")
		n        = flag.Int("n", 2000, "measured calls per latency scenario")
		warm     = flag.Int("warmup", 200, "unrecorded calls before each scenario")
		out      = flag.String("out", "bench/results", "`directory` for JSON results")
		report   = flag.String("report", "", "markdown report `file` to write (empty: stdout only)")
		quick    = flag.Bool("quick", false, "fewer calls, for a fast look")
		fnProcs  = flag.Int("fn-gomaxprocs", 0, "GOMAXPROCS of the benchmark functions (0: the Go default)")
	)
	flag.Parse()
	if *quick {
		*n, *warm = 500, 50
	}
	if *n <= 0 || *warm < 0 {
		return fmt.Errorf("-n must be positive and -warmup not negative")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	r := &bench.Run{Time: time.Now(), Command: "kiln-bench " + strings.Join(os.Args[1:], " "), Machine: bench.ThisMachine()}
	body := []byte("hello, kiln")

	// floor
	floor, err := bench.StartFloor()
	if err != nil {
		return err
	}
	lat, err := bench.Sequential(floor.Addr(), "/", body, *warm, *n, 200)
	floor.Close()
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	res := lat.Result("floor")
	res.Note = "in-process fasthttp echo, sequential"
	r.Results = append(r.Results, res)
	fmt.Fprintf(os.Stderr, "floor: p50 %.1fµs p99 %.1fµs\n", res.P50, res.P99)

	// warm-http
	tmp, err := os.MkdirTemp("", "kiln-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	echo, err := bench.BuildFunction(ctx, "./bench/functions/echo", tmp)
	if err != nil {
		return err
	}
	k, err := bench.StartKilnd(ctx, *kilndBin)
	if err != nil {
		return err
	}
	defer k.Stop()
	spec := &kilnv1.FunctionSpec{}
	if *fnProcs > 0 {
		spec.Env = map[string]string{"GOMAXPROCS": strconv.Itoa(*fnProcs)}
	}
	if err := k.Deploy(ctx, "echo", echo, spec); err != nil {
		return fmt.Errorf("deploy echo: %w", err)
	}
	lat, err = bench.Sequential(k.Addr, "/invoke/echo", body, *warm, *n, 200)
	if err != nil {
		return fmt.Errorf("warm-http: %w", err)
	}
	res = lat.Result("warm-http")
	res.Note = "kilnd → executor stream → Go echo in a container, sequential"
	r.Results = append(r.Results, res)
	fmt.Fprintf(os.Stderr, "warm-http: p50 %.1fµs p99 %.1fµs\n", res.P50, res.P99)

	r.AddRatios("floor")
	path, err := r.WriteJSON(*out)
	if err != nil {
		return err
	}
	md := r.Markdown()
	fmt.Print(md)
	if *report != "" {
		if err := os.WriteFile(*report, []byte(md), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintln(os.Stderr, "results:", path)
	return nil
}
