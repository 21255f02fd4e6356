// kiln's node worker: the node side of the executor's frame protocol.
//
// The executor (package executor/worker, whose doc comment is the protocol)
// runs this file with `node -e`. It reads frames from fd 3 and writes
// frames to fd 4; stdout and stderr are the function's logs.
//
// The handler file is loaded with require (or import() for an ES module),
// with the code directory as the working directory. It exports the handler:
//
//     module.exports = async (req) => ...     // or a plain function
//     module.exports.handle = ...             // also accepted, as is an ES module's default export
//
// req has:
//     body        Buffer
//     headers     object of the request's headers, names as sent; when a
//                 name repeats, the last value
//     rawHeaders  array of [name, value], every header in order
//     method, path, query, id   strings
//     deadline    Date.now() at which the caller gives up, or null
//     signal      an AbortSignal aborted when the caller gives up (the
//                 result is then dropped); cancelled: the same as a boolean
//     json()      the body parsed as JSON
//
// The handler returns (or resolves to):
//     Buffer or Uint8Array                the body
//     string                              the body, UTF-8
//     undefined or null                   an empty body
//     {status, headers, body}             a response: a plain object whose
//                                         `status` is a number and whose only
//                                         keys are status, headers and body;
//                                         headers an object (a value may be an
//                                         array: the header repeats), body any
//                                         of these forms
//     any other value (object, array,     the body as JSON, Content-Type
//     number, boolean)                    application/json
// with status 200 unless given. A throw or rejection fails the call with
// status 500 and the error's message; its stack goes to stderr.
//
// Calls run concurrently on the event loop, as many as the executor sends.
'use strict';

const net = require('net');
const path = require('path');
const url = require('url');

const MAX_HEADER = 1 << 20;
const MAX_BODY = 64 << 20;
const SMALL_BODY = 32 << 10;
const EMPTY = Buffer.alloc(0);

const input = new net.Socket({ fd: 3, readable: true, writable: false });
const output = new net.Socket({ fd: 4, readable: false, writable: true });

function fatal(msg) {
  process.stderr.write('kiln worker: ' + msg + '\n');
  process.exit(1);
}

function send(header, body) {
  const h = Buffer.from(JSON.stringify(header));
  const pre = Buffer.allocUnsafe(8);
  pre.writeUInt32BE(h.length, 0);
  pre.writeUInt32BE(body.length, 4);
  if (body.length <= SMALL_BODY) {
    output.write(Buffer.concat([pre, h, body], 8 + h.length + body.length));
  } else {
    output.cork();
    output.write(pre);
    output.write(h);
    output.write(body);
    output.uncork();
  }
}

class Request {
  constructor(h, body) {
    this.id = h.id || '';
    this.method = h.method || '';
    this.path = h.path || '';
    this.query = h.query || '';
    this.rawHeaders = h.headers || [];
    const headers = {};
    for (const [k, v] of this.rawHeaders) headers[k] = v;
    this.headers = headers;
    this.body = body;
    this.deadline = h.deadline_ms > 0 ? Date.now() + h.deadline_ms : null;
    this.cancelled = false;
    this._abort = null;
    this._cpu = process.cpuUsage(); // {user, system} in microseconds
  }

  get signal() {
    if (this._abort === null) {
      this._abort = new AbortController();
      if (this.cancelled) this._abort.abort();
    }
    return this._abort.signal;
  }

  cancel() {
    this.cancelled = true;
    if (this._abort !== null) this._abort.abort();
  }

  json() {
    return JSON.parse(this.body.toString('utf8'));
  }
}

function isResponse(v) {
  if (typeof v.status !== 'number' || Object.getPrototypeOf(v) !== Object.prototype) return false;
  for (const k of Object.keys(v)) {
    if (k !== 'status' && k !== 'headers' && k !== 'body') return false;
  }
  return true;
}

function toBody(v, headers) {
  if (v === undefined || v === null) return EMPTY;
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (!headers.some(([k]) => k.toLowerCase() === 'content-type')) {
    headers.push(['Content-Type', 'application/json']);
  }
  const json = JSON.stringify(v);
  if (json === undefined) throw new TypeError('handler returned a ' + typeof v);
  return Buffer.from(json, 'utf8');
}

// answer returns [status, headers, body] for what the handler returned.
function answer(v) {
  let status = 200;
  const headers = [];
  if (v !== null && typeof v === 'object' && !Buffer.isBuffer(v) && !Array.isArray(v) && isResponse(v)) {
    status = v.status;
    for (const [k, val] of Object.entries(v.headers || {})) {
      if (Array.isArray(val)) for (const x of val) headers.push([k, String(x)]);
      else headers.push([k, String(val)]);
    }
    v = v.body;
  }
  return [status, headers, toBody(v, headers)];
}

let handler = null;
const inflight = new Map(); // id -> Request

