package kiln;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small JSON reader and writer. Objects read as LinkedHashMap (the last
 * of a repeated key wins), arrays as ArrayList, numbers as Double.
 */
public final class Json {
    private static final int MAX_DEPTH = 64;

    private final String s;
    private int i;

    private Json(String s) {
        this.s = s;
    }

    /** parse returns the value of the JSON text s, or throws IllegalArgumentException. */
    public static Object parse(String s) {
        Json p = new Json(s);
        Object v = p.value(0);
        p.space();
        if (p.i != s.length()) {
            throw p.fail("data after the JSON value");
        }
        return v;
    }

    private IllegalArgumentException fail(String what) {
        return new IllegalArgumentException("JSON: " + what + " at offset " + i);
    }

    private void space() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                return;
            }
            i++;
        }
    }

    private void expect(String word) {
        if (!s.startsWith(word, i)) {
            throw fail("invalid literal");
        }
        i += word.length();
    }

    private Object value(int depth) {
        if (depth > MAX_DEPTH) {
            throw fail("nested too deep");
        }
        space();
        if (i >= s.length()) {
            throw fail("unexpected end");
        }
        char c = s.charAt(i);
        switch (c) {
            case '{': {
                i++;
                Map<String, Object> m = new LinkedHashMap<>();
                space();
                if (i < s.length() && s.charAt(i) == '}') {
                    i++;
                    return m;
                }
                for (;;) {
                    space();
                    if (i >= s.length() || s.charAt(i) != '"') {
                        throw fail("want a member name");
                    }
                    String k = string();
                    space();
                    if (i >= s.length() || s.charAt(i) != ':') {
                        throw fail("want ':'");
                    }
                    i++;
                    m.put(k, value(depth + 1));
                    space();
                    if (i < s.length() && s.charAt(i) == ',') {
                        i++;
                        continue;
                    }
                    if (i < s.length() && s.charAt(i) == '}') {
                        i++;
                        return m;
                    }
                    throw fail("want ',' or '}'");
                }
            }
            case '[': {
                i++;
                List<Object> l = new ArrayList<>();
                space();
                if (i < s.length() && s.charAt(i) == ']') {
                    i++;
                    return l;
                }
                for (;;) {
                    l.add(value(depth + 1));
                    space();
                    if (i < s.length() && s.charAt(i) == ',') {
                        i++;
                        continue;
                    }
                    if (i < s.length() && s.charAt(i) == ']') {
                        i++;
                        return l;
                    }
                    throw fail("want ',' or ']'");
                }
            }
            case '"':
                return string();
            case 't':
                expect("true");
                return Boolean.TRUE;
            case 'f':
                expect("false");
                return Boolean.FALSE;
            case 'n':
                expect("null");
                return null;
            default:
                return number();
        }
    }

    private int digits() {
        int start = i;
        while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
            i++;
        }
        return i - start;
    }

    private Double number() {
        int start = i;
        if (i < s.length() && s.charAt(i) == '-') {
            i++;
        }
        if (i < s.length() && s.charAt(i) == '0') {
            i++;
        } else if (digits() == 0) {
            throw fail("invalid value");
        }
        if (i < s.length() && s.charAt(i) == '.') {
            i++;
            if (digits() == 0) {
                throw fail("invalid number");
            }
        }
        if (i < s.length() && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
            i++;
            if (i < s.length() && (s.charAt(i) == '+' || s.charAt(i) == '-')) {
                i++;
            }
            if (digits() == 0) {
                throw fail("invalid number");
            }
        }
        return Double.valueOf(s.substring(start, i));
    }

    // string parses a string, i at its opening quote. Java strings are
    // UTF-16, so a \\u escape is one char and surrogate pairs need no work.
    private String string() {
        i++;
        StringBuilder b = new StringBuilder();
        for (;;) {
            if (i >= s.length()) {
                throw fail("unterminated string");
            }
            char c = s.charAt(i++);
            if (c == '"') {
                return b.toString();
            }
            if (c < 0x20) {
                throw fail("control character in a string");
            }
            if (c != '\\') {
                b.append(c);
                continue;
            }
            if (i >= s.length()) {
                throw fail("unterminated string");
            }
            char e = s.charAt(i++);
            switch (e) {
                case '"': b.append('"'); break;
                case '\\': b.append('\\'); break;
                case '/': b.append('/'); break;
                case 'b': b.append('\b'); break;
                case 'f': b.append('\f'); break;
                case 'n': b.append('\n'); break;
                case 'r': b.append('\r'); break;
                case 't': b.append('\t'); break;
                case 'u':
                    if (i + 4 > s.length()) {
                        throw fail("truncated \\u escape");
                    }
                    int cp = 0;
                    for (int k = 0; k < 4; k++) {
                        int d = Character.digit(s.charAt(i++), 16);
                        if (d < 0) {
                            throw fail("invalid \\u escape");
                        }
                        cp = cp << 4 | d;
                    }
                    b.append((char) cp);
                    break;
                default:
                    throw fail("invalid escape");
            }
        }
    }

    /** write appends v to b as JSON: null, Boolean, Number, CharSequence, Map, Collection or Object[]. */
    public static void write(StringBuilder b, Object v) {
        write(b, v, 0);
    }

    private static void write(StringBuilder b, Object v, int depth) {
        if (depth > MAX_DEPTH) {
            throw new IllegalArgumentException("value nested too deep for JSON");
        }
        if (v == null) {
            b.append("null");
        } else if (v instanceof Boolean) {
            b.append(v);
        } else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                throw new IllegalArgumentException("handler returned a " + d + ", which JSON cannot hold");
            }
            if (d == Math.rint(d) && Math.abs(d) < 1e15) {
                b.append((long) d);
            } else {
                b.append(d);
            }
        } else if (v instanceof Number) {
            b.append(v);
        } else if (v instanceof CharSequence) {
            string(b, v.toString());
        } else if (v instanceof Map) {
            b.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                string(b, String.valueOf(e.getKey()));
                b.append(':');
                write(b, e.getValue(), depth + 1);
            }
            b.append('}');
        } else if (v instanceof Collection || v instanceof Object[]) {
            Iterable<?> items = v instanceof Object[] ? java.util.Arrays.asList((Object[]) v) : (Collection<?>) v;
            b.append('[');
            boolean first = true;
            for (Object o : items) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                write(b, o, depth + 1);
            }
            b.append(']');
        } else {
            throw new IllegalArgumentException("handler returned a " + v.getClass().getName() + ", which is not JSON");
        }
    }

    /** string appends s to b as a JSON string. */
    public static void string(StringBuilder b, String s) {
        b.append('"');
        for (int k = 0; k < s.length(); k++) {
            char c = s.charAt(k);
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20 || Character.isSurrogate(c)) {
                        // A surrogate is escaped so that a lone one stays
                        // valid JSON (the reader makes it U+FFFD).
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
            }
        }
        b.append('"');
    }
}
