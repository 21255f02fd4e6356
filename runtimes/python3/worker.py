"""kiln's python3 worker: the python side of the executor's frame protocol.

The executor (package executor/worker, whose doc comment is the protocol)
runs this file with `python3 -u -B -c`. It reads frames from fd 3 and
writes frames to fd 4; stdout and stderr are the function's logs.

The handler file is loaded with importlib under its own name (handler.py:
module "handler"), with its directory first on sys.path and the code
directory as the working directory. It defines:

    def handle(req): ...

req has:
    .body         bytes
    .headers      dict of the request's headers, names as sent; when a
                  name repeats, the last value
    .header_list  list of (name, value) pairs, every header in order
    .method, .path, .query, .id   str
    .deadline     time.monotonic() at which the caller gives up, or None
    .cancelled()  True once the caller gave up on the call (the result
                  is then dropped); cheap enough to poll in a loop
    .json()       the body parsed as JSON

handle returns:
    bytes, bytearray, memoryview   the body
    str                            the body, UTF-8
    dict or list                   the body as JSON, Content-Type application/json
    None                           an empty body
    (status, headers, body)        a tuple: status an int, headers a dict
                                   (a value may be a list: the header repeats)
                                   or None, body any of the above
with status 200 unless given. An exception fails the call with status 500
and its message (str(e), or its class name when that is empty) as the
error; its traceback goes to stderr.

Concurrency: with KILN_CONCURRENCY (after load's env) above 1, calls run on
a thread pool of that size; otherwise each call runs inline in the loop
that reads frames, and req.cancelled() reads any frames already sent to
notice a cancel. async handlers are not supported.
"""

import importlib.machinery
import importlib.util
import json
import os
import resource
import select
import struct
import sys
import threading
import time
import traceback

IN_FD, OUT_FD = 3, 4
MAX_HEADER = 1 << 20
MAX_BODY = 64 << 20
SMALL_BODY = 32 << 10
CHUNK = 64 << 10
_prefix = struct.Struct(">II")
_getrusage, _RUSAGE_SELF = resource.getrusage, resource.RUSAGE_SELF


class ProtocolError(Exception):
    pass


