// kiln's C# worker: the C# side of the executor's frame protocol.
//
// kiln deploy compiles this file together with the function's sources
// into one program, handler.exe (runtimes/csharp.Build); the executor
// (package executor/worker, whose doc comment is the protocol) runs it
// with mono as the function's worker. It reads frames from fd 3 and writes
// frames to fd 4; stdout and stderr are the function's logs. It uses
// mscorlib only.
//
// On load it sets the environment, makes the code directory its working
// directory and finds the handler: a public static method Handle taking a
// Kiln.Request, of a class named Handler (in any namespace) of this
// program, whose static constructor is run then, so that its failure is a
// load error:
//
//     using Kiln;
//     public static class Handler {
//         public static object Handle(Request req) { ... }
//     }
//
// Handle may return any type; a Task (async Handle) is waited for and its
// result taken. What it returns is sent as:
//     byte[]           the body, as it is
//     string           the body, in UTF-8
//     null             an empty body
//     Kiln.Response    a response: status, headers and a body of any of
//                      these forms (a header's value may be an IEnumerable
//                      of strings: the header repeats)
//     anything else    JSON, with Content-Type application/json: an
//                      IDictionary is an object, any other IEnumerable an
//                      array, numbers, bool and strings are themselves, and
//                      another object (an anonymous type, say) is an object
//                      of its public properties and fields
// with status 200 unless given. An exception fails the call with status
// 500 and its message (its type's name when the message is empty); the
// exception with its stack goes to stderr. A value that cannot be JSON
// (a delegate, a pointer, a cycle) fails the call the same way.
//
// Concurrency: calls run on KILN_CONCURRENCY (after load's env; at least
// one) threads, while the main thread reads frames, so that a cancel
// reaches a running call at once (req.Cancelled, req.Cancellation).
//
// Each result carries the process's CPU time during the call (with
// concurrent calls, the others' too) and its peak resident set, from
// getrusage(2).

