// Command kilnd is kiln's per-node agent: it keeps function containers hot
// under containerd and serves calls over HTTP and gRPC.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/agent/daemon"
	"github.com/kilnfx/kiln/api"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/pool"
	ctrd "github.com/kilnfx/kiln/pool/containerd"
)

type config struct {
	httpAddr        string
	grpcAddr        string
	dataDir         string
	containerd      string
	namespace       string
	runtimeBinary   string
	maxBody         int
	shutdownTimeout time.Duration
	startTimeout    time.Duration
	logLevel        string
	queueDepth      int
	memoryBudget    int64
	stemCells       map[string]int
	executorBinary  string
}

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kilnd:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("kilnd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.httpAddr, "http", "127.0.0.1:8080", "HTTP API listen `address`")
	fs.StringVar(&c.grpcAddr, "grpc", "127.0.0.1:9090", "gRPC API listen `address`")
	fs.StringVar(&c.dataDir, "data-dir", "/var/lib/kiln", "data `directory`: SQLite, function code, containerd state")
	fs.StringVar(&c.containerd, "containerd", "", "containerd `socket` to use; empty starts and supervises kiln's own containerd")
	fs.StringVar(&c.namespace, "namespace", "kiln", "containerd `namespace` of kiln's containers")
	fs.StringVar(&c.runtimeBinary, "runtime-binary", "runc", "OCI runtime `binary` of the runc shim (runc or crun)")
	fs.IntVar(&c.maxBody, "max-body", agent.DefaultMaxBodyBytes, "request body limit in `bytes`")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "bound on finishing in-flight calls at SIGTERM")
	fs.DurationVar(&c.startTimeout, "start-timeout", 10*time.Second, "bound on a container becoming ready")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.IntVar(&c.queueDepth, "queue-depth", 1000, "calls that may wait for a container, per function")
	budget := fs.String("memory-budget", "75%", "sum of container memory limits the node allows: `SIZE` (512Mi, 16G, bytes) or a percentage of RAM")
	stems := fs.String("stem-cells", "", "frozen generic containers to keep per runtime, as `RUNTIME=N[,...]` (e.g. go=2)")
	fs.StringVar(&c.executorBinary, "executor-binary", "", "static stem cell executor `binary` (default: kiln-executor beside kilnd)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.memoryBudget, err = parseBudget(*budget); err != nil {
		return c, fmt.Errorf("--memory-budget %q: %v", *budget, err)
	}
	if c.stemCells, err = parseStemCells(*stems); err != nil {
		return c, fmt.Errorf("--stem-cells %q: %v", *stems, err)
	}
	if c.queueDepth < 0 {
		return c, fmt.Errorf("--queue-depth %d: must not be negative", c.queueDepth)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, a := range []struct{ flag, addr string }{{"--http", c.httpAddr}, {"--grpc", c.grpcAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return c, fmt.Errorf("%s %q: %v", a.flag, a.addr, err)
		}
	}
	if c.dataDir == "" {
		return c, errors.New("--data-dir must not be empty")
	}
	abs, err := filepath.Abs(c.dataDir)
	if err != nil {
		return c, fmt.Errorf("--data-dir: %w", err)
	}
	c.dataDir = abs
	if c.maxBody <= 0 {
		return c, fmt.Errorf("--max-body %d: must be positive", c.maxBody)
	}
	if c.shutdownTimeout <= 0 || c.startTimeout <= 0 {
		return c, errors.New("--shutdown-timeout and --start-timeout must be positive")
	}
	switch c.runtimeBinary {
	case "runc", "crun":
	default:
		return c, fmt.Errorf("--runtime-binary %q: want runc or crun", c.runtimeBinary)
	}
	return c, nil
}

