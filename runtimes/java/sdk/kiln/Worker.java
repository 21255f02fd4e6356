package kiln;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * kiln's Java worker: the Java side of the executor's frame protocol (the
 * doc comment of kiln's package executor/worker). It reads frames from fd 3
 * and writes frames to fd 4, opened as /proc/self/fd/3 and /proc/self/fd/4;
 * stdout and stderr are the function's logs.
 *
 * <p>The handler is a class (the load frame's handler, a class file
 * relative to the code directory: Handler.class is the class Handler) with
 * a method {@code public static Object handle(kiln.Request req)}. It is
 * loaded by a new class loader on the code directory, whose parent is the
 * worker's, so that a stem cell's JVM, up before the code is known, loads
 * it as well. Its return value is the answer:
 * <ul>
 * <li>byte[]: the body; String: the body, UTF-8; null: an empty body;
 * <li>a {@link Response}: status, headers and a body of these forms;
 * <li>a Map, List, array, Number or Boolean: the body as JSON, with
 * Content-Type application/json.
 * </ul>
 * An exception answers 500 with its message (its class name when it has
 * none); its stack trace goes to stderr.
 *
 * <p>Calls run on a pool of KILN_CONCURRENCY threads (default 1). A
 * cancelled call keeps running ({@link Request#cancelled()} turns true) and
 * its result is dropped.
 *
 * <p>load sets the function's environment: System.getenv sees it (the
 * process's environment map is updated, which needs
 * --add-opens=java.base/java.util=ALL-UNNAMED; without it only
 * {@link #getenv} does). Java cannot change its working directory: a
 * function started as one has the code directory as its working
 * directory; in a stem cell, {@link #codeDir} is where its files are.
 */
public final class Worker {
    private static final int MAX_HEADER = 1 << 20;
    private static final int MAX_BODY = 64 << 20;

    private static final Map<String, String> env = new ConcurrentHashMap<>(System.getenv());
    private static volatile File codeDir = new File(System.getProperty("user.dir"));

    private final DataInputStream in;
    private final OutputStream out;
    private final Map<String, Request> inFlight = new ConcurrentHashMap<>();
    private Method handle;
    private ExecutorService pool;

    private Worker(DataInputStream in, OutputStream out) {
        this.in = in;
        this.out = out;
    }

    /** getenv returns the function's environment variable name, or null. */
    public static String getenv(String name) {
        return env.get(name);
    }

    /** codeDir is the function's code directory. */
    public static File codeDir() {
        return codeDir;
    }

    public static void main(String[] args) throws Exception {
        DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream("/proc/self/fd/3"), 64 << 10));
        OutputStream out = new BufferedOutputStream(new FileOutputStream("/proc/self/fd/4"), 64 << 10);
        try {
            new Worker(in, out).serve();
        } catch (Throwable e) {
            System.err.println("kiln worker: " + e);
            System.err.flush();
            System.exit(1);
        }
        System.exit(0);
    }

    private void serve() throws IOException {
        StringBuilder ready = new StringBuilder("{\"t\":\"ready\",\"version\":");
        Json.string(ready, System.getProperty("java.version"));
        send(ready.append('}').toString(), null);
        for (;;) {
            int hl, bl;
            try {
                hl = in.readInt();
            } catch (EOFException e) {
                return;
            }
            bl = in.readInt();
            if (hl < 0 || hl > MAX_HEADER || bl < 0 || bl > MAX_BODY) {
                throw new IOException("frame over the limits");
            }
            byte[] hb = new byte[hl];
            in.readFully(hb);
            byte[] body = new byte[bl];
            in.readFully(body);
            Object parsed = Json.parse(new String(hb, StandardCharsets.UTF_8));
            if (!(parsed instanceof Map)) {
                throw new IOException("frame header is not a JSON object");
            }
            Map<?, ?> h = (Map<?, ?>) parsed;
            switch (str(h, "t")) {
                case "call":
                    call(h, body);
                    break;
                case "cancel": {
                    Request r = inFlight.remove(str(h, "id"));
                    if (r != null) {
                        r.cancel();
                    }
                    break;
                }
                case "load":
                    load(h);
                    break;
                default: // kinds this worker does not know are ignored
            }
        }
    }

    private static String str(Map<?, ?> h, String key) {
        Object v = h.get(key);
        return v instanceof String ? (String) v : "";
    }

    private void load(Map<?, ?> h) throws IOException {
        StringBuilder b = new StringBuilder();
        try {
            if (h.get("env") instanceof Map) {
                for (Map.Entry<?, ?> e : ((Map<?, ?>) h.get("env")).entrySet()) {
                    if (e.getValue() instanceof String) {
                        env.put(String.valueOf(e.getKey()), (String) e.getValue());
                    }
                }
                setProcessEnv(env);
            }
            File dir = new File(str(h, "dir"));
            codeDir = dir;
            String handler = str(h, "handler");
            if (!handler.endsWith(".class")) {
                throw new IllegalArgumentException("handler " + handler + " is not a class file");
            }
            String name = handler.substring(0, handler.length() - ".class".length()).replace('/', '.');
            ClassLoader loader = new URLClassLoader(new URL[] {dir.toURI().toURL()}, Worker.class.getClassLoader());
            Class<?> cls = Class.forName(name, true, loader);
            Method m = cls.getMethod("handle", Request.class);
            if (!Modifier.isStatic(m.getModifiers())) {
                throw new NoSuchMethodException(name + ".handle(kiln.Request) is not static");
            }
            handle = m;
            int n = 1;
            try {
                n = Math.max(1, Integer.parseInt(env.getOrDefault("KILN_CONCURRENCY", "1")));
            } catch (NumberFormatException e) {
                // the default
            }
            pool = Executors.newFixedThreadPool(n, r -> {
                Thread t = new Thread(r, "kiln-call");
                t.setDaemon(true);
                return t;
            });
            send("{\"t\":\"loaded\"}", null);
        } catch (Throwable e) {
            Throwable cause = e instanceof ExceptionInInitializerError && e.getCause() != null ? e.getCause() : e;
            cause.printStackTrace();
            b.append("{\"t\":\"load_error\",\"error\":");
            Json.string(b, cause.toString());
            send(b.append('}').toString(), null);
        }
    }

    // setProcessEnv makes System.getenv return env, where the JVM allows it.
    @SuppressWarnings("unchecked")
    private static void setProcessEnv(Map<String, String> env) {
        try {
            Map<String, String> unmodifiable = System.getenv();
            Field f = unmodifiable.getClass().getDeclaredField("m");
            f.setAccessible(true);
            ((Map<String, String>) f.get(unmodifiable)).putAll(env);
        } catch (ReflectiveOperationException | RuntimeException e) {
            // Not opened to this module: Worker.getenv still has it.
        }
    }

    private void call(Map<?, ?> h, byte[] body) {
        List<String[]> headers = new ArrayList<>();
        if (h.get("headers") instanceof List) {
            for (Object kv : (List<?>) h.get("headers")) {
                if (kv instanceof List && ((List<?>) kv).size() == 2
                        && ((List<?>) kv).get(0) instanceof String && ((List<?>) kv).get(1) instanceof String) {
                    headers.add(new String[] {(String) ((List<?>) kv).get(0), (String) ((List<?>) kv).get(1)});
                }
            }
        }
        long deadline = 0;
        if (h.get("deadline_ms") instanceof Double && (Double) h.get("deadline_ms") > 0) {
            deadline = System.currentTimeMillis() + ((Double) h.get("deadline_ms")).longValue();
        }
        Request req = new Request(str(h, "id"), str(h, "method"), str(h, "path"), str(h, "query"), headers, body, deadline);
        inFlight.put(req.id, req);
        if (handle == null) {
            result(req, 500, null, null, "no handler loaded");
            return;
        }
        pool.execute(() -> run(req));
    }

    /** THREADS measures the CPU time of the thread running a call. */
    private static final ThreadMXBean THREADS = ManagementFactory.getThreadMXBean();

    /**
     * usage returns the result header's usage members for a call whose
     * thread had used cpu0 ns of CPU, user0 of it in user mode, when the call
     * began: the thread's CPU since (the JIT's and the collector's threads
     * are not counted) and the process's peak resident memory (VmHWM).
     */
    private static String usage(long cpu0, long user0) {
        StringBuilder b = new StringBuilder();
        long cpu = THREADS.getCurrentThreadCpuTime() - cpu0, user = THREADS.getCurrentThreadUserTime() - user0;
        if (cpu0 >= 0 && user0 >= 0) {
            b.append(",\"cpu_user_us\":").append(user / 1000).append(",\"cpu_sys_us\":").append(Math.max(0, cpu - user) / 1000);
        }
        long hwm = peakResidentKB();
        if (hwm > 0) {
            b.append(",\"max_rss_kb\":").append(hwm);
        }
        return b.toString();
    }

    private static java.io.RandomAccessFile status;
    private static final byte[] STATUS_BUF = new byte[8192];
    private static final byte[] VMHWM = "VmHWM:".getBytes(StandardCharsets.US_ASCII);

    /**
     * peakResidentKB returns the process's peak resident set (VmHWM of
     * /proc/self/status) in KiB, or 0 when it cannot be read. The file is
     * opened once and read again from its start, with no allocation.
     */
    private static synchronized long peakResidentKB() {
        try {
            if (status == null) {
                status = new java.io.RandomAccessFile("/proc/self/status", "r");
            }
            status.seek(0);
            int n = 0, r;
            while (n < STATUS_BUF.length && (r = status.read(STATUS_BUF, n, STATUS_BUF.length - n)) > 0) {
                n += r;
            }
            outer:
            for (int i = 0; i + VMHWM.length <= n; i++) {
                for (int j = 0; j < VMHWM.length; j++) {
                    if (STATUS_BUF[i + j] != VMHWM[j]) {
                        continue outer;
                    }
                }
                long kb = 0;
                for (int k = i + VMHWM.length; k < n && STATUS_BUF[k] != '\n'; k++) {
                    if (STATUS_BUF[k] >= '0' && STATUS_BUF[k] <= '9') {
                        kb = kb * 10 + (STATUS_BUF[k] - '0');
                    }
                }
                return kb;
            }
        } catch (IOException e) {
            // No figure: the executor's own stands.
        }
        return 0;
    }

    private void run(Request req) {
        long cpu0 = THREADS.getCurrentThreadCpuTime(), user0 = THREADS.getCurrentThreadUserTime();
        req.usage = () -> usage(cpu0, user0);
        Object v;
        try {
            v = handle.invoke(null, req);
        } catch (InvocationTargetException e) {
            fail(req, e.getCause() != null ? e.getCause() : e);
            return;
        } catch (Throwable e) {
            fail(req, e);
            return;
        }
        try {
            int status = 200;
            Map<String, Object> headers = null;
            if (v instanceof Response) {
                Response r = (Response) v;
                status = r.status == 0 ? 200 : r.status;
                headers = r.headers;
                v = r.body;
            }
            byte[] body;
            String contentType = null;
            if (v == null) {
                body = new byte[0];
            } else if (v instanceof byte[]) {
                body = (byte[]) v;
            } else if (v instanceof String) {
                body = ((String) v).getBytes(StandardCharsets.UTF_8);
            } else if (v instanceof Map || v instanceof java.util.Collection || v instanceof Object[]
                    || v instanceof Number || v instanceof Boolean) {
                StringBuilder b = new StringBuilder();
                Json.write(b, v);
                body = b.toString().getBytes(StandardCharsets.UTF_8);
                contentType = "application/json";
            } else {
                throw new IllegalArgumentException("handler returned a " + v.getClass().getName()
                        + " (want byte[], String, null, kiln.Response, or a Map, List, Number or Boolean for JSON)");
            }
            StringBuilder hs = new StringBuilder("[");
            boolean hasContentType = false;
            if (headers != null) {
                for (Map.Entry<String, Object> e : headers.entrySet()) {
                    hasContentType |= e.getKey().equalsIgnoreCase("Content-Type");
                    List<?> values = e.getValue() instanceof List ? (List<?>) e.getValue() : List.of(String.valueOf(e.getValue()));
                    for (Object value : values) {
                        header(hs, e.getKey(), String.valueOf(value));
                    }
                }
            }
            if (contentType != null && !hasContentType) {
                header(hs, "Content-Type", contentType);
            }
            result(req, status, hs.append(']').toString(), body, null);
        } catch (Throwable e) {
            fail(req, e);
        }
    }

    private static void header(StringBuilder hs, String k, String v) {
        if (hs.length() > 1) {
            hs.append(',');
        }
        hs.append('[');
        Json.string(hs, k);
        hs.append(',');
        Json.string(hs, v);
        hs.append(']');
    }

    private void fail(Request req, Throwable e) {
        String msg = e.getMessage() == null || e.getMessage().isEmpty() ? e.getClass().getName() : e.getMessage();
        synchronized (System.err) {
            System.err.println("kiln: call " + req.id + " failed:");
            e.printStackTrace();
        }
        result(req, 500, null, null, msg);
    }

    private void result(Request req, int status, String headers, byte[] body, String error) {
        if (inFlight.remove(req.id) == null) {
            return; // cancelled: no result
        }
        StringBuilder b = new StringBuilder("{\"t\":\"result\",\"id\":");
        Json.string(b, req.id);
        b.append(",\"status\":").append(status);
        if (headers != null) {
            b.append(",\"headers\":").append(headers);
        }
        if (error != null) {
            b.append(",\"error\":");
            Json.string(b, error);
        }
        if (req.usage != null) {
            b.append(req.usage.get());
        }
        try {
            send(b.append('}').toString(), body);
        } catch (IOException e) {
            System.err.println("kiln worker: " + e);
            System.exit(1);
        }
    }

    private synchronized void send(String header, byte[] body) throws IOException {
        byte[] hb = header.getBytes(StandardCharsets.UTF_8);
        int bl = body == null ? 0 : body.length;
        byte[] prefix = {
            (byte) (hb.length >>> 24), (byte) (hb.length >>> 16), (byte) (hb.length >>> 8), (byte) hb.length,
            (byte) (bl >>> 24), (byte) (bl >>> 16), (byte) (bl >>> 8), (byte) bl,
        };
        out.write(prefix);
        out.write(hb);
        if (bl > 0) {
            out.write(body);
        }
        out.flush();
    }
}
