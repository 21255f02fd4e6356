package kiln;

import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One call of a kiln function.
 *
 * <p>{@code headers} maps each header name, as sent, to its last value;
 * {@code headerList} holds every (name, value) in order.
 */
public final class Request {
    /** The call's id, unique among the calls in flight. */
    public final String id;
    /** The method, e.g. "POST". */
    public final String method;
    /** The path after the function's name, e.g. "/a/b"; may be empty. */
    public final String path;
    /** The raw query string, without '?'. */
    public final String query;
    /** Each header name, as sent, to its last value. */
    public final Map<String, String> headers;
    /** Every header as a two-element array {name, value}, in order. */
    public final List<String[]> headerList;
    /** The request body, raw. */
    public final byte[] body;
    /** System.currentTimeMillis() at which the caller gives up, or 0. */
    public final long deadline;

    private volatile boolean cancelled;

    /** usage makes the result's usage members, on the call's thread; set by the worker. */
    java.util.function.Supplier<String> usage;

    Request(String id, String method, String path, String query, List<String[]> headerList, byte[] body, long deadline) {
        this.id = id;
        this.method = method;
        this.path = path;
        this.query = query;
        this.headerList = Collections.unmodifiableList(headerList);
        Map<String, String> h = new LinkedHashMap<>();
        for (String[] kv : headerList) {
            h.put(kv[0], kv[1]);
        }
        this.headers = Collections.unmodifiableMap(h);
        this.body = body;
        this.deadline = deadline;
    }

    /** The body decoded as UTF-8. */
    public String text() {
        return new String(body, StandardCharsets.UTF_8);
    }

    /** Whether the caller gave up on this call; its result is then dropped. */
    public boolean cancelled() {
        return cancelled;
    }

    void cancel() {
        cancelled = true;
    }
}
