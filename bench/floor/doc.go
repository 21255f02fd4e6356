// Package floor holds what the benchmark's floors run: the least a server
// can do to answer a call, against which every kiln figure is divided.
//
// Three floors run in processes of their own (bench/cmd/kiln-floor
// wires them):
//
//   - echo: the benchmark functions' handlers behind fasthttp (Handler),
//     the least an HTTP server in its own process pays;
//   - hop: a fasthttp edge relaying each call (RelayHandler) over one
//     persistent unix-socket connection of length-prefixed frames
//     (FrameHop) to a second process that answers (ServeFrames): the least
//     any design with the function in another process pays;
//   - grpc-hop: the same relay over one long-lived gRPC bidi stream
//     (GRPCListener, GRPCHop, ServeGRPC) with no generated code, whose edge
//     also serves kiln's Invoker service (NewInvoker), so that kiln's gRPC
//     figures have a floor of the same shape.
//
// Both hops carry many calls in flight on their one connection, matched by
// call id, as kiln's executor stream does.
//
// The edge, not the function's process, listens on the socket and the
// function's process dials it, as kilnd and its executors do: the accept is
// the readiness event.
package floor
