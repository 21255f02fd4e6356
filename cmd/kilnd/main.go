// Command kilnd is kiln's per-node agent: it keeps function containers hot
// under containerd and serves calls over HTTP and gRPC.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/kilnfx/kiln/agent"
	"github.com/kilnfx/kiln/api"
	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/datastore/journal"
	"github.com/kilnfx/kiln/pool"
	ctrd "github.com/kilnfx/kiln/pool/containerd"
	"github.com/kilnfx/kiln/pool/containerd/daemon"
	pb "github.com/kilnfx/kiln/proto/executorpb"
	"github.com/kilnfx/kiln/runtimes/rootfs"
)

type config struct {
	httpAddr        string
	grpcAddr        string
	dataDir         string
	containerd      string
	ctrdBinary      string
	ctrdRestarts    int
	namespace       string
	runtimeBinary   string
	maxBody         int
	maxResponse     int
	shutdownTimeout time.Duration
	startTimeout    time.Duration
	logLevel        string
	queueDepth      int
	memoryBudget    int64
	memoryLimit     int64 // kilnd's own soft memory limit; 0: none
	frozenMargin    int64 // negative: frozen containers are charged their limit
	stemCells       map[string]int
	executorBinary  string
	runtimesDir     string
	auth            bool
	metering        bool
	retention       time.Duration
	gomaxprocs      int
	traceCalls      bool
	kilndCPUs       cpuList
	startCPUs       unix.CPUSet // kilnd's CPU mask at start, read when a placement is asked for
	containerCPUs   cpuList
	maxConns        int
	maxConnsPerIP   int
	headerTimeout   time.Duration
	bodyTimeout     time.Duration
	maxImageBytes   int
	pullTimeout     time.Duration
}

