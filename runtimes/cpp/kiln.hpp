// kiln.hpp: kiln's C++ SDK, header-only, C++17.
//
// A kiln function in C++ is a program whose main calls kiln::serve with
// its handler:
//
//     #include "kiln.hpp"
//
//     kiln::Response handle(const kiln::Request& req) {
//         return kiln::Response{200, {{"Content-Type", "text/plain"}},
//                               "Hello, " + req.body + "!\n"};
//     }
//
//     int main() { return kiln::serve(handle); }
//
// `kiln deploy` writes this file into the function's .kiln/sdk/ and
// compiles the program there; kiln's executor then runs the program as the
// function's worker. kiln::serve speaks the worker side of the executor's
// frame protocol (the doc comment of kiln's package executor/worker): it
// reads frames from fd 3 and writes frames to fd 4, so what the program
// writes to stdout and stderr is the function's logs and never part of an
// answer.
//
// Calls are served one at a time, in the order they arrive (a function's
// `concurrency` above 1 only queues calls in the program). A cancelled call
// runs to its end; its result is dropped. An exception thrown by the
// handler answers 500 with its what() as the error, and is printed on
// stderr.
#ifndef KILN_HPP
#define KILN_HPP

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace kiln {

// Headers are (name, value) pairs in order; a name may repeat.
using Headers = std::vector<std::pair<std::string, std::string>>;

// Request is one call.
struct Request {
    std::string id;      // the call's id, unique among the calls in flight
    std::string method;  // e.g. "POST"
    std::string path;    // after the function's name, e.g. "/a/b"; may be empty
    std::string query;   // the raw query string, without '?'
    Headers headers;     // the caller's headers, in order and case as sent
    std::string body;    // the request body: raw bytes, may hold NULs
    // deadline_ms is the milliseconds left before the caller gives up when
    // the call was sent, or 0 when there is no deadline.
    long long deadline_ms = 0;

    // header returns the last value of the header name (compared without
    // regard to ASCII case), or "" when there is none.
    std::string header(const std::string& name) const {
        for (auto it = headers.rbegin(); it != headers.rend(); ++it) {
            if (it->first.size() != name.size()) continue;
            bool same = true;
            for (size_t i = 0; i < name.size() && same; i++) {
                unsigned char a = it->first[i], b = name[i];
                if (a >= 'A' && a <= 'Z') a += 'a' - 'A';
                if (b >= 'A' && b <= 'Z') b += 'a' - 'A';
                same = a == b;
            }
            if (same) return it->second;
        }
        return "";
    }
};

// Response is the answer to a call. A status of 0 means 200.
struct Response {
    int status = 200;
    Headers headers;
    std::string body;
};

// Handler handles one call.
using Handler = std::function<Response(const Request&)>;

namespace detail {

// Frame limits of the protocol.
constexpr uint32_t kMaxHeader = 1u << 20;
constexpr uint32_t kMaxBody = 64u << 20;

// ProtocolError is a frame that breaks the protocol.
struct ProtocolError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Json is a parsed JSON value. An object keeps its members in order, in
// keys and values; find returns the last member of a key.
struct Json {
    enum class Kind { Null, Bool, Number, String, Array, Object };
    Kind kind = Kind::Null;
    bool boolean = false;
    double number = 0;
    std::string string;
    std::vector<Json> items;        // Array: the elements; Object: the values
    std::vector<std::string> keys;  // Object: the keys, items[i] is keys[i]'s value

    const Json* find(const char* key) const {
        if (kind != Kind::Object) return nullptr;
        for (size_t i = keys.size(); i-- > 0;) {
            if (keys[i] == key) return &items[i];
        }
        return nullptr;
    }
    // str returns the string member key, or "" when it is missing or not
    // a string.
    std::string str(const char* key) const {
        const Json* v = find(key);
        return v && v->kind == Kind::String ? v->string : std::string();
    }
};

// JsonParser parses one JSON text (RFC 8259). Strings are decoded to
// UTF-8: \uXXXX escapes included, a surrogate pair as one code point and a
// lone surrogate as U+FFFD. Nesting deeper than kMaxDepth is refused.
class JsonParser {
public:
    static constexpr int kMaxDepth = 64;

    JsonParser(const char* data, size_t size) : p_(data), end_(data + size) {}

    // parse returns the value of the whole text, or throws ProtocolError.
    Json parse() {
        Json v = value(0);
        space();
        if (p_ != end_) fail("data after the JSON value");
        return v;
    }

private:
    const char* p_;
    const char* end_;

    [[noreturn]] void fail(const char* what) { throw ProtocolError(std::string("frame header: ") + what); }

    void space() {
        while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) p_++;
    }

    void expect(const char* word) {
        for (; *word; word++, p_++) {
            if (p_ == end_ || *p_ != *word) fail("invalid literal");
        }
    }

    Json value(int depth) {
        if (depth > kMaxDepth) fail("nested too deep");
        space();
        if (p_ == end_) fail("unexpected end");
        Json v;
        switch (*p_) {
        case '{':
            v.kind = Json::Kind::Object;
            p_++;
            space();
            if (p_ != end_ && *p_ == '}') {
                p_++;
                return v;
            }
            for (;;) {
                space();
                if (p_ == end_ || *p_ != '"') fail("want a member name");
                v.keys.push_back(string());
                space();
                if (p_ == end_ || *p_ != ':') fail("want ':'");
                p_++;
                v.items.push_back(value(depth + 1));
                space();
                if (p_ == end_) fail("unexpected end");
                if (*p_ == ',') {
                    p_++;
                    continue;
                }
                if (*p_ != '}') fail("want ',' or '}'");
                p_++;
                return v;
            }
        case '[':
            v.kind = Json::Kind::Array;
            p_++;
            space();
            if (p_ != end_ && *p_ == ']') {
                p_++;
                return v;
            }
            for (;;) {
                v.items.push_back(value(depth + 1));
                space();
                if (p_ == end_) fail("unexpected end");
                if (*p_ == ',') {
                    p_++;
                    continue;
                }
                if (*p_ != ']') fail("want ',' or ']'");
                p_++;
                return v;
            }
        case '"':
            v.kind = Json::Kind::String;
            v.string = string();
            return v;
        case 't':
            expect("true");
            v.kind = Json::Kind::Bool;
            v.boolean = true;
            return v;
        case 'f':
            expect("false");
            v.kind = Json::Kind::Bool;
            return v;
        case 'n':
            expect("null");
            return v;
        default:
            v.kind = Json::Kind::Number;
            v.number = number();
            return v;
        }
    }

    // number parses -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    double number() {
        const char* start = p_;
        auto digits = [this]() {
            const char* d = p_;
            while (p_ != end_ && *p_ >= '0' && *p_ <= '9') p_++;
            return p_ - d;
        };
        if (p_ != end_ && *p_ == '-') p_++;
        if (p_ != end_ && *p_ == '0') {
            p_++;
        } else if (digits() == 0) {
            fail("invalid value");
        }
        if (p_ != end_ && *p_ == '.') {
            p_++;
            if (digits() == 0) fail("invalid number");
        }
        if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
            p_++;
            if (p_ != end_ && (*p_ == '+' || *p_ == '-')) p_++;
            if (digits() == 0) fail("invalid number");
        }
        return std::strtod(std::string(start, p_).c_str(), nullptr);
    }

    // hex4 reads the four hex digits of a \u escape.
    unsigned hex4() {
        if (end_ - p_ < 4) fail("truncated \\u escape");
        unsigned v = 0;
        for (int i = 0; i < 4; i++, p_++) {
            char c = *p_;
            v <<= 4;
            if (c >= '0' && c <= '9') v |= unsigned(c - '0');
            else if (c >= 'a' && c <= 'f') v |= unsigned(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= unsigned(c - 'A' + 10);
            else fail("invalid \\u escape");
        }
        return v;
    }

    static void appendUtf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        } else {
            out += char(0xF0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3F));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        }
    }

    // string parses a string, p_ at its opening quote.
    std::string string() {
        p_++;
        std::string out;
        for (;;) {
            const char* run = p_;
            while (p_ != end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) p_++;
            out.append(run, p_);
            if (p_ == end_) fail("unterminated string");
            char c = *p_++;
            if (c == '"') return out;
            if (c != '\\') fail("control character in a string");
            if (p_ == end_) fail("unterminated string");
            switch (*p_++) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                unsigned cp = hex4();
                if (cp >= 0xD800 && cp < 0xDC00) {
                    // A high surrogate: a low one must follow for a pair.
                    if (end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u') {
                        const char* save = p_;
                        p_ += 2;
                        unsigned lo = hex4();
                        if (lo >= 0xDC00 && lo < 0xE000) {
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        } else {
                            p_ = save;  // not a pair: that escape stands alone
                            cp = 0xFFFD;
                        }
                    } else {
                        cp = 0xFFFD;
                    }
                } else if (cp >= 0xDC00 && cp < 0xE000) {
                    cp = 0xFFFD;
                }
                appendUtf8(out, cp);
                break;
            }
            default:
                fail("invalid escape");
            }
        }
    }
};

