package worker_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnfx/kiln/executor/worker"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// language is a runtime with a long-lived worker and a handler answering,
// by path, every case of the suite.
type language struct {
	runtime, command, handlerFile, handler string
	// emptyErrorName is the error of a call whose exception has no message.
	emptyErrorName string
	// noHandle is a handler file that defines no handler; importFails one
	// that fails while loading with "boom at import".
	noHandle, importFails string
	// noHandleError is in the load error of noHandle ("TypeError" when empty).
	noHandleError string
	// compile, when set, builds a handler's source into a new code
	// directory and returns it and the handler to load.
	compile func(t *testing.T, source string) (dir, handler string)
}

// functionDir writes source as l's handler into a new code directory (or
// has l compile it there) and returns the directory and the handler.
func (l language) functionDir(t *testing.T, source string) (dir, handler string) {
	t.Helper()
	if l.compile != nil {
		return l.compile(t, source)
	}
	return codeDir(t, map[string]string{l.handlerFile: source}), l.handlerFile
}

var languages = []language{{
	runtime: "python3", command: "python3", handlerFile: "handler.py", emptyErrorName: "RuntimeError",
	noHandle:    "def nothing(req):\n    pass\n",
	importFails: "raise RuntimeError('boom at import')\n",
	handler: `import os, sys, threading, time

meeting = threading.Barrier(4)

def handle(req):
    p = req.path
    if p == "/meet":
        try:
            meeting.wait(20)
            return "met"
        except threading.BrokenBarrierError:
            return "alone"
    if p == "/echo":
        return (200, {"X-Method": req.method, "X-Path": req.path, "X-Query": req.query,
                      "X-In": req.headers.get("X-In", ""),
                      "X-All": [v for k, v in req.header_list if k == "X-In"]}, req.body)
    if p == "/json":
        return {"a": 1, "b": [1, 2]}
    if p == "/list":
        return [1, 2]
    if p == "/str":
        return "h\u00e9llo"
    if p == "/bytes":
        return b"\x00\x01"
    if p == "/none":
        return None
    if p == "/tuple":
        return (201, {"X-T": ["a", "b"]}, {"made": True})
    if p == "/raise":
        raise ValueError("bad thing")
    if p == "/raise-empty":
        raise RuntimeError()
    if p == "/badtype":
        return 3.5
    if p == "/print":
        for _ in range(2000):
            print("x" * 1000)
        return "intact"
    if p == "/sleep":
        time.sleep(0.2)
        return "slept"
    if p == "/loop":
        while not req.cancelled():
            time.sleep(0.005)
        print("cancelled", req.id, file=sys.stderr)
        return "late"
    if p == "/burn":
        n, end = 0, time.process_time() + 0.1
        while time.process_time() < end:
            for _ in range(10000):
                n += 1
        return "burnt"
    if p == "/alloc":
        b = bytearray(50 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        return str(len(b))
    if p == "/crash":
        os._exit(3)
    if p == "/env":
        return os.environ.get("GREETING", "")
    if p == "/pid":
        return str(os.getpid())
    if p == "/cwd":
        return os.getcwd()
    return "unknown"
`,
}, {
	runtime: "node", command: "node", handlerFile: "handler.js", emptyErrorName: "Error",
	noHandle:    "module.exports = 42;\n",
	importFails: "throw new Error('boom at import');\n",
	handler: `let meeting = [];
module.exports = async (req) => {
  switch (req.path) {
    case '/meet':
      return await new Promise((resolve) => {
        meeting.push(resolve);
        if (meeting.length === 4) {
          meeting.forEach((r) => r('met'));
          meeting = [];
        } else {
          setTimeout(() => resolve('alone'), 20000);
        }
      });
    case '/echo':
      return { status: 200, headers: { 'X-Method': req.method, 'X-Path': req.path, 'X-Query': req.query,
        'X-In': req.headers['X-In'] || '', 'X-All': req.rawHeaders.filter(([k]) => k === 'X-In').map(([, v]) => v) }, body: req.body };
    case '/json': return { a: 1, b: [1, 2] };
    case '/list': return [1, 2];
    case '/str': return 'h\u00e9llo';
    case '/bytes': return Buffer.from([0, 1]);
    case '/none': return undefined;
    case '/tuple': return { status: 201, headers: { 'X-T': ['a', 'b'] }, body: { made: true } };
    case '/raise': throw new Error('bad thing');
    case '/raise-empty': throw new Error();
    case '/badtype': return () => 1;
    case '/print':
      for (let i = 0; i < 2000; i++) console.log('x'.repeat(1000));
      return 'intact';
    case '/sleep': await new Promise((r) => setTimeout(r, 200)); return 'slept';
    case '/loop':
      while (!req.cancelled) await new Promise((r) => setTimeout(r, 5));
      console.error('cancelled', req.id);
      return 'late';
    case '/burn': {
      const end = process.cpuUsage().user + 100000;
      while (process.cpuUsage().user < end);
      return 'burnt';
    }
    case '/alloc': return String(Buffer.alloc(50 << 20).fill(1).length);
    case '/crash': process.exit(3);
    case '/env': return process.env.GREETING || '';
    case '/pid': return String(process.pid);
    case '/cwd': return process.cwd();
  }
  return 'unknown';
};
`,
}, {
	runtime: "ruby", command: "ruby", handlerFile: "handler.rb", emptyErrorName: "RuntimeError",
	noHandle:    "def nothing(req)\nend\n",
	importFails: "raise 'boom at import'\n",
	handler: `$meeting = { lock: Mutex.new, arrived: ConditionVariable.new, count: 0 }

def handle(req)
  case req.path
  when "/meet"
    m = $meeting
    m[:lock].synchronize do
      m[:count] += 1
      m[:arrived].broadcast
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
      while m[:count] < 4
        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        break if left <= 0
        m[:arrived].wait(m[:lock], left)
      end
      m[:count] >= 4 ? "met" : "alone"
    end
  when "/echo"
    [200, { "X-Method" => req.method, "X-Path" => req.path, "X-Query" => req.query,
            "X-In" => req.headers.fetch("X-In", ""),
            "X-All" => req.header_list.select { |k, _| k == "X-In" }.map { |_, v| v } }, req.body]
  when "/json" then { a: 1, b: [1, 2] }
  when "/list" then [1, 2]
  when "/str" then "h\u00e9llo"
  when "/bytes" then "\x00\x01".b
  when "/none" then nil
  when "/tuple" then [201, { "X-T" => ["a", "b"] }, { made: true }]
  when "/raise" then raise ArgumentError, "bad thing"
  when "/raise-empty" then raise RuntimeError, ""
  when "/badtype" then 3.5
  when "/print"
    2000.times { puts "x" * 1000 }
    "intact"
  when "/sleep"
    sleep 0.2
    "slept"
  when "/loop"
    sleep 0.005 until req.cancelled?
    $stderr.puts "cancelled #{req.id}"
    "late"
  when "/burn"
    n = 0
    finish = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) + 0.1
    while Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) < finish
      10_000.times { n += 1 }
    end
    "burnt"
  when "/alloc"
    ("\x01".b * (50 << 20)).bytesize.to_s
  when "/crash" then exit!(3)
  when "/env" then ENV.fetch("GREETING", "")
  when "/pid" then Process.pid.to_s
  when "/cwd" then Dir.pwd
  else "unknown"
  end
end
`,
}}

