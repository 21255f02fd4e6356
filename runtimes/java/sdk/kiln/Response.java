package kiln;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A response with a status and headers. A header's value is a String, or a
 * List of them (the header repeats). The body follows the conventions of a
 * handler's return value: byte[], String, null, or anything else as JSON.
 */
public final class Response {
    public final int status;
    public final Map<String, Object> headers;
    public final Object body;

    public Response(int status, Map<String, ?> headers, Object body) {
        this.status = status;
        this.headers = headers == null ? Collections.emptyMap() : Collections.unmodifiableMap(new LinkedHashMap<>(headers));
        this.body = body;
    }

    public Response(int status, Object body) {
        this(status, null, body);
    }
}