// appendJsonString appends s to out as a JSON string. Control characters
// are escaped; other bytes are copied as they are (the executor reads
// bytes that are not UTF-8 as U+FFFD).
inline void appendJsonString(std::string& out, const std::string& s) {
    static const char hex[] = "0123456789abcdef";
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 0xF];
            } else {
                out += char(c);
            }
        }
    }
    out += '"';
}

// FrameReader reads frames from a file descriptor.
class FrameReader {
public:
    explicit FrameReader(int fd) : fd_(fd) {}

    // next reads one frame into header and body. It returns false at end
    // of file between frames and throws ProtocolError for a broken frame.
    bool next(Json& header, std::string& body) {
        unsigned char prefix[8];
        size_t got = read(prefix, sizeof prefix);
        if (got == 0) return false;
        if (got != sizeof prefix) throw ProtocolError("truncated frame");
        uint32_t hl = uint32_t(prefix[0]) << 24 | uint32_t(prefix[1]) << 16 | uint32_t(prefix[2]) << 8 | prefix[3];
        uint32_t bl = uint32_t(prefix[4]) << 24 | uint32_t(prefix[5]) << 16 | uint32_t(prefix[6]) << 8 | prefix[7];
        if (hl > kMaxHeader || bl > kMaxBody) throw ProtocolError("frame over the limits");
        std::string h(hl, '\0');
        if (read(&h[0], hl) != hl) throw ProtocolError("truncated frame");
        body.assign(bl, '\0');
        if (bl > 0 && read(&body[0], bl) != bl) throw ProtocolError("truncated frame");
        header = JsonParser(h.data(), h.size()).parse();
        if (header.kind != Json::Kind::Object) throw ProtocolError("frame header is not a JSON object");
        return true;
    }

private:
    int fd_;
    char buf_[64 << 10];
    size_t pos_ = 0, len_ = 0;