// forEachLanguage runs test once per language, in a subtest.
func forEachLanguage(t *testing.T, test func(t *testing.T, l language)) {
	for _, l := range languages {
		t.Run(l.runtime, func(t *testing.T) {
			requireCommand(t, l.command)
			test(t, l)
		})
	}
}

// start serves l's handler in function mode with env added, and returns
// the session once it said Ready.
func start(t *testing.T, l language, env ...string) (*session, *running) {
	t.Helper()
	a := newAgent(t)
	dir, handler := l.functionDir(t, l.handler)
	r := a.serve(t, worker.Config{
		Runtime: l.runtime, Function: "hello", CodeDir: dir, Handler: handler,
		Env: append(os.Environ(), env...),
	})
	s := a.session(t, r)
	t.Cleanup(s.close)
	if s.ready.Runtime != l.runtime || s.ready.Function != "hello" || s.ready.Pid != int32(os.Getpid()) || s.ready.Version == "" {
		t.Errorf("Ready = %v", s.ready)
	}
	return s, r
}

func TestRequestReachesHandler(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		s, _ := start(t, l)
		s.invoke(t, &pb.Invoke{
			CallId: "e1", Method: "PUT", Path: "/echo", Query: "a=1&b=2",
			Headers: []*pb.Header{{Key: "X-In", Value: "1"}, {Key: "X-In", Value: "2"}, {Key: "X-Other", Value: "\x01 \"é\" \\"}},
			Body:    []byte("body \x00\xff bytes"),
		})
		r := s.result(t, "e1")
		if r.Status != 200 || r.Error != "" || string(r.Body) != "body \x00\xff bytes" {
			t.Errorf("result %v", r)
		}
		for key, want := range map[string]string{"X-Method": "PUT", "X-Path": "/echo", "X-Query": "a=1&b=2", "X-In": "2", "X-All": "1,2"} {
			if got := header(r, key); got != want {
				t.Errorf("%s = %q, want %q", key, got, want)
			}
		}
		// A big body, written apart from its frame's header both ways.
		big := strings.Repeat("0123456789", 100_000)
		if r := s.call(t, "e2", "/echo", big); string(r.Body) != big {
			t.Errorf("a body of %d bytes came back as %d bytes", len(big), len(r.Body))
		}
	})
}

