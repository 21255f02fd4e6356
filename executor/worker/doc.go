// Package worker is the generic executor: it serves functions written in
// languages other than Go by supervising one long-lived worker process per
// container (python3, node, ruby, java; for cpp the worker is the
// function's own program), or by forking a program per call (binary).
//
// # Environment
//
// The agent starts the executor (cmd/kiln-executor) with:
//
//	KILN_RUNTIME      python3, node, ruby, java, binary or cpp (unset or "go": the Go stem cell, not this package)
//	KILN_CODE_DIR     the function's code directory, e.g. /function
//	KILN_HANDLER      the handler file, relative to KILN_CODE_DIR (handler.py,
//	                  handler.js, handler.rb, Handler.class, or the program to
//	                  run for binary and cpp); unset: stem cell
//	KILN_FUNCTION     the function's name
//	KILN_CONCURRENCY  calls in flight per container (default 1); read by the worker
//	KILN_SOCKET       the agent's socket (default /kiln/agent.sock)
//
// Every other variable is the function's own environment.
//
// For csharp the worker is the function's own program: KILN_HANDLER names
// handler.exe, which kiln deploy compiled from kiln's worker and the
// function's sources, and the executor runs it with mono (see
// ProgramCommand). In stem mode nothing runs but the executor until Init.
//
// In function mode (KILN_HANDLER set) the executor starts the worker, waits
// for its ready frame, sends load and waits for loaded, then dials the agent
// and says Ready as the function. A load_error is printed and the executor
// exits 1, so the container fails to start with the message in its logs.
//
// In stem mode (KILN_HANDLER unset) the executor starts the worker, waits
// for ready (the interpreter is up, its bootstrap imported) and says Ready
// with no function. On Init it sends load to that same worker, with
// Init.CodePath as dir, Init.Handler as handler and the executor's
// environment overlaid with Init.Env as env, and once loaded opens a new
// Session saying Ready as Init.Function. The interpreter is not restarted.
//
// A cpp function is a static program built with kiln's C++ SDK
// (runtimes/cpp), which speaks this protocol itself: the executor starts
// KILN_CODE_DIR/KILN_HANDLER as the worker and sends it load as any other
// (the SDK applies env and dir). With no interpreter to keep up, a cpp stem
// cell starts no worker: it waits for Init and then starts the program
// Init names, so it spares a call only the container's start.
//
// The java worker is kiln.Worker (runtimes/java): in function mode it runs
// from the function's classes, which hold it; a java stem cell runs it in
// the JVM's source-file mode and loads the function's classes on Init.
//
// When the worker exits, or breaks the protocol, every call in flight and
// every later call fails, and Serve returns an error (the executor exits 1)
// so that the agent replaces the container.
//
// # Frame protocol
//
// The worker is started with two pipes beyond stdio: it reads frames from
// fd 3 and writes frames to fd 4. Its stdout and stderr are the function's
// logs and are not part of the protocol, so a handler that prints cannot
// break it.
//
// A frame is, in this order:
//
//	u32 big-endian  H, the header's length in bytes (at most 1 MiB)
//	u32 big-endian  B, the body's length in bytes (at most 64 MiB)
//	H bytes         the header: a UTF-8 JSON object
//	B bytes         the body, raw
//
// The header's "t" member is the frame's kind. Members not listed are
// ignored by both sides. Executor to worker:
//
//	{"t":"load","dir":"/function","handler":"handler.py","env":{"K":"v",...}}
//	    Sets env in the worker's environment (added to what it has),
//	    makes dir its working directory, imports the handler and answers
//	    loaded or load_error. Sent once, after ready.
//	{"t":"call","id":"c1","method":"POST","path":"/x","query":"a=1",
//	 "headers":[["K","v"],...],"deadline_ms":N}  + the request body
//	    Runs one call. deadline_ms is the milliseconds left before the
//	    call's deadline when it was sent; 0 means none. Headers keep the
//	    caller's order and case; a key may repeat. Many calls may be in
//	    flight at once; ids are unique among them.
//	{"t":"cancel","id":"c1"}
//	    The caller gave up on call c1: the worker marks it cancelled and
//	    sends no result for it (a result already on its way is ignored). A
//	    cancel of an unknown call is ignored.
//
// Worker to executor:
//
//	{"t":"ready","version":"3.11.2"}
//	    First frame: the interpreter is up and the bootstrap imported.
//	    version (optional) is the language's version, reported in Ready.
//	{"t":"loaded"}  or  {"t":"load_error","error":"..."}
//	    The answer to load.
//	{"t":"result","id":"c1","status":200,"headers":[["K","v"],...],"error":"",
//	 "cpu_user_us":N,"cpu_sys_us":N,"max_rss_kb":N}  + the response body
//	    The answer to call c1, exactly one per call not cancelled. status 0
//	    means 200, or 500 when error is not empty; a non-empty error fails
//	    the call with that message. The three usage members are optional
//	    (absent or 0: not known): the CPU time the worker process used,
//	    in user and kernel mode, from the call frame's arrival to the
//	    result, in microseconds, and the process's peak resident set
//	    (getrusage's ru_maxrss), in KiB. They are added to the call's
//	    figures (see sdk.Response.Usage). They are process-wide: with
//	    calls running concurrently each call's deltas include the others'
//	    CPU time, so that overlapping calls' figures add up to more than
//	    the process used. The java worker reports the CPU time of the
//	    thread that ran the call instead (exact per call, without the JIT's
//	    and the collector's threads).
//
// A frame over the limits, a header that is not a JSON object, an unknown
// kind or a frame out of turn (anything before ready, a second ready) is a
// protocol error: the executor kills the worker. A result for an id not in
// flight is ignored (it crossed a cancel). When fd 3 reaches end of file
// the worker exits.
package worker
