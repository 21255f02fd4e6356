package worker_test

import (
	"testing"

	"github.com/kilnfx/kiln/executor/worker"
)

// The java runtime runs the shared suite of worker_test.go, its handler
// compiled with kiln deploy's build.
func init() {
	languages = append(languages, language{
		runtime: "java", command: "java", emptyErrorName: "java.lang.RuntimeException",
		noHandle:      "public class Handler {\n    public static Object other(kiln.Request req) { return null; }\n}\n",
		importFails:   "public class Handler {\n    static { if (true) throw new RuntimeException(\"boom at import\"); }\n    public static Object handle(kiln.Request req) { return null; }\n}\n",
		noHandleError: "NoSuchMethodException",
		compile: func(t *testing.T, source string) (string, string) {
			return worker.CompileJava(t, source)
		},
		handler: `import java.util.*;

public class Handler {
    static final java.util.concurrent.CyclicBarrier MEETING = new java.util.concurrent.CyclicBarrier(4);

    public static Object handle(kiln.Request req) throws Exception {
        switch (req.path) {
            case "/echo": {
                List<String> all = new ArrayList<>();
                for (String[] kv : req.headerList) if (kv[0].equals("X-In")) all.add(kv[1]);
                Map<String, Object> h = new LinkedHashMap<>();
                h.put("X-Method", req.method);
                h.put("X-Path", req.path);
                h.put("X-Query", req.query);
                h.put("X-In", req.headers.getOrDefault("X-In", ""));
                h.put("X-All", all);
                return new kiln.Response(200, h, req.body);
            }
            case "/json": {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("a", 1);
                m.put("b", List.of(1, 2));
                return m;
            }
            case "/list": return List.of(1, 2);
            case "/str": return "h\u00e9llo";
            case "/bytes": return new byte[] {0, 1};
            case "/none": return null;
            case "/tuple": return new kiln.Response(201, Map.of("X-T", List.of("a", "b")), Map.of("made", true));
            case "/raise": throw new IllegalStateException("bad thing");
            case "/raise-empty": throw new RuntimeException();
            case "/badtype": return new Object();
            case "/print":
                for (int i = 0; i < 2000; i++) System.out.println("x".repeat(1000));
                return "intact";
            case "/sleep": Thread.sleep(200); return "slept";
            case "/meet":
                try {
                    MEETING.await(20, java.util.concurrent.TimeUnit.SECONDS);
                    return "met";
                } catch (java.util.concurrent.TimeoutException | java.util.concurrent.BrokenBarrierException e) {
                    return "alone";
                }
            case "/burn": {
                java.lang.management.ThreadMXBean t = java.lang.management.ManagementFactory.getThreadMXBean();
                long start = t.getCurrentThreadUserTime();
                long x = 0;
                while (t.getCurrentThreadUserTime() - start < 100_000_000L) {
                    for (int i = 0; i < 100000; i++) {
                        x += i * 31L;
                    }
                }
                return x == 42 ? "never" : "burnt";
            }
            case "/alloc": {
                byte[] b = new byte[50 << 20];
                for (int i = 0; i < b.length; i += 4096) {
                    b[i] = 1;
                }
                return String.valueOf(b.length);
            }
            case "/loop":
                while (!req.cancelled()) Thread.sleep(5);
                System.err.println("cancelled " + req.id);
                return "late";
            case "/crash": Runtime.getRuntime().halt(3);
            case "/env": { String g = System.getenv("GREETING"); return g == null ? "" : g; }
            case "/pid": return String.valueOf(ProcessHandle.current().pid());
            case "/cwd": return kiln.Worker.codeDir().getPath();
        }
        return "unknown";
    }
}
`,
	})
}