using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Kiln
{
    /// <summary>One call to the function.</summary>
    public sealed class Request
    {
        /// <summary>The call's id, unique among the calls in flight.</summary>
        public string Id { get; internal set; }
        /// <summary>The HTTP method, e.g. "POST".</summary>
        public string Method { get; internal set; }
        /// <summary>The path after the function's name, e.g. "/x".</summary>
        public string Path { get; internal set; }
        /// <summary>The query string, without "?".</summary>
        public string Query { get; internal set; }
        /// <summary>The request's body.</summary>
        public byte[] Body { get; internal set; }
        /// <summary>The headers, names as sent, case-insensitive; the last value when a name repeats.</summary>
        public IDictionary<string, string> Headers { get; internal set; }
        /// <summary>Every header as sent, in order.</summary>
        public IList<KeyValuePair<string, string>> HeaderList { get; internal set; }
        /// <summary>When the caller gives up (UTC), or null.</summary>
        public DateTime? Deadline { get; internal set; }

        internal readonly CancellationTokenSource cancel = new CancellationTokenSource();

        /// <summary>True once the caller gave up on the call: its result is dropped.</summary>
        public bool Cancelled { get { return cancel.IsCancellationRequested; } }

        /// <summary>Cancelled when the caller gives up on the call.</summary>
        public CancellationToken Cancellation { get { return cancel.Token; } }

        /// <summary>The body as UTF-8 text.</summary>
        public string Text { get { return Encoding.UTF8.GetString(Body); } }

        /// <summary>The body parsed as JSON: Dictionary&lt;string, object&gt;, List&lt;object&gt;,
        /// string, long, double, bool or null.</summary>
        public object Json() { return Kiln.Json.Parse(Text); }

        public override string ToString() { return "Kiln.Request " + Id + " " + Method + " " + Path + "?" + Query; }
    }

    /// <summary>A response with a status and headers.</summary>
    public sealed class Response
    {
        /// <summary>The HTTP status; 0 means 200.</summary>
        public int Status;
        /// <summary>Header names to a string, or to an IEnumerable of strings (the header repeats); may be null.</summary>
        public IDictionary Headers;
        /// <summary>The body: byte[], string, null or a value sent as JSON.</summary>
        public object Body;

        public Response(int status, IDictionary headers, object body) { Status = status; Headers = headers; Body = body; }
        public Response(int status, object body) : this(status, null, body) { }
    }

    /// <summary>A small JSON reader and writer: enough for the frame headers
    /// and a handler's answers.</summary>
    public static class Json
    {
        /// <summary>Parses text: objects as Dictionary&lt;string, object&gt;, arrays as
        /// List&lt;object&gt;, integers as long, other numbers as double.</summary>
        public static object Parse(string text)
        {
            int i = 0;
            object v = Value(text, ref i);
            Space(text, ref i);
            if (i != text.Length) throw new FormatException("JSON: unexpected text at offset " + i);
            return v;
        }

        static void Space(string s, ref int i)
        {
            while (i < s.Length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
        }

        static FormatException Bad(int i) { return new FormatException("JSON: bad value at offset " + i); }

        static object Value(string s, ref int i)
        {
            Space(s, ref i);
            if (i >= s.Length) throw Bad(i);
            char c = s[i];
            if (c == '{')
            {
                var m = new Dictionary<string, object>();
                i++;
                Space(s, ref i);
                if (i < s.Length && s[i] == '}') { i++; return m; }
                while (true)
                {
                    Space(s, ref i);
                    if (i >= s.Length || s[i] != '"') throw Bad(i);
                    string k = Str(s, ref i);
                    Space(s, ref i);
                    if (i >= s.Length || s[i] != ':') throw Bad(i);
                    i++;
                    m[k] = Value(s, ref i);
                    Space(s, ref i);
                    if (i < s.Length && s[i] == ',') { i++; continue; }
                    if (i < s.Length && s[i] == '}') { i++; return m; }
                    throw Bad(i);
                }
            }
            if (c == '[')
            {
                var l = new List<object>();
                i++;
                Space(s, ref i);
                if (i < s.Length && s[i] == ']') { i++; return l; }
                while (true)
                {
                    l.Add(Value(s, ref i));
                    Space(s, ref i);
                    if (i < s.Length && s[i] == ',') { i++; continue; }
                    if (i < s.Length && s[i] == ']') { i++; return l; }
                    throw Bad(i);
                }
            }
            if (c == '"') return Str(s, ref i);
            if (string.CompareOrdinal(s, i, "true", 0, 4) == 0) { i += 4; return true; }
            if (string.CompareOrdinal(s, i, "false", 0, 5) == 0) { i += 5; return false; }
            if (string.CompareOrdinal(s, i, "null", 0, 4) == 0) { i += 4; return null; }
            int start = i;
            bool integer = true;
            while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0)
            {
                if (s[i] == '.' || s[i] == 'e' || s[i] == 'E') integer = false;
                i++;
            }
            string n = s.Substring(start, i - start);
            long lv;
            if (integer && long.TryParse(n, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out lv)) return lv;
            double dv;
            if (n.Length > 0 && double.TryParse(n, NumberStyles.Float, CultureInfo.InvariantCulture, out dv)) return dv;
            throw Bad(start);
        }

        static string Str(string s, ref int i)
        {
            i++; // the opening quote
            var b = new StringBuilder();
            while (i < s.Length)
            {
                char c = s[i++];
                if (c == '"') return b.ToString();
                if (c != '\\') { b.Append(c); continue; }
                if (i >= s.Length) break;
                char e = s[i++];
                switch (e)
                {
                    case '"': b.Append('"'); break;
                    case '\\': b.Append('\\'); break;
                    case '/': b.Append('/'); break;
                    case 'b': b.Append('\b'); break;
                    case 'f': b.Append('\f'); break;
                    case 'n': b.Append('\n'); break;
                    case 'r': b.Append('\r'); break;
                    case 't': b.Append('\t'); break;
                    case 'u':
                        if (i + 4 > s.Length) throw Bad(i);
                        b.Append((char)int.Parse(s.Substring(i, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                        i += 4;
                        break;
                    default: throw Bad(i - 1);
                }
            }
            throw new FormatException("JSON: unterminated string");
        }

        /// <summary>Returns v as JSON (see the worker's doc for the types).</summary>
        public static string Write(object v)
        {
            var b = new StringBuilder();
            Write(b, v, 0);
            return b.ToString();
        }

        const int MaxDepth = 64;

        internal static void Write(StringBuilder b, object v, int depth)
        {
            if (depth > MaxDepth) throw new ArgumentException("a value nested over " + MaxDepth + " levels (a cycle?) cannot be sent as JSON");
            if (v == null) { b.Append("null"); return; }
            var s = v as string;
            if (s != null) { Quote(b, s); return; }
            if (v is bool) { b.Append((bool)v ? "true" : "false"); return; }
            if (v is char) { Quote(b, v.ToString()); return; }
            if (v is float || v is double)
            {
                double d = Convert.ToDouble(v, CultureInfo.InvariantCulture);
                if (double.IsNaN(d) || double.IsInfinity(d)) b.Append("null");
                else b.Append(d.ToString("R", CultureInfo.InvariantCulture));
                return;
            }
            if (v is sbyte || v is byte || v is short || v is ushort || v is int || v is uint || v is long || v is ulong || v is decimal)
            {
                b.Append(((IFormattable)v).ToString(null, CultureInfo.InvariantCulture));
                return;
            }
            if (v is Enum) { Quote(b, v.ToString()); return; }
            if (v is DateTime) { Quote(b, ((DateTime)v).ToString("o", CultureInfo.InvariantCulture)); return; }
            if (v is Guid) { Quote(b, v.ToString()); return; }
            var dict = v as IDictionary;
            if (dict != null)
            {
                b.Append('{');
                bool first = true;
                foreach (DictionaryEntry e in dict)
                {
                    if (!first) b.Append(',');
                    first = false;
                    Quote(b, Convert.ToString(e.Key, CultureInfo.InvariantCulture));
                    b.Append(':');
                    Write(b, e.Value, depth + 1);
                }
                b.Append('}');
                return;
            }
            var list = v as IEnumerable;
            if (list != null)
            {
                b.Append('[');
                bool first = true;
                foreach (object x in list)
                {
                    if (!first) b.Append(',');
                    first = false;
                    Write(b, x, depth + 1);
                }
                b.Append(']');
                return;
            }
            Type t = v.GetType();
            if (v is Delegate || v is Type || v is MemberInfo || v is IntPtr || v is UIntPtr || t.IsPointer || v is Task)
                throw new ArgumentException("a " + t.FullName + " cannot be sent as JSON");
            b.Append('{');
            bool firstMember = true;
            foreach (PropertyInfo p in t.GetProperties(BindingFlags.Public | BindingFlags.Instance))
            {
                if (!p.CanRead || p.GetIndexParameters().Length > 0) continue;
                if (!firstMember) b.Append(',');
                firstMember = false;
                Quote(b, p.Name);
                b.Append(':');
                Write(b, p.GetValue(v, null), depth + 1);
            }
            foreach (FieldInfo f in t.GetFields(BindingFlags.Public | BindingFlags.Instance))
            {
                if (!firstMember) b.Append(',');
                firstMember = false;
                Quote(b, f.Name);
                b.Append(':');
                Write(b, f.GetValue(v), depth + 1);
            }
            b.Append('}');
        }

        internal static void Quote(StringBuilder b, string s)
        {
            b.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': b.Append("\\\""); break;
                    case '\\': b.Append("\\\\"); break;
                    case '\n': b.Append("\\n"); break;
                    case '\r': b.Append("\\r"); break;
                    case '\t': b.Append("\\t"); break;
                    default:
                        if (c < 0x20) b.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        else b.Append(c);
                        break;
                }
            }
            b.Append('"');
        }
    }

    /// <summary>The worker: serves the executor's frames until fd 3 ends.</summary>
    public static class Worker
    {
        const int MaxHeader = 1 << 20;
        const int MaxBody = 64 << 20;
        const int SmallBody = 32 << 10;

        static readonly UTF8Encoding Utf8 = new UTF8Encoding(false);
        static Stream input, output;
        static readonly object outputLock = new object(); // guards output
        static Func<Request, object> handler;
        static Type handlerReturns;

        static readonly object callsLock = new object(); // guards queue and inflight
        static readonly Queue<Request> queue = new Queue<Request>();
        static readonly Dictionary<string, Request> inflight = new Dictionary<string, Request>();

        [DllImport("libc", SetLastError = true)]
        static extern int getrusage(int who, [Out] long[] usage);

        // Usage returns the process's user and system CPU time in
        // microseconds and its peak resident set in KiB; zeros when
        // getrusage is out of reach.
        static long[] Usage()
        {
            var ru = new long[18]; // struct rusage on 64-bit Linux: 2 timevals, 14 longs
            try
            {
                if (IntPtr.Size == 8 && getrusage(0, ru) == 0)
                    return new long[] { ru[0] * 1000000 + ru[1], ru[2] * 1000000 + ru[3], ru[4] };
            }
            catch (Exception) { }
            return new long[3];
        }

        [DllImport("libc")]
        static extern void _exit(int status);

        public static int Main()
        {
            // mono's Environment.Exit, after this event, suspends the other
            // threads, and can spin forever on one blocked reading a pipe
            // (the main thread, reading fd 3): the process ends here.
            AppDomain.CurrentDomain.ProcessExit += delegate
            {
                try { Console.Out.Flush(); Console.Error.Flush(); } catch (Exception) { }
                _exit(Environment.ExitCode);
            };
            // mono's FileStream takes no raw descriptor: the pipes are
            // opened again through /proc.
            input = new FileStream("/proc/self/fd/3", FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 64 << 10);
            output = new FileStream("/proc/self/fd/4", FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
            Send(new Dictionary<string, object> { { "t", "ready" }, { "version", Version() } }, null);
            try
            {
                Serve();
            }
            catch (Exception e)
            {
                Console.Error.WriteLine("kiln worker: " + e);
                Environment.Exit(1);
            }
            // fd 3 ended: the executor is gone, and nothing can take the
            // results of the calls still running.
            Environment.Exit(0);
            return 0;
        }

        static string Version()
        {
            Type mono = Type.GetType("Mono.Runtime");
            MethodInfo name = mono == null ? null : mono.GetMethod("GetDisplayName", BindingFlags.NonPublic | BindingFlags.Static);
            string v = name == null ? null : name.Invoke(null, null) as string;
            if (string.IsNullOrEmpty(v)) return Environment.Version.ToString();
            int sp = v.IndexOf(' ');
            return sp > 0 ? v.Substring(0, sp) : v;
        }

        static void Serve()
        {
            byte[] body;
            Dictionary<string, object> h;
            while ((h = ReadFrame(out body)) != null)
            {
                string t = h.ContainsKey("t") ? h["t"] as string : null;
                if (t == "call")
                {
                    if (handler == null) throw new InvalidDataException("call before load");
                    Request req = NewRequest(h, body);
                    lock (callsLock)
                    {
                        inflight[req.Id] = req;
                        queue.Enqueue(req);
                        Monitor.Pulse(callsLock);
                    }
                }
                else if (t == "cancel")
                {
                    Request req = null;
                    lock (callsLock)
                    {
                        string id = h.ContainsKey("id") ? h["id"] as string : null;
                        if (id != null && inflight.TryGetValue(id, out req)) inflight.Remove(id);
                    }
                    if (req != null) req.cancel.Cancel();
                }
                else if (t == "load")
                {
                    string error = Load(h);
                    if (error == null) Send(new Dictionary<string, object> { { "t", "loaded" } }, null);
                    else Send(new Dictionary<string, object> { { "t", "load_error" }, { "error", error } }, null);
                }
            }
        }

        // Load applies a load frame and returns null, or the error.
        static string Load(Dictionary<string, object> h)
        {
            try
            {
                var env = h.ContainsKey("env") ? h["env"] as Dictionary<string, object> : null;
                if (env != null)
                    foreach (var kv in env) Environment.SetEnvironmentVariable(kv.Key, Convert.ToString(kv.Value, CultureInfo.InvariantCulture));
                string dir = h.ContainsKey("dir") ? h["dir"] as string : null;
                if (!string.IsNullOrEmpty(dir)) Directory.SetCurrentDirectory(dir);
                MethodInfo handle = FindHandle();
                RuntimeHelpers.RunClassConstructor(handle.DeclaringType.TypeHandle);
                handlerReturns = handle.ReturnType;
                handler = req =>
                {
                    try { return handle.Invoke(null, new object[] { req }); }
                    catch (TargetInvocationException e) { throw Unwrap(e); }
                };
            }
            catch (Exception e)
            {
                Exception cause = e;
                while ((cause is TypeInitializationException || cause is TargetInvocationException) && cause.InnerException != null)
                    cause = cause.InnerException;
                Console.Error.WriteLine("kiln worker: load: " + e);
                return cause.GetType().Name + ": " + cause.Message;
            }
            int n;
            if (!int.TryParse(Environment.GetEnvironmentVariable("KILN_CONCURRENCY"), out n) || n < 1) n = 1;
            for (int i = 0; i < n; i++)
            {
                var th = new Thread(RunCalls);
                th.IsBackground = true;
                th.Name = "kiln-call-" + i;
                th.Start();
            }
            return null;
        }

        // FindHandle returns the public static Handle(Kiln.Request) of the
        // one class named Handler in this program.
        static MethodInfo FindHandle()
        {
            MethodInfo found = null;
            foreach (Type t in Assembly.GetExecutingAssembly().GetTypes())
            {
                if (t.Name != "Handler" || !t.IsClass) continue;
                MethodInfo m = t.GetMethod("Handle", BindingFlags.Public | BindingFlags.Static, null, new[] { typeof(Request) }, null);
                if (m == null) continue;
                if (found != null) throw new TypeLoadException("two classes Handler with Handle(Request): " + found.DeclaringType.FullName + " and " + t.FullName);
                found = m;
            }
            if (found == null) throw new TypeLoadException("no class Handler with a public static Handle(Kiln.Request)");
            return found;
        }

        static Exception Unwrap(TargetInvocationException e)
        {
            return e.InnerException ?? e;
        }

        static Request NewRequest(Dictionary<string, object> h, byte[] body)
        {
            var req = new Request
            {
                Id = Get(h, "id"),
                Method = Get(h, "method"),
                Path = Get(h, "path"),
                Query = Get(h, "query"),
                Body = body,
            };
            var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            var list = new List<KeyValuePair<string, string>>();
            var given = h.ContainsKey("headers") ? h["headers"] as List<object> : null;
            if (given != null)
                foreach (object o in given)
                {
                    var pair = o as List<object>;
                    if (pair == null || pair.Count != 2) continue;
                    string k = pair[0] as string ?? "", v = pair[1] as string ?? "";
                    headers[k] = v;
                    list.Add(new KeyValuePair<string, string>(k, v));
                }
            req.Headers = headers;
            req.HeaderList = list.AsReadOnly();
            object ms;
            if (h.TryGetValue("deadline_ms", out ms) && ms is long && (long)ms > 0)
                req.Deadline = DateTime.UtcNow.AddMilliseconds((long)ms);
            return req;
        }

        static string Get(Dictionary<string, object> h, string key)
        {
            object v;
            return h.TryGetValue(key, out v) ? (v as string ?? "") : "";
        }

        // RunCalls is a call thread: it runs the queued calls one by one.
        static void RunCalls()
        {
            while (true)
            {
                Request req;
                lock (callsLock)
                {
                    while (queue.Count == 0) Monitor.Wait(callsLock);
                    req = queue.Dequeue();
                }
                var header = new Dictionary<string, object> { { "t", "result" }, { "id", req.Id } };
                byte[] body = Run(req, header);
                bool live;
                lock (callsLock) { live = inflight.Remove(req.Id); }
                if (live && !req.Cancelled) Send(header, body);
            }
        }

        // Run runs one call, fills the result's header and returns its body.
        static byte[] Run(Request req, Dictionary<string, object> header)
        {
            long[] before = Usage();
            byte[] body;
            try
            {
                object v = handler(req);
                var task = v as Task;
                if (task != null)
                {
                    task.GetAwaiter().GetResult();
                    PropertyInfo result = task.GetType().GetProperty("Result");
                    v = handlerReturns == typeof(Task) || result == null ? null : result.GetValue(task, null);
                }
                int status = 200;
                var headers = new List<object>();
                var resp = v as Response;
                if (resp != null)
                {
                    if (resp.Status != 0) status = resp.Status;
                    if (resp.Headers != null)
                        foreach (DictionaryEntry e in resp.Headers)
                        {
                            string k = Convert.ToString(e.Key, CultureInfo.InvariantCulture);
                            var many = e.Value as IEnumerable;
                            if (many != null && !(e.Value is string))
                                foreach (object x in many) headers.Add(new object[] { k, Convert.ToString(x, CultureInfo.InvariantCulture) });
                            else
                                headers.Add(new object[] { k, Convert.ToString(e.Value, CultureInfo.InvariantCulture) });
                        }
                    v = resp.Body;
                }
                body = BodyOf(v, headers);
                header["status"] = status;
                header["headers"] = headers;
                header["error"] = "";
            }
            catch (Exception e)
            {
                if (e is AggregateException && e.InnerException != null) e = e.InnerException;
                Console.Error.WriteLine("kiln: call " + req.Id + " failed: " + e);
                header["status"] = 500;
                header["headers"] = new List<object>();
                header["error"] = string.IsNullOrEmpty(e.Message) ? e.GetType().Name : e.Message;
                body = null;
            }
            long[] after = Usage();
            header["cpu_user_us"] = after[0] - before[0];
            header["cpu_sys_us"] = after[1] - before[1];
            header["max_rss_kb"] = after[2];
            return body;
        }

        static byte[] BodyOf(object v, List<object> headers)
        {
            if (v == null) return null;
            var bytes = v as byte[];
            if (bytes != null) return bytes;
            var s = v as string;
            if (s != null) return Utf8.GetBytes(s);
            if (v is Response) throw new ArgumentException("handler returned a Response as a Response's body");
            if (v is Delegate || v is Type || v is IntPtr)
                throw new ArgumentException("handler returned a " + v.GetType().FullName + "; want byte[], string, null, Kiln.Response or a value sent as JSON");
            string json = Json.Write(v);
            bool typed = false;
            foreach (object[] kv in headers)
                if (string.Equals((string)kv[0], "Content-Type", StringComparison.OrdinalIgnoreCase)) typed = true;
            if (!typed) headers.Add(new object[] { "Content-Type", "application/json" });
            return Utf8.GetBytes(json);
        }

        // ReadFrame returns the next frame's header and body, or null at
        // the end of fd 3.
        static Dictionary<string, object> ReadFrame(out byte[] body)
        {
            body = null;
            var prefix = new byte[8];
            if (!ReadFull(prefix, true)) return null;
            long hl = BigEndian(prefix, 0), bl = BigEndian(prefix, 4);
            if (hl > MaxHeader || bl > MaxBody) throw new InvalidDataException("frame of " + hl + "+" + bl + " bytes is over the limits");
            var header = new byte[hl];
            ReadFull(header, false);
            body = new byte[bl];
            ReadFull(body, false);
            var h = Json.Parse(Utf8.GetString(header)) as Dictionary<string, object>;
            if (h == null) throw new InvalidDataException("a frame's header is not a JSON object");
            return h;
        }

        static long BigEndian(byte[] b, int at)
        {
            return ((long)b[at] << 24) | ((long)b[at + 1] << 16) | ((long)b[at + 2] << 8) | b[at + 3];
        }

        // ReadFull fills buf; at the end of fd 3 before the first byte it
        // returns false when eofOK, and throws otherwise.
        static bool ReadFull(byte[] buf, bool eofOK)
        {
            int n = 0;
            while (n < buf.Length)
            {
                int r = input.Read(buf, n, buf.Length - n);
                if (r <= 0)
                {
                    if (n == 0 && eofOK) return false;
                    throw new EndOfStreamException("truncated frame");
                }
                n += r;
            }
            return true;
        }

        static void Send(Dictionary<string, object> header, byte[] body)
        {
            var h = Utf8.GetBytes(Json.Write(header));
            int bl = body == null ? 0 : body.Length;
            var prefix = new byte[8 + h.Length + (bl <= SmallBody ? bl : 0)];
            Put(prefix, 0, h.Length);
            Put(prefix, 4, bl);
            Buffer.BlockCopy(h, 0, prefix, 8, h.Length);
            if (bl > 0 && bl <= SmallBody) Buffer.BlockCopy(body, 0, prefix, 8 + h.Length, bl);
            lock (outputLock)
            {
                output.Write(prefix, 0, prefix.Length);
                if (bl > SmallBody) output.Write(body, 0, bl);
                output.Flush();
            }
        }

        static void Put(byte[] b, int at, int v)
        {
            b[at] = (byte)(v >> 24);
            b[at + 1] = (byte)(v >> 16);
            b[at + 2] = (byte)(v >> 8);
            b[at + 3] = (byte)v;
        }
    }
}