    // read reads up to n bytes, fewer only at end of file.
    size_t read(void* to, size_t n) {
        char* out = static_cast<char*>(to);
        size_t done = 0;
        while (done < n) {
            if (pos_ == len_) {
                if (n - done >= sizeof buf_) {  // large: straight into place
                    ssize_t r = ::read(fd_, out + done, n - done);
                    if (r < 0 && errno == EINTR) continue;
                    if (r < 0) throw ProtocolError(std::string("read fd 3: ") + std::strerror(errno));
                    if (r == 0) return done;
                    done += size_t(r);
                    continue;
                }
                ssize_t r = ::read(fd_, buf_, sizeof buf_);
                if (r < 0 && errno == EINTR) continue;
                if (r < 0) throw ProtocolError(std::string("read fd 3: ") + std::strerror(errno));
                if (r == 0) return done;
                pos_ = 0;
                len_ = size_t(r);
            }
            size_t k = std::min(n - done, len_ - pos_);
            std::memcpy(out + done, buf_ + pos_, k);
            pos_ += k;
            done += k;
        }
        return done;
    }
};

// writeAll writes all of data to fd, or throws.
inline void writeAll(int fd, const char* data, size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, data, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) throw std::runtime_error(std::string("write fd 4: ") + std::strerror(errno));
        data += w;
        n -= size_t(w);
    }
}

// writeFrame writes one frame to fd 4: header (a JSON object) and body.
inline void writeFrame(const std::string& header, const std::string& body) {
    if (header.size() > kMaxHeader) throw std::runtime_error("frame header over the limit");
    unsigned char prefix[8];
    uint32_t hl = uint32_t(header.size()), bl = uint32_t(body.size());
    for (int i = 0; i < 4; i++) {
        prefix[i] = static_cast<unsigned char>(hl >> (24 - 8 * i));
        prefix[4 + i] = static_cast<unsigned char>(bl >> (24 - 8 * i));
    }
    std::string first(reinterpret_cast<char*>(prefix), sizeof prefix);
    first += header;
    const bool small = body.size() <= (32u << 10);
    if (small) first += body;
    writeAll(4, first.data(), first.size());
    if (!small) writeAll(4, body.data(), body.size());
}