// result returns the result frame's header of req: the process's CPU time
// since the call began (other calls' on the event loop too) and its peak
// resident set.
function result(req, status, headers, error) {
  const ru = process.resourceUsage();
  return {
    t: 'result', id: req.id, status, headers, error,
    cpu_user_us: ru.userCPUTime - req._cpu.user,
    cpu_sys_us: ru.systemCPUTime - req._cpu.system,
    max_rss_kb: ru.maxRSS,
  };
}

function finish(req, value, failed) {
  if (inflight.get(req.id) !== req) return; // cancelled
  inflight.delete(req.id);
  if (!failed) {
    try {
      const [status, headers, body] = answer(value);
      send(result(req, status, headers, ''), body);
      return;
    } catch (e) {
      value = e;
    }
  }
  process.stderr.write('kiln: call ' + req.id + ' failed: ' + ((value && value.stack) || String(value)) + '\n');
  let msg = value && value.message !== undefined ? String(value.message) : String(value);
  if (!msg) msg = (value && value.name) || 'Error';
  send(result(req, 500, [], msg), EMPTY);
}

function call(h, body) {
  if (handler === null) fatal('call before load');
  const req = new Request(h, body);
  inflight.set(req.id, req);
  let v;
  try {
    v = handler(req);
  } catch (e) {
    finish(req, e, true);
    return;
  }
  if (v !== null && typeof v === 'object' && typeof v.then === 'function') {
    v.then((x) => finish(req, x, false), (e) => finish(req, e, true));
  } else {
    finish(req, v, false);
  }
}

function pick(mod) {
  if (typeof mod === 'function') return mod;
  if (mod && typeof mod.handle === 'function') return mod.handle;
  if (mod && typeof mod.default === 'function') return mod.default;
  if (mod && mod.default && typeof mod.default.handle === 'function') return mod.default.handle;
  return null;
}

async function load(h) {
  for (const [k, v] of Object.entries(h.env || {})) process.env[k] = String(v);
  const dir = h.dir || '.';
  process.chdir(dir);
  const file = path.resolve(dir, h.handler);
  let mod;
  if (file.endsWith('.mjs')) {
    mod = await import(url.pathToFileURL(file).href);
  } else {
    try {
      mod = require(file);
    } catch (e) {
      if (e.code !== 'ERR_REQUIRE_ESM') throw e;
      mod = await import(url.pathToFileURL(file).href);
    }
  }
  const fn = pick(mod);
  if (fn === null) throw new TypeError(h.handler + ' exports no handler function');
  handler = fn;
}

function onFrame(h, body) {
  switch (h.t) {
    case 'call':
      call(h, body);
      break;
    case 'cancel': {
      const req = inflight.get(h.id);
      if (req !== undefined) {
        inflight.delete(h.id);
        req.cancel();
      }
      break;
    }
    case 'load':
      input.pause(); // no call before the handler is there
      load(h).then(
        () => { send({ t: 'loaded' }, EMPTY); input.resume(); },
        (e) => {
          process.stderr.write(((e && e.stack) || String(e)) + '\n');
          send({ t: 'load_error', error: ((e && e.name) || 'Error') + ': ' + ((e && e.message) || String(e)) }, EMPTY);
          input.resume();
        });
      break;
  }
}

// Frame parsing: chunks as they came, taken from without copying when a
// piece lies in one chunk.
const chunks = [];
let have = 0;
let headerLen = -1;
let bodyLen = 0;

function take(n) {
  const first = chunks[0];
  if (first.length >= n) {
    if (first.length === n) chunks.shift();
    else chunks[0] = first.subarray(n);
    have -= n;
    return first.subarray(0, n);
  }
  const out = Buffer.allocUnsafe(n);
  let off = 0;
  while (off < n) {
    const c = chunks[0];
    const k = Math.min(c.length, n - off);
    c.copy(out, off, 0, k);
    off += k;
    if (k === c.length) chunks.shift();
    else chunks[0] = c.subarray(k);
  }
  have -= n;
  return out;
}

input.on('data', (chunk) => {
  chunks.push(chunk);
  have += chunk.length;
  for (;;) {
    if (headerLen < 0) {
      if (have < 8) return;
      const pre = take(8);
      headerLen = pre.readUInt32BE(0);
      bodyLen = pre.readUInt32BE(4);
      if (headerLen > MAX_HEADER || bodyLen > MAX_BODY) fatal('frame over the limits');
    }
    if (have < headerLen + bodyLen) return;
    const h = JSON.parse(take(headerLen).toString('utf8'));
    const body = bodyLen > 0 ? take(bodyLen) : EMPTY;
    headerLen = -1;
    onFrame(h, body);
  }
});
input.on('end', () => process.exit(0));
input.on('error', (e) => fatal('reading frames: ' + e.message));
output.on('error', (e) => fatal('writing frames: ' + e.message));

send({ t: 'ready', version: process.versions.node }, EMPTY);