// Memory defaults (docs/DESIGN.md, "Bounded memory").
const (
	// defaultMaxResponse is the response limit: 6 MiB, as the request
	// body's (and AWS Lambda's synchronous answer).
	defaultMaxResponse = 6 << 20
	// defaultMemoryLimit is kilnd's soft memory limit.
	defaultMemoryLimit = "512Mi"
)

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
	fs.StringVar(&c.ctrdBinary, "containerd-binary", "containerd", "containerd `binary` of the managed daemon: a path, or a name on PATH")
	fs.IntVar(&c.ctrdRestarts, "containerd-restarts", daemon.DefaultMaxRestarts, fmt.Sprintf("restarts of the managed containerd allowed within %v; one more and kilnd stops its containers and exits non-zero (0: at its first exit)", daemon.DefaultRestartWindow))
	fs.StringVar(&c.namespace, "namespace", "kiln", "containerd `namespace` of kiln's containers")
	fs.StringVar(&c.runtimeBinary, "runtime-binary", "crun", "OCI runtime `binary` of the runc shim: crun (about 30% faster container start here) or runc")
	fs.IntVar(&c.maxBody, "max-body", agent.DefaultMaxBodyBytes, "request body limit in `bytes`")
	fs.IntVar(&c.maxResponse, "max-response", defaultMaxResponse, fmt.Sprintf("response limit in `bytes`: body, headers and error of a function's answer together, at most %d; a larger answer is 502 response_too_large", pb.MaxResultBodyBytes))
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "bound on finishing in-flight calls at SIGTERM")
	fs.DurationVar(&c.startTimeout, "start-timeout", 10*time.Second, "bound on a container becoming ready")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.IntVar(&c.queueDepth, "queue-depth", 1000, "calls that may wait for a container, per function")
	memLimit := fs.String("memory-limit", defaultMemoryLimit, "soft limit on kilnd's own memory (Go's GC works harder as it nears it; $GOMEMLIMIT, if set, wins): `SIZE` (512Mi, 1G) or a percentage of RAM; 0: none")
	budget := fs.String("memory-budget", "75%", "memory the node allows its containers: `SIZE` (512Mi, 16G, bytes) or a percentage of RAM; each container counts its memory limit, a frozen one its use (see --frozen-margin)")
	frozenMargin := fs.String("frozen-margin", "1Mi", "a frozen container counts in --memory-budget as the memory its cgroup held when it froze plus this `SIZE`, and gets its whole limit back before it thaws (LRU frozen containers are evicted for it, else the call gets 503); \"off\" counts frozen containers at their limit")
	stems := fs.String("stem-cells", "", "frozen generic containers to keep per runtime, as `RUNTIME=N[,...]` (e.g. go=2)")
	fs.StringVar(&c.executorBinary, "executor-binary", "", "static generic executor `binary` of stem cells and of every runtime but go (default: kiln-executor beside kilnd)")
	fs.StringVar(&c.runtimesDir, "runtimes-dir", "", "`directory` of the runtimes' root filesystems (default: DATA_DIR/runtimes); several kilnds may share one")
	fs.BoolVar(&c.auth, "auth", true, "require the admin token (DATA_DIR/admin.token) for the management API; --auth=false admits requests without a token from loopback as the admin (never on a non-loopback address)")
	fs.IntVar(&c.gomaxprocs, "gomaxprocs", -1, "Ps for kilnd itself: -1 is half the CPUs (at least 1), leaving the rest to containers; 0 keeps Go's default ($GOMAXPROCS, if set, wins)")
	kilndCPUs := fs.String("kilnd-cpus", "", "CPUs kilnd's own threads run on, as a `LIST` (\"0\", \"0-3,8\"; default: all); its default --gomaxprocs is then their count")
	containerCPUs := fs.String("container-cpus", "", "CPUs every container runs on, as a `LIST` (its cpuset; default: all)")
	fs.BoolVar(&c.traceCalls, "trace-calls", false, "let a call ask for its trace (HTTP header X-Kiln-Trace, gRPC metadata kiln-trace): when it passed each point of its way through kilnd and the executor")
	fs.BoolVar(&c.metering, "metering", true, "record one usage record per call (journal, then SQLite)")
	fs.DurationVar(&c.retention, "retention", 30*24*time.Hour, "keep raw call records this long (0: forever); rollups are kept")
	fs.IntVar(&c.maxConns, "max-conns", api.DefaultMaxConns, "connections each API listener (HTTP, gRPC) keeps open at once, at most a quarter of the descriptor limit (RLIMIT_NOFILE); more are refused (HTTP 503)")
	fs.IntVar(&c.maxConnsPerIP, "max-conns-per-ip", api.DefaultMaxConnsPerIP, "connections each API listener keeps open from one client IP; more are refused (HTTP 429)")
	fs.DurationVar(&c.headerTimeout, "header-timeout", api.DefaultHeaderTimeout, "bound on reading a request's headers (HTTP) and a new connection's handshake (gRPC)")
	fs.DurationVar(&c.bodyTimeout, "body-timeout", api.DefaultBodyTimeout, "bound on reading a request's body over 64 KiB once its headers are in (smaller ones must come within --header-timeout; a deploy's gets at least 5m)")
	fs.IntVar(&c.maxImageBytes, "max-image-bytes", api.DefaultMaxImageBytes, "size limit in `bytes` of an image archive kiln image import sends (held in memory while it is imported); a larger one is answered 413")
	fs.DurationVar(&c.pullTimeout, "pull-timeout", ctrd.DefaultPullTimeout, "bound on pulling an image that a deploy names and that is not imported, from its registry (0: never pull)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if *kilndCPUs != "" || *containerCPUs != "" {
		if err := unix.SchedGetaffinity(0, &c.startCPUs); err != nil {
			return c, fmt.Errorf("read kilnd's CPU affinity: %w", err)
		}
		if c.kilndCPUs, err = parseCPUList(*kilndCPUs, c.startCPUs); err != nil {
			return c, fmt.Errorf("--kilnd-cpus %q: %v", *kilndCPUs, err)
		}
		if c.containerCPUs, err = parseCPUList(*containerCPUs, c.startCPUs); err != nil {
			return c, fmt.Errorf("--container-cpus %q: %v", *containerCPUs, err)
		}
	}
	if c.memoryLimit, err = parseBudget(*memLimit); err != nil {
		return c, fmt.Errorf("--memory-limit %q: %v", *memLimit, err)
	}
	if c.memoryBudget, err = parseBudget(*budget); err != nil {
		return c, fmt.Errorf("--memory-budget %q: %v", *budget, err)
	}
	c.frozenMargin = -1
	if *frozenMargin != "off" {
		if c.frozenMargin, err = parseBudget(*frozenMargin); err != nil || strings.HasSuffix(*frozenMargin, "%") {
			return c, fmt.Errorf("--frozen-margin %q: want a size such as 1Mi, or off", *frozenMargin)
		}
	}
	if c.stemCells, err = parseStemCells(*stems); err != nil {
		return c, fmt.Errorf("--stem-cells %q: %v", *stems, err)
	}
	if c.gomaxprocs < -1 {
		return c, fmt.Errorf("--gomaxprocs %d: want -1 (half the CPUs), 0 (Go's default) or a count", c.gomaxprocs)
	}
	if c.retention < 0 {
		return c, fmt.Errorf("--retention %v: must not be negative", c.retention)
	}
	if c.queueDepth < 0 {
		return c, fmt.Errorf("--queue-depth %d: must not be negative", c.queueDepth)
	}
	if c.maxConns < 1 {
		return c, fmt.Errorf("--max-conns %d: must be at least 1", c.maxConns)
	}
	if c.maxConnsPerIP < 1 {
		return c, fmt.Errorf("--max-conns-per-ip %d: must be at least 1", c.maxConnsPerIP)
	}
	if c.headerTimeout <= 0 {
		return c, fmt.Errorf("--header-timeout %v: must be positive", c.headerTimeout)
	}
	if c.maxImageBytes <= 0 {
		return c, fmt.Errorf("--max-image-bytes %d: must be positive", c.maxImageBytes)
	}
	if c.bodyTimeout <= 0 {
		return c, fmt.Errorf("--body-timeout %v: must be positive", c.bodyTimeout)
	}
	if c.ctrdRestarts < 0 {
		return c, fmt.Errorf("--containerd-restarts %d: must not be negative", c.ctrdRestarts)
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
	if c.runtimesDir != "" {
		if c.runtimesDir, err = filepath.Abs(c.runtimesDir); err != nil {
			return c, fmt.Errorf("--runtimes-dir: %w", err)
		}
	}
	if c.maxBody <= 0 {
		return c, fmt.Errorf("--max-body %d: must be positive", c.maxBody)
	}
	if c.maxResponse <= 0 || c.maxResponse > pb.MaxResultBodyBytes {
		return c, fmt.Errorf("--max-response %d: must be 1 to %d", c.maxResponse, pb.MaxResultBodyBytes)
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
	if cfg.kilndCPUs != nil {
		// Before anything starts, so that every thread inherits the
		// placement; containerd is started on the CPUs kilnd started
		// with, so that its shims and containers do not.
		if err := pinProcess(cfg.kilndCPUs); err != nil {
			return fmt.Errorf("--kilnd-cpus: %w", err)
		}
	}
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		switch {
		case cfg.gomaxprocs > 0:
			runtime.GOMAXPROCS(cfg.gomaxprocs)
		case cfg.gomaxprocs < 0 && cfg.kilndCPUs != nil:
			runtime.GOMAXPROCS(len(cfg.kilndCPUs))
		case cfg.gomaxprocs < 0:
			// Measured on 2 vCPUs (docs/BENCHMARKS.md): one P for kilnd cut a
			// sequential warm call's p50 by about a third at the same
			// throughput, because the executor's side gets the other CPU.
			runtime.GOMAXPROCS(max(1, runtime.NumCPU()/2))
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if _, set := os.LookupEnv("GOMEMLIMIT"); !set && cfg.memoryLimit > 0 {
		debug.SetMemoryLimit(cfg.memoryLimit)
	}
	go reclaimAfterBursts(ctx)

	if err := makeDataDir(cfg.dataDir); err != nil {
		return err
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

	// The managed containerd is restarted whenever it exits; its
	// containers run on meanwhile. supDone is closed when the Supervisor
	// gives up (supErr says why); it stays nil with --containerd, where the
	// driver waits for the external daemon to come back.
	address := cfg.containerd
	var supDone chan struct{}
	var supErr error
	if address == "" {
		dir := filepath.Join(cfg.dataDir, "containerd")
		daemonOpts := []daemon.Option{daemon.WithBinary(cfg.ctrdBinary)}
		if cfg.kilndCPUs != nil {
			daemonOpts = append(daemonOpts, daemon.WithCPUAffinity(cfg.startCPUs))
		}
		sup, err := daemon.Supervise(ctx, dir,
			daemon.WithDaemonOptions(daemonOpts...),
			daemon.WithRestartLimit(cfg.ctrdRestarts, daemon.DefaultRestartWindow),
			daemon.WithLogger(log))
		if err != nil {
			return fmt.Errorf("start containerd: %w", err)
		}
		log.Info("containerd started", "address", sup.Address(), "pid", sup.Pid())
		supCtx, stopSup := context.WithCancel(context.Background())
		supDone = make(chan struct{})
		go func() { supErr = sup.Run(supCtx); close(supDone) }()
		defer func() {
			stopSup()
			<-supDone
			if supErr != nil && !errors.Is(supErr, daemon.ErrGaveUp) {
				log.Warn("stop containerd", "err", supErr)
			}
			// Containers removed while containerd was away leave their
			// shims waiting for a daemon that is now gone for good.
			if n, err := daemon.KillShims(dir); err != nil || n > 0 {
				log.Warn("killed containerd shims left behind", "shims", n, "err", err)
			}
		}()
		address = sup.Address()
	}

	driver, err := ctrd.New(ctx, address,
		ctrd.WithNamespace(cfg.namespace),
		ctrd.WithCPUs(cfg.containerCPUs.String()),
		ctrd.WithRuntimeBinary(cfg.runtimeBinary),
		ctrd.WithStateDir(filepath.Join(cfg.dataDir, "driver")),
		ctrd.WithPullTimeout(cfg.pullTimeout),
		ctrd.WithLogger(log),
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
		pool.WithMaxResponseBytes(cfg.maxResponse),
	}
	if cfg.frozenMargin >= 0 {
		popts = append(popts, pool.WithFrozenCharge(cfg.frozenMargin))
	}
	// The generic executor serves the stem cells and every runtime but go;
	// without it kilnd serves go functions only.
	exe := cfg.executorBinary
	if exe == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		exe = filepath.Join(filepath.Dir(self), "kiln-executor")
	}
	var bases *rootfs.Store
	binDir, err := agent.InstallExecutor(cfg.dataDir, exe)
	if err != nil {
		if cfg.executorBinary != "" || len(cfg.stemCells) > 0 {
			return err
		}
		log.Warn("no executor binary: only go functions deploy", "err", err)
	} else {
		dir := cfg.runtimesDir
		if dir == "" {
			dir = filepath.Join(cfg.dataDir, "runtimes")
		}
		bases, err = rootfs.NewStore(dir,
			rootfs.WithPrepare(agent.PrepareRuntimeRootFS(driver.PrepareRootFS)),
			rootfs.WithLogger(log))
		if err != nil {
			return err
		}
	}
	for runtime, n := range cfg.stemCells {
		var spec pool.StemSpec
		if runtime == "go" {
			spec, err = agent.PrepareStemCells(cfg.dataDir, runtime, exe, n, driver.PrepareRootFS)
		} else {
			spec, err = agent.RuntimeStemCells(ctx, bases, binDir, runtime, n)
		}
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
	log.Info("pool ready", "memory_budget", cfg.memoryBudget, "frozen_margin", cfg.frozenMargin, "queue_depth", cfg.queueDepth, "stem_cells", cfg.stemCells)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), agent.NewPoolCollector(p))
	aopts := []agent.Option{
		agent.WithLogger(log),
		agent.WithMaxBodyBytes(cfg.maxBody),
		agent.WithMetrics(agent.NewMetrics(reg)),
	}
	if bases != nil {
		aopts = append(aopts, agent.WithRuntimes(bases, binDir))
	}

	// Metering: every call's record goes to the journal before its answer;
	// the ingester moves the journal into SQLite in the background. What
	// an earlier run journaled and SQLite lacks is ingested first.
	var ingestDone chan struct{}
	stopIngest := func() {}
	if cfg.metering {
		j, err := journal.Open(filepath.Join(cfg.dataDir, "usage"), journal.WithLogger(log))
		if err != nil {
			return fmt.Errorf("usage journal: %w", err)
		}
		defer j.Close()
		in, err := datastore.NewIngester(store, j, datastore.WithIngestLogger(log))
		if err != nil {
			return err
		}
		n, err := in.IngestAll(ctx)
		if err != nil {
			return fmt.Errorf("ingest the usage journal: %w", err)
		}
		log.Info("usage journal ingested", "records", n)
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kiln_usage_journal_lag_records",
			Help: "Usage records journaled but not yet in SQLite.",
		}, func() float64 { return float64(j.Lag()) }))
		ictx, cancel := context.WithCancel(context.Background())
		ingestDone = make(chan struct{})
		go func() { defer close(ingestDone); _ = in.Run(ictx) }()
		stopIngest = func() {
			cancel()
			<-ingestDone
			fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer fcancel()
			if n, err := in.IngestAll(fctx); err != nil {
				log.Error("final usage ingestion; the journal keeps the rest for the next start", "err", err)
			} else {
				log.Info("usage journal ingested", "records", n)
			}
		}
		aopts = append(aopts, agent.WithUsageSink(j))
		if cfg.retention > 0 {
			go pruneCalls(ictx, store, cfg.retention, log)
		}
	}
	a, err := agent.New(ctx, store, p, cfg.dataDir, aopts...)
	if err != nil {
		return err
	}
	token, err := agent.LoadOrCreateAdminToken(cfg.dataDir)
	if err != nil {
		return err
	}
	authRequired := cfg.auth || !isLoopback(httpLn.Addr())
	if authRequired {
		log.Info("management API needs the admin token", "file", filepath.Join(cfg.dataDir, agent.AdminTokenFile))
	}

	maxConns := cfg.maxConns
	var nofile syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		log.Warn("read the descriptor limit; --max-conns is not checked against it", "err", err)
	} else if maxConns = connBudget(cfg.maxConns, nofile.Cur); maxConns < cfg.maxConns {
		log.Warn("--max-conns lowered to a quarter of the descriptor limit", "max_conns", maxConns, "asked", cfg.maxConns, "nofile", nofile.Cur)
	}

	httpSrv := api.NewHTTPServer(a,
		api.WithHTTPLogger(log),
		api.WithMetricsHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})),
		api.WithAdminToken(token, authRequired),
		api.WithConnLimits(maxConns, cfg.maxConnsPerIP),
		api.WithHeaderTimeout(cfg.headerTimeout),
		api.WithBodyTimeout(cfg.bodyTimeout),
		api.WithMaxImageBytes(cfg.maxImageBytes),
		api.WithCallTracing(cfg.traceCalls),
	)
	grpcSrv, health := api.NewGRPCServer(a, api.WithGRPCLogger(log),
		api.WithGRPCAdminToken(token, cfg.auth || !isLoopback(grpcLn.Addr())),
		api.WithGRPCConnLimits(maxConns, cfg.maxConnsPerIP),
		api.WithGRPCHandshakeTimeout(cfg.headerTimeout),
		api.WithGRPCCallTracing(cfg.traceCalls))
	if err := writeAgentInfo(cfg.dataDir, httpLn.Addr(), grpcLn.Addr()); err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("http: %w", httpSrv.Serve(httpLn)) }()
	go func() { errc <- fmt.Errorf("grpc: %w", grpcSrv.Serve(grpcLn)) }()
	log.Info("kilnd ready", "http", httpLn.Addr().String(), "grpc", grpcLn.Addr().String(), "data_dir", cfg.dataDir,
		"max_conns", maxConns, "max_conns_per_ip", cfg.maxConnsPerIP)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-errc:
		log.Error("server failed", "err", serveErr)
	case <-supDone:
		serveErr = fmt.Errorf("containerd: %w", supErr)
		log.Error("shutting down: containerd cannot be kept running", "err", supErr)
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
	stopIngest()
	log.Info("stopped")
	return serveErr
}

// makeDataDir creates the data directory, or takes an existing one, with
// mode 0700: it holds the admin token, function code and usage records,
// none of it for other users.
func makeDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return nil
}

// writeAgentInfo records in DATA_DIR/agent.json the addresses this kilnd
// serves, so that the CLI sends a data dir's admin token only to its own
// agent.
func writeAgentInfo(dataDir string, httpAddr, grpcAddr net.Addr) error {
	b, err := json.Marshal(map[string]string{"http": "http://" + httpAddr.String(), "grpc": grpcAddr.String()})
	if err != nil {
		return err
	}
	p := filepath.Join(dataDir, agent.InfoFile)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("agent info: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("agent info: %w", err)
	}
	return nil
}

// isLoopback reports whether addr only accepts connections from this host.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// pruneCalls deletes raw call records older than retention, hourly, until
// ctx ends. Rollups stay.
func pruneCalls(ctx context.Context, store *datastore.Store, retention time.Duration, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := store.PruneCalls(ctx, time.Now().Add(-retention)); err != nil {
			log.Warn("prune call records", "err", err)
		} else if n > 0 {
			log.Info("pruned call records", "records", n, "older_than", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