func run(args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := os.MkdirAll(cfg.dataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	// Listen first: a taken port fails fast, before containerd starts.
	httpLn, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	defer httpLn.Close()
	grpcLn, err := net.Listen("tcp", cfg.grpcAddr)
	if err != nil {
		return fmt.Errorf("--grpc: %w", err)
	}
	defer grpcLn.Close()

	address := cfg.containerd
	if address == "" {
		d, err := daemon.Start(ctx, filepath.Join(cfg.dataDir, "containerd"))
		if err != nil {
			return fmt.Errorf("start containerd: %w", err)
		}
		log.Info("containerd started", "address", d.Address(), "pid", d.Pid())
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if err := d.Stop(sctx); err != nil {
				log.Warn("stop containerd", "err", err)
			}
		}()
		address = d.Address()
		go func() {
			select {
			case <-d.Exited():
				log.Error("containerd exited; shutting down", "err", d.Err())
				stop()
			case <-ctx.Done():
			}
		}()
	}

	driver, err := ctrd.New(ctx, address,
		ctrd.WithNamespace(cfg.namespace),
		ctrd.WithRuntimeBinary(cfg.runtimeBinary),
		ctrd.WithStateDir(filepath.Join(cfg.dataDir, "driver")),
	)
	if err != nil {
		return fmt.Errorf("containerd driver: %w", err)
	}
	defer driver.Close()

	store, err := datastore.Open(ctx, filepath.Join(cfg.dataDir, "kiln.db"))
	if err != nil {
		return fmt.Errorf("datastore: %w", err)
	}
	defer store.Close()

	runDir := filepath.Join(cfg.dataDir, "run")
	_ = os.RemoveAll(runDir)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	popts := []pool.Option{
		pool.WithLogger(log),
		pool.WithStartTimeout(cfg.startTimeout),
		pool.WithQueueDepth(cfg.queueDepth),
		pool.WithMemoryBudget(cfg.memoryBudget),
	}
	for runtime, n := range cfg.stemCells {
		exe := cfg.executorBinary
		if exe == "" {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			exe = filepath.Join(filepath.Dir(self), "kiln-executor")
		}
		spec, err := agent.PrepareStemCells(cfg.dataDir, runtime, exe, n)
		if err != nil {
			return err
		}
		popts = append(popts, pool.WithStemCells(spec))
	}
	// Remove what an earlier run left before any container of this run
	// starts (stem cells start with the pool).
	if n, err := pool.RemoveAll(ctx, driver); err != nil {
		log.Warn("remove containers of an earlier run", "removed", n, "err", err)
	} else if n > 0 {
		log.Info("removed containers of an earlier run", "removed", n)
	}
	p, err := pool.New(driver, runDir, popts...)
	if err != nil {
		return err
	}
	log.Info("pool ready", "memory_budget", cfg.memoryBudget, "queue_depth", cfg.queueDepth, "stem_cells", cfg.stemCells)
	a, err := agent.New(ctx, store, p, cfg.dataDir, agent.WithLogger(log), agent.WithMaxBodyBytes(cfg.maxBody))
	if err != nil {
		return err
	}

	httpSrv := api.NewHTTPServer(a, api.WithHTTPLogger(log))
	grpcSrv, health := api.NewGRPCServer()
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("http: %w", httpSrv.Serve(httpLn)) }()
	go func() { errc <- fmt.Errorf("grpc: %w", grpcSrv.Serve(grpcLn)) }()
	log.Info("kilnd ready", "http", httpLn.Addr().String(), "grpc", grpcLn.Addr().String(), "data_dir", cfg.dataDir)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-errc:
		log.Error("server failed", "err", serveErr)
	}

	// Stop accepting, let in-flight calls finish within the bound, then stop
	// the containers.
	health.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := httpSrv.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	grpcDone := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(grpcDone) }()
	select {
	case <-grpcDone:
	case <-sctx.Done():
		grpcSrv.Stop()
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := a.Close(cctx); err != nil {
		log.Warn("stop containers", "err", err)
	}
	log.Info("stopped")
	return serveErr
}