class _Input:
    """Frames from fd 3, with frames read ahead (while polling for a
    cancel) kept in order."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.ahead = []

    def _read_exact(self, n):
        buf = self.buf
        if len(buf) >= n:
            self.buf = buf[n:]
            return buf[:n]
        if n - len(buf) <= CHUNK:
            parts = [buf]
            have = len(buf)
            while have < n:
                chunk = os.read(self.fd, CHUNK)
                if not chunk:
                    raise EOFError
                parts.append(chunk)
                have += len(chunk)
            buf = b"".join(parts)
            self.buf = buf[n:]
            return buf[:n]
        out = bytearray(n)
        out[: len(buf)] = buf
        self.buf = b""
        view = memoryview(out)
        got = len(buf)
        while got < n:
            k = os.readv(self.fd, [view[got:]])
            if k == 0:
                raise EOFError
            got += k
        return bytes(out)

    def _read_frame(self):
        try:
            hl, bl = _prefix.unpack(self._read_exact(8))
        except EOFError:
            if self.buf:
                raise ProtocolError("truncated frame")
            raise
        if hl > MAX_HEADER or bl > MAX_BODY:
            raise ProtocolError("frame of %d+%d bytes is over the limits" % (hl, bl))
        header = json.loads(self._read_exact(hl))
        body = self._read_exact(bl) if bl else b""
        return header, body

    def next(self):
        if self.ahead:
            return self.ahead.pop(0)
        return self._read_frame()

    def read_available(self):
        """Reads the frames already sent, without waiting for more, and
        returns them."""
        got = []
        while self.buf or select.select([self.fd], [], [], 0)[0]:
            got.append(self._read_frame())
        return got


class _Output:
    def __init__(self, fd):
        self.fd = fd
        self.lock = threading.Lock()

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def send(self, header, body=b""):
        h = json.dumps(header, separators=(",", ":")).encode()
        pre = _prefix.pack(len(h), len(body)) + h
        with self.lock:
            if len(body) <= SMALL_BODY:
                self._write_all(pre + body if body else pre)
            else:
                self._write_all(pre)
                self._write_all(body)


class Request:
    __slots__ = ("id", "method", "path", "query", "headers", "header_list",
                 "body", "deadline", "_cancelled", "_poll")

    def __init__(self, h, body, poll):
        self.id = h.get("id", "")
        self.method = h.get("method", "")
        self.path = h.get("path", "")
        self.query = h.get("query", "")
        pairs = h.get("headers") or []
        self.header_list = [(k, v) for k, v in pairs]
        self.headers = dict(self.header_list)
        self.body = body
        ms = h.get("deadline_ms") or 0
        self.deadline = time.monotonic() + ms / 1000.0 if ms > 0 else None
        self._cancelled = False
        self._poll = poll

    def cancelled(self):
        if not self._cancelled and self._poll is not None:
            self._poll(self)
        return self._cancelled

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Request(%s %s %s?%s)" % (self.id, self.method, self.path, self.query)


def _body(value, headers):
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(["Content-Type", "application/json"])
        return json.dumps(value).encode("utf-8")
    raise TypeError("handler returned a %s; want bytes, str, dict, list, None or (status, headers, body)"
                    % type(value).__name__)


def _answer(value):
    """Returns (status, headers, body) for what handle returned."""
    status, headers = 200, []
    if isinstance(value, tuple):
        if len(value) != 3:
            raise TypeError("handler returned a tuple of %d; want (status, headers, body)" % len(value))
        status, given, value = value
        status = int(status)
        for k, v in (given or {}).items():
            if isinstance(v, (list, tuple)):
                headers.extend([str(k), str(x)] for x in v)
            else:
                headers.append([str(k), str(v)])
    return status, headers, _body(value, headers)


def _message(e):
    return str(e) or type(e).__name__


class Worker:
    def __init__(self):
        self.input = _Input(IN_FD)
        self.output = _Output(OUT_FD)
        self.handle = None
        self.pool = None
        self.inflight = {}  # id -> Request, for the calls run on the pool
        self.poll_inline = self._poll_inline  # bound once, not per call

    def load(self, h):
        env = h.get("env") or {}
        os.environ.update({str(k): str(v) for k, v in env.items()})
        code_dir = h.get("dir") or "."
        path = os.path.join(code_dir, h["handler"])
        os.chdir(code_dir)
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        name = os.path.splitext(os.path.basename(path))[0] or "handler"
        loader = importlib.machinery.SourceFileLoader(name, path)
        spec = importlib.util.spec_from_loader(name, loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        handle = getattr(module, "handle", None)
        if not callable(handle):
            raise TypeError("%s defines no function handle(req)" % h["handler"])
        self.handle = handle
        try:
            n = int(os.environ.get("KILN_CONCURRENCY", "1"))
        except ValueError:
            n = 1
        if n > 1:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="kiln-call")

    def run(self, req):
        """Runs one call and returns the result frame's header and body.
        The header carries the process's CPU time during the call (with
        a pool, other calls' too) and its peak resident set."""
        before = _getrusage(_RUSAGE_SELF)
        try:
            status, headers, body = _answer(self.handle(req))
            header = {"t": "result", "id": req.id, "status": status, "headers": headers, "error": ""}
        except BaseException as e:  # noqa: a handler's SystemExit fails its call too
            sys.stderr.write("kiln: call %s failed:\n%s" % (req.id, traceback.format_exc()))
            header = {"t": "result", "id": req.id, "status": 500, "headers": [], "error": _message(e)}
            body = b""
        after = _getrusage(_RUSAGE_SELF)
        header["cpu_user_us"] = round((after.ru_utime - before.ru_utime) * 1e6)
        header["cpu_sys_us"] = round((after.ru_stime - before.ru_stime) * 1e6)
        header["max_rss_kb"] = after.ru_maxrss
        return header, body

    def run_pooled(self, req):
        header, body = self.run(req)
        if self.inflight.pop(req.id, None) is not None and not req._cancelled:
            self.output.send(header, body)

    def _poll_inline(self, req):
        """req.cancelled() of an inline call: reads the frames already
        sent, applying cancels and keeping the rest for the loop."""
        for frame in self.input.read_available():
            if frame[0].get("t") == "cancel" and frame[0].get("id") == req.id:
                req._cancelled = True
            else:
                self.input.ahead.append(frame)

    def serve(self):
        self.output.send({"t": "ready", "version": "%d.%d.%d" % sys.version_info[:3]})
        while True:
            try:
                h, body = self.input.next()
            except EOFError:
                return
            kind = h.get("t")
            if kind == "call":
                if self.handle is None:
                    raise ProtocolError("call before load")
                if self.pool is not None:
                    req = Request(h, body, None)
                    self.inflight[req.id] = req
                    self.pool.submit(self.run_pooled, req)
                    continue
                req = Request(h, body, self.poll_inline)
                header, out = self.run(req)
                if not req._cancelled:
                    self.output.send(header, out)
            elif kind == "cancel":
                req = self.inflight.get(h.get("id"))
                if req is not None:
                    req._cancelled = True
            elif kind == "load":
                try:
                    self.load(h)
                except BaseException as e:
                    traceback.print_exc()
                    self.output.send({"t": "load_error", "error": "%s: %s" % (type(e).__name__, e)})
                    continue
                self.output.send({"t": "loaded"})


def main():
    for fd in (IN_FD, OUT_FD):
        os.set_blocking(fd, True)
        os.set_inheritable(fd, False)  # not handed to the handler's children
    Worker().serve()
    # fd 3 ended: the executor is gone. Calls still running on the pool
    # would hold a normal exit; nothing can take their results.
    os._exit(0)


main()
