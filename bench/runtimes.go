package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kilnfx/kiln/agent/bundle"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	"github.com/kilnfx/kiln/runtimes/cpp"
	"github.com/kilnfx/kiln/runtimes/csharp"
	"github.com/kilnfx/kiln/runtimes/java"
)

// runtimeEcho is an echo function of each runtime other than go: its
// handler file and source, and for a compiled runtime its build (the
// handler is then what the build makes).
var runtimeEcho = []struct {
	runtime, handler, source string
	stems                    bool // the runtime keeps stem cells
	build                    func(ctx context.Context, dir string) (archive []byte, handler string, err error)
}{
	{"python3", "handler.py", "def handle(req):\n    return req.body\n", true, nil},
	{"ruby", "handler.rb", "def handle(req)\n  req.body\nend\n", true, nil},
	{"node", "handler.js", "module.exports = (req) => req.body;\n", true, nil},
	{"binary", "handler.sh", "#!/bin/sh\nexec cat\n", false, nil},
	{"cpp", "handler.cpp", "#include \"kiln.hpp\"\nint main() { return kiln::serve([](const kiln::Request& req) { return kiln::Response{200, {}, req.body}; }); }\n", true,
		func(ctx context.Context, dir string) ([]byte, string, error) {
			bin, err := cpp.Build(ctx, dir)
			if err != nil {
				return nil, "", err
			}
			archive, err := bundle.PackBytes("", map[string]string{cpp.Handler: bin}, 0)
			return archive, cpp.Handler, err
		}},
	{"csharp", "Handler.cs", "public static class Handler {\n    public static object Handle(Kiln.Request req) { return req.Body; }\n}\n", true,
		func(ctx context.Context, dir string) ([]byte, string, error) {
			program, err := csharp.Build(ctx, dir)
			if err != nil {
				return nil, "", err
			}
			archive, err := bundle.PackBytes("", map[string]string{csharp.Handler: program}, 0)
			return archive, csharp.Handler, err
		}},
	{"java", "Handler.java", "public class Handler {\n    public static Object handle(kiln.Request req) { return req.body; }\n}\n", true,
		func(ctx context.Context, dir string) ([]byte, string, error) {
			classes, err := java.Build(ctx, dir)
			if err != nil {
				return nil, "", err
			}
			archive, err := bundle.PackBytes(classes, nil, 0)
			return archive, java.Handler, err
		}},
}

// RuntimeNames lists the runtimes the runtimes scenario measures besides go.
func RuntimeNames() []string {
	var ns []string
	for _, r := range runtimeEcho {
		ns = append(ns, r.runtime)
	}
	return ns
}