func TestReturnConventions(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		s, _ := start(t, l)
		for i, tt := range []struct {
			path, body, contentType, err string
			status                       int32
		}{
			{path: "/json", body: `{"a": 1, "b": [1, 2]}`, contentType: "application/json", status: 200},
			{path: "/list", body: `[1, 2]`, contentType: "application/json", status: 200},
			{path: "/str", body: "héllo", status: 200},
			{path: "/bytes", body: "\x00\x01", status: 200},
			{path: "/none", body: "", status: 200},
			{path: "/tuple", body: `{"made": true}`, contentType: "application/json", status: 201},
			{path: "/raise", err: "bad thing", status: 500},
			{path: "/raise-empty", err: l.emptyErrorName, status: 500},
		} {
			r := s.call(t, "c"+strconv.Itoa(i), tt.path, "")
			body := string(r.Body)
			if tt.contentType == "application/json" {
				body = strings.ReplaceAll(body, " ", "")
				tt.body = strings.ReplaceAll(tt.body, " ", "")
			}
			if r.Status != tt.status || body != tt.body || r.Error != tt.err || header(r, "Content-Type") != tt.contentType {
				t.Errorf("%s: status %d body %q error %q content-type %q; want %d %q %q %q",
					tt.path, r.Status, r.Body, r.Error, header(r, "Content-Type"), tt.status, tt.body, tt.err, tt.contentType)
			}
		}
		if r := s.call(t, "t", "/tuple", ""); header(r, "X-T") != "a,b" {
			t.Errorf("a repeated header came back as %v", r.Headers)
		}
		if r := s.call(t, "bad", "/badtype", ""); r.Status != 500 || !strings.Contains(r.Error, "handler returned a") {
			t.Errorf("an unsupported return value gave %v", r)
		}
	})
}

func TestPrintingHandlerAnswersIntact(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		s, r := start(t, l)
		if res := s.call(t, "p", "/print", ""); res.Status != 200 || string(res.Body) != "intact" {
			t.Errorf("result %v", res)
		}
		line := strings.Repeat("x", 1000) + "\n"
		waitFor(t, func() bool { return strings.Count(r.logs.String(), line) == 2000 }, "the 2000 lines printed to reach the logs")
	})
}

// TestCallsOverlap checks that with concurrency 4 four calls run at once:
// each waits (up to 20 s) until all four have arrived in the handler.
func TestCallsOverlap(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		s, _ := start(t, l, "KILN_CONCURRENCY=4")
		for i := range 4 {
			s.invoke(t, &pb.Invoke{CallId: "m" + strconv.Itoa(i), Path: "/meet"})
		}
		for i := range 4 {
			if r := s.result(t, "m"+strconv.Itoa(i)); string(r.Body) != "met" {
				t.Errorf("call %d of 4 with concurrency 4: %v (want all four in the handler at once)", i, r)
			}
		}
	})
}

// TestUsageCoversWorker checks that a call's CPU and memory figures are
// the worker's: a handler burning 100ms of CPU, or touching 50 MB.
func TestUsageCoversWorker(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		s, _ := start(t, l)
		if r := s.call(t, "burn", "/burn", ""); string(r.Body) != "burnt" || r.CpuUserNs < int64(50*time.Millisecond) {
			t.Errorf("a call burning 100ms of CPU: %q, cpu %v user %v system", r.Body, time.Duration(r.CpuUserNs), time.Duration(r.CpuSysNs))
		}
		if r := s.call(t, "alloc", "/alloc", ""); string(r.Body) != strconv.Itoa(50<<20) || r.MaxRssBytes < 40<<20 {
			t.Errorf("a call touching 50 MB: %q, max rss %d bytes", r.Body, r.MaxRssBytes)
		}
	})
}