inline void appendHeaders(std::string& out, const Headers& headers) {
    out += "[";
    for (size_t i = 0; i < headers.size(); i++) {
        if (i > 0) out += ",";
        out += "[";
        appendJsonString(out, headers[i].first);
        out += ",";
        appendJsonString(out, headers[i].second);
        out += "]";
    }
    out += "]";
}

// version is the compiler that built the program, reported in ready.
inline const char* version() {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "g++ " __VERSION__;
#else
    return "c++";
#endif
}

// load applies a load frame: env set, dir made the working directory.
// It returns the error to answer, or "".
inline std::string load(const Json& h) {
    if (const Json* env = h.find("env"); env && env->kind == Json::Kind::Object) {
        for (size_t i = 0; i < env->keys.size(); i++) {
            const Json& v = env->items[i];
            if (v.kind != Json::Kind::String) continue;
            if (::setenv(env->keys[i].c_str(), v.string.c_str(), 1) != 0) {
                return "setenv " + env->keys[i] + ": " + std::strerror(errno);
            }
        }
    }
    std::string dir = h.str("dir");
    if (!dir.empty() && ::chdir(dir.c_str()) != 0) {
        return "chdir " + dir + ": " + std::strerror(errno);
    }
    return "";
}

// call runs one call frame through handle and writes its result.
inline void call(const Handler& handle, const Json& h, std::string& body) {
    Request req;
    req.id = h.str("id");
    req.method = h.str("method");
    req.path = h.str("path");
    req.query = h.str("query");
    if (const Json* d = h.find("deadline_ms"); d && d->kind == Json::Kind::Number) {
        req.deadline_ms = static_cast<long long>(d->number);
    }
    if (const Json* hs = h.find("headers"); hs && hs->kind == Json::Kind::Array) {
        req.headers.reserve(hs->items.size());
        for (const Json& kv : hs->items) {
            if (kv.kind == Json::Kind::Array && kv.items.size() == 2 && kv.items[0].kind == Json::Kind::String &&
                kv.items[1].kind == Json::Kind::String) {
                req.headers.emplace_back(kv.items[0].string, kv.items[1].string);
            }
        }
    }
    req.body.swap(body);

    Response resp;
    std::string error;
    try {
        resp = handle(req);
    } catch (const std::exception& e) {
        error = e.what();
        if (error.empty()) error = "exception";
    } catch (...) {
        error = "unknown exception";
    }
    std::string out = "{\"t\":\"result\",\"id\":";
    appendJsonString(out, req.id);
    if (!error.empty()) {
        std::fprintf(stderr, "kiln: call %s failed: %s\n", req.id.c_str(), error.c_str());
        std::fflush(stderr);
        out += ",\"status\":500,\"error\":";
        appendJsonString(out, error);
        out += "}";
        writeFrame(out, std::string());
        return;
    }
    out += ",\"status\":" + std::to_string(resp.status == 0 ? 200 : resp.status);
    out += ",\"headers\":";
    appendHeaders(out, resp.headers);
    out += "}";
    writeFrame(out, resp.body);
}

}  // namespace detail

// serve serves calls with handle until the executor closes fd 3, then
// returns 0; it returns 1 after printing the reason on stderr when the
// protocol breaks. main returns what it returns.
inline int serve(const Handler& handle) {
    using namespace detail;
    try {
        std::string ready = "{\"t\":\"ready\",\"version\":";
        appendJsonString(ready, version());
        ready += "}";
        writeFrame(ready, std::string());
        FrameReader in(3);
        Json h;
        std::string body;
        while (in.next(h, body)) {
            std::string t = h.str("t");
            if (t == "call") {
                call(handle, h, body);
            } else if (t == "load") {
                std::string err = load(h);
                std::string out = err.empty() ? "{\"t\":\"loaded\"}" : "{\"t\":\"load_error\",\"error\":";
                if (!err.empty()) {
                    appendJsonString(out, err);
                    out += "}";
                }
                writeFrame(out, std::string());
            }
            // A cancel names a call already answered (calls run one at a
            // time, so it is read after its call ended) and is ignored, as
            // are kinds this SDK does not know.
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kiln worker: %s\n", e.what());
        return 1;
    }
}

}  // namespace kiln

#endif  // KILN_HPP