// runRuntimes measures, for each runtime: the build of its root filesystem
// (into a directory of its own, so from the Debian mirror), a cold start,
// a stem cell's specialisation, a thaw and a warm call, one call at a time,
// with Go's warm and cold beside them in the same kilnd.
func runRuntimes(ctx context.Context, e *Env) ([]Result, error) {
	bases, err := os.MkdirTemp("/tmp", "kbr")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bases)
	k, err := e.startKilnd(ctx, "--runtimes-dir", bases)
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			e.stop(k)
		}
	}()
	const parts = 5
	var out []Result
	built := map[string]*kilnv1.Runtime{}
	for i, r := range runtimeEcho {
		rt, err := k.Client.BuildRuntime(ctx, r.runtime, nil)
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", r.runtime, err)
		}
		built[r.runtime] = rt
		e.Progress.Logf("runtime %s: %s in %s", r.runtime, fmtMiB(rt.SizeBytes), rt.BuildTime.AsDuration().Round(100*time.Millisecond))
		e.part(0, parts)(i+1, len(runtimeEcho))
	}
	code := map[string][]byte{}
	handler := map[string]string{}
	for _, r := range runtimeEcho {
		dir, err := os.MkdirTemp("", "kbfn")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, r.handler), []byte(r.source), 0o755); err != nil {
			return nil, err
		}
		handler[r.runtime] = r.handler
		if r.build != nil {
			if code[r.runtime], handler[r.runtime], err = r.build(ctx, dir); err != nil {
				return nil, fmt.Errorf("build the %s echo function: %w", r.runtime, err)
			}
			continue
		}
		if code[r.runtime], err = bundle.PackBytes(dir, nil, 0); err != nil {
			return nil, err
		}
	}
	deploy := func(name, runtime string, s *kilnv1.FunctionSpec) error {
		if runtime == "go" {
			return k.Deploy(ctx, name, e.Functions["echo"], s)
		}
		s.Runtime, s.Handler, s.Code = runtime, handler[runtime], code[runtime]
		_, err := k.Client.Deploy(ctx, name, s)
		return err
	}
	all := append([]string{"go"}, RuntimeNames()...)
	c := NewHostClient(k.Addr, 1)
	echo := func(name string) Target { return HTTPTarget(c, "/invoke/"+name, EchoBody, EchoCheck(EchoBody)) }

	// Warm: one container kept running, calls one at a time.
	for i, rt := range all {
		name := "warm-" + rt
		if err := deploy(name, rt, e.warmSpec()); err != nil {
			return nil, fmt.Errorf("deploy %s: %w", name, err)
		}
		lat, err := oneAtATime(ctx, subPart(e.part(1, parts), i, len(all)), e.Warmup, e.Calls, "warm", echo(name), nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		res := lat.Result("runtime-warm-" + rt)
		res.Mode = seqMode
		res.Note = "an echo function of runtime " + rt + ", one container kept running"
		if rt != "go" {
			res.Floor = "runtime-warm-go"
		}
		out = append(out, res)
	}
	// Thawed: one container frozen before each call.
	for i, rt := range all {
		name := "thaw-" + rt
		s := e.spec()
		s.MinWarm, s.MaxContainers, s.FreezeAfter = 1, 1, durationpb.New(0)
		if err := deploy(name, rt, s); err != nil {
			return nil, fmt.Errorf("deploy %s: %w", name, err)
		}
		lat, err := oneAtATime(ctx, subPart(e.part(2, parts), i, len(all)), 5, e.Thaws, "thawed", echo(name), func(int) error {
			_, err := k.WaitContainers(ctx, name, time.Millisecond, 30*time.Second, AllFrozen(1))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		res := lat.Result("runtime-thawed-" + rt)
		res.Mode = "one call at a time, the container frozen before each"
		res.Note = "runtime " + rt + ", freeze_after 0; only calls answered X-Kiln-Start: thawed"
		if rt != "go" {
			res.Floor = "runtime-thawed-go"
		}
		out = append(out, res)
	}
	// Cold: a new function, so a new container, for each call.
	for i, rt := range all {
		n := e.Colds
		names := make([]string, 2+n)
		for j := range names {
			names[j] = fmt.Sprintf("cold-%s-%d", rt, j)
			if err := deploy(names[j], rt, e.spec()); err != nil {
				return nil, fmt.Errorf("deploy %s: %w", names[j], err)
			}
		}
		res, err := e.eachNewFunction(ctx, k, names, "cold", subPart(e.part(3, parts), i, len(all)), nil)
		if err != nil {
			return nil, fmt.Errorf("cold %s: %w", rt, err)
		}
		res.Scenario = "runtime-cold-" + rt
		res.Note = "runtime " + rt + ", no stem cells; the previous function deleted before each call"
		if b := built[rt]; b != nil {
			res.Extra = map[string]float64{
				"rootfs_mib":     float64(b.SizeBytes) / (1 << 20),
				"rootfs_build_s": b.BuildTime.AsDuration().Seconds(),
			}
		}
		if rt != "go" {
			res.Floor = "runtime-cold-go"
		}
		out = append(out, *res)
	}
	e.stop(k)
	stopped = true

	// Stem cells: a kilnd keeping frozen stem cells of the interpreters
	// (and go's, beside them), each call to a new function.
	stemCells := "go=1"
	for _, r := range runtimeEcho {
		if r.stems {
			stemCells += "," + r.runtime + "=1"
		}
	}
	args := []string{"--runtimes-dir", bases, "--stem-cells", stemCells}
	if e.Executor != "" {
		args = append(args, "--executor-binary", e.Executor)
	}
	k, err = e.startKilnd(ctx, args...)
	if err != nil {
		return nil, err
	}
	stopped = false
	stemmed := []string{"go"}
	for _, r := range runtimeEcho {
		if r.stems {
			stemmed = append(stemmed, r.runtime)
		}
	}
	if err := k.WaitLog(ctx, "stem cell ready", len(stemmed), 60*time.Second); err != nil {
		return nil, err
	}
	for i, rt := range stemmed {
		names := make([]string, 2+e.Stems)
		for j := range names {
			names[j] = fmt.Sprintf("stem-%s-%d", rt, j)
			if err := deploy(names[j], rt, e.spec()); err != nil {
				return nil, fmt.Errorf("deploy %s: %w", names[j], err)
			}
		}
		// Before each call the pool must have started the replacement of
		// the stem cell the previous call took.
		seen := k.Seen("stem cell ready")
		res, err := e.eachNewFunction(ctx, k, names, "stem", subPart(e.part(4, parts), i, len(stemmed)), func(j int) error {
			return k.WaitLog(ctx, "stem cell ready", seen+j, 60*time.Second)
		})
		if err != nil {
			return nil, fmt.Errorf("stem %s: %w", rt, err)
		}
		res.Scenario = "runtime-stem-" + rt
		res.Note = "runtime " + rt + ", one stem cell per runtime, refilled before each call; only calls answered X-Kiln-Start: stem"
		if rt != "go" {
			res.Floor = "runtime-stem-go"
		}
		out = append(out, *res)
	}
	return out, nil
}

// eachNewFunction calls each of names once, in order, one call at a time,
// deleting the function called before and running prepare (nil: nothing)
// before each call, and records the calls after the first two that
// started as want.
func (e *Env) eachNewFunction(ctx context.Context, k *Kilnd, names []string, want string, progress func(done, total int), prepare func(i int) error) (*Result, error) {
	hc := NewHostClient(k.Addr, 1)
	call := -1
	lat, err := oneAtATime(ctx, progress, 2, len(names)-2, want, func() Call {
		calls := map[string]Call{}
		for _, n := range names {
			calls[n] = HTTPTarget(hc, "/invoke/"+n, EchoBody, EchoCheck(EchoBody))()
		}
		return func(ctx context.Context) (string, error) { return calls[names[call]](ctx) }
	}, func(i int) error {
		if i > 0 {
			if err := k.Client.Delete(ctx, names[i-1]); err != nil {
				return err
			}
		}
		call = i
		if prepare != nil {
			return prepare(i)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r := lat.Result(want)
	r.Mode = "one call at a time, each to a new function"
	return &r, nil
}

// subPart is part i of n of progress.
func subPart(progress func(done, total int), i, n int) func(done, total int) {
	return func(done, total int) {
		if total > 0 {
			progress(i*total+done, n*total)
		}
	}
}

func fmtMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