// TestCancelReachesWorker checks that a Cancel, and a deadline, end the
// call at once, reach the handler (which logs it), and leave the worker
// serving.
func TestCancelReachesWorker(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		for _, concurrency := range []string{"1", "4"} {
			t.Run("concurrency "+concurrency, func(t *testing.T) {
				s, r := start(t, l, "KILN_CONCURRENCY="+concurrency)
				s.invoke(t, &pb.Invoke{CallId: "loop-1", Path: "/loop"})
				time.Sleep(50 * time.Millisecond)
				begin := time.Now()
				s.cancel(t, "loop-1")
				if res := s.result(t, "loop-1"); res.Error != "context canceled" || res.Status != 500 {
					t.Errorf("cancelled call's result %v", res)
				}
				if took := time.Since(begin); took > time.Second {
					t.Errorf("the cancelled call answered after %v", took)
				}
				waitFor(t, func() bool { return strings.Contains(r.logs.String(), "cancelled loop-1") }, "the handler to see the cancel")

				s.invoke(t, &pb.Invoke{CallId: "loop-2", Path: "/loop", DeadlineUnixNano: time.Now().Add(100 * time.Millisecond).UnixNano()})
				if res := s.result(t, "loop-2"); res.Error != "context deadline exceeded" {
					t.Errorf("result of a call past its deadline %v", res)
				}
				waitFor(t, func() bool { return strings.Contains(r.logs.String(), "cancelled loop-2") }, "the handler to see the deadline")
				if res := s.call(t, "after", "/str", ""); string(res.Body) != "héllo" {
					t.Errorf("result after a cancel %v", res)
				}
			})
		}
	})
}

// TestWorkerCrash checks that a worker's exit ends the session with no
// result for the calls in flight (the agent answers them 502, the
// container's failure) and ends Serve with the exit status.
func TestWorkerCrash(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		s, r := start(t, l, "KILN_CONCURRENCY=4")
		s.invoke(t, &pb.Invoke{CallId: "inflight", Path: "/sleep"})
		s.invoke(t, &pb.Invoke{CallId: "crash", Path: "/crash"})
		for m := range s.msgs {
			if res := m.GetResult(); res != nil {
				t.Errorf("a result was sent after the crash: %v", res)
			}
		}
		err := r.wait(t)
		if !errors.Is(err, worker.ErrExited) || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("Serve returned %v", err)
		}
		if !strings.Contains(r.logs.String(), "exited: exit status 3") {
			t.Errorf("the exit status is not in the logs:\n%s", r.logs.String())
		}
	})
}

func TestLoadError(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		noHandleError := l.noHandleError
		if noHandleError == "" {
			noHandleError = "TypeError"
		}
		for name, tt := range map[string]struct{ source, want string }{
			"no handler":   {l.noHandle, noHandleError},
			"import fails": {l.importFails, "boom at import"},
		} {
			t.Run(name, func(t *testing.T) {
				a := newAgent(t)
				dir, handler := l.functionDir(t, tt.source)
				r := a.serve(t, worker.Config{Runtime: l.runtime, CodeDir: dir, Handler: handler})
				err := r.wait(t)
				if !errors.Is(err, worker.ErrLoad) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Serve returned %v, want a load error with %q", err, tt.want)
				}
			})
		}
	})
}

// TestStem checks stem mode: Ready with no function, then Init loads the
// function in the worker already running.
func TestStem(t *testing.T) {
	forEachLanguage(t, func(t *testing.T, l language) {
		a := newAgent(t)
		r := a.serve(t, worker.Config{Runtime: l.runtime})
		s := a.session(t, r)
		if s.ready.Function != "" || s.ready.Runtime != l.runtime {
			t.Errorf("stem Ready = %v", s.ready)
		}
		stemPid := workerPid(t)
		dir, handler := l.functionDir(t, l.handler)
		s.send(t, &pb.AgentMsg{Msg: &pb.AgentMsg_Init{Init: &pb.Init{
			Function: "hello", CodePath: dir, Handler: handler, Env: map[string]string{"GREETING": "from init"},
		}}})
		s.close()
		s = a.session(t, r)
		t.Cleanup(s.close)
		if s.ready.Function != "hello" || s.ready.Runtime != l.runtime {
			t.Errorf("Ready after Init = %v", s.ready)
		}
		if res := s.call(t, "pid", "/pid", ""); string(res.Body) != strconv.Itoa(stemPid) {
			t.Errorf("the function runs in process %s, the stem's worker was %d", res.Body, stemPid)
		}
		if res := s.call(t, "env", "/env", ""); string(res.Body) != "from init" {
			t.Errorf("GREETING = %q", res.Body)
		}
		if res := s.call(t, "cwd", "/cwd", ""); string(res.Body) != dir {
			t.Errorf("working directory %q, want %q", res.Body, dir)
		}
	})
}

// workerPid returns the pid of the test's one child process.
func workerPid(t *testing.T) int {
	t.Helper()
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, not ')'.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("children of the test: %v, want one worker", pids)
	}
	return pids[0]
}

// waitFor waits up to 5s for cond.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Errorf("timed out waiting for %s", what)
}
