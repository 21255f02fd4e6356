package floor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
)

// The gRPC hop is one bidi stream, Session, of a service written here by
// hand (no .proto, no generated code), carrying messages in a raw codec:
// an 8-byte little-endian call id, then the body. The edge is the gRPC
// server and the function's process the client that opens the stream, as
// kilnd and its executors are; the edge sends calls as the server's
// messages and the function answers with the client's.

const (
	sessionMethod = "/kiln.floor.Hop/Session"
	idLen         = 8
)

// message is a call or an answer on the gRPC hop.
type message struct {
	id   uint64
	body []byte
	buf  []byte // what body was received into, reused
}

// rawCodec encodes a *message as its id then its body.
type rawCodec struct{}

func (rawCodec) Name() string { return "kiln-floor-raw" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*message)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	pool := mem.DefaultBufferPool()
	b := pool.Get(idLen + len(m.body))
	binary.LittleEndian.PutUint64((*b)[:idLen], m.id)
	copy((*b)[idLen:], m.body)
	return mem.BufferSlice{mem.NewBuffer(b, pool)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*message)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	n := data.Len()
	if n < idLen {
		return fmt.Errorf("raw codec: %d-byte message, want at least %d", n, idLen)
	}
	if cap(m.buf) < n {
		m.buf = make([]byte, n)
	}
	m.buf = m.buf[:n]
	data.CopyTo(m.buf)
	m.id, m.body = binary.LittleEndian.Uint64(m.buf[:idLen]), m.buf[idLen:]
	return nil
}

var sessionStream = grpc.StreamDesc{StreamName: "Session", ServerStreams: true, ClientStreams: true}

// grpcWindows are the flow-control windows and buffers of both ends, those
// kilnd's executor sessions use.
var (
	grpcServerWindows = []grpc.ServerOption{
		grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(4 << 20),
		grpc.ReadBufferSize(64 << 10), grpc.WriteBufferSize(64 << 10),
		grpc.MaxRecvMsgSize(idLen + MaxBody), grpc.MaxSendMsgSize(idLen + MaxBody),
	}
	grpcClientWindows = []grpc.DialOption{
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(4 << 20),
		grpc.WithReadBufferSize(64 << 10), grpc.WithWriteBufferSize(64 << 10),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(idLen+MaxBody), grpc.MaxCallSendMsgSize(idLen+MaxBody)),
	}
)

// GRPCListener is the edge's gRPC server of hop sessions on one listener.
type GRPCListener struct {
	srv      *grpc.Server
	sessions chan *GRPCHop
}

// ListenGRPC serves hop sessions on l until Close.
func ListenGRPC(l net.Listener) *GRPCListener {
	g := &GRPCListener{sessions: make(chan *GRPCHop)}
	g.srv = grpc.NewServer(append([]grpc.ServerOption{grpc.ForceServerCodecV2(rawCodec{})}, grpcServerWindows...)...)
	g.srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "kiln.floor.Hop",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName: sessionStream.StreamName, ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, st grpc.ServerStream) error { return g.session(st) },
		}},
	}, struct{}{})
	go func() { _ = g.srv.Serve(l) }()
	return g
}

// Accept returns the next session a function's process opened, or ctx's
// error.
func (g *GRPCListener) Accept(ctx context.Context) (*GRPCHop, error) {
	select {
	case h := <-g.sessions:
		return h, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops the server: every session ends.
func (g *GRPCListener) Close() { g.srv.Stop() }

// session runs one Session stream: it offers the hop to Accept, then hands
// answers to their calls until the stream ends.
func (g *GRPCListener) session(st grpc.ServerStream) error {
	h := &GRPCHop{stream: st, calls: newCalls(), done: make(chan struct{})}
	defer close(h.done)
	select {
	case g.sessions <- h:
	case <-st.Context().Done():
		return st.Context().Err()
	}
	var m message
	for {
		if err := st.RecvMsg(&m); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the function's process ended the session")
			}
			h.fail(err)
			return err
		}
		h.answer(m.id, m.body)
	}
}

// GRPCHop is the edge's side of one Session stream: calls from many
// goroutines go out as messages on the stream, and the stream's handler
// hands each answer to its call by id.
type GRPCHop struct {
	*calls
	sendMu sync.Mutex // guards stream's sends
	stream grpc.ServerStream
	done   chan struct{} // closed when the session ended
}

var _ Hop = (*GRPCHop)(nil)

// Call implements Hop.
func (h *GRPCHop) Call(ctx context.Context, body, dst []byte) ([]byte, error) {
	id, c, err := h.add(dst)
	if err != nil {
		return nil, err
	}
	h.sendMu.Lock()
	err = h.stream.SendMsg(&message{id: id, body: body})
	h.sendMu.Unlock()
	if err != nil {
		return nil, h.abandon(c, fmt.Errorf("send: %w", err))
	}
	return h.wait(ctx, id, c)
}

// Done is closed when the session ended.
func (h *GRPCHop) Done() <-chan struct{} { return h.done }

// ServeGRPC is the function's side of the gRPC hop: it dials the edge's
// unix socket, opens the Session stream, and answers each call with answer,
// in order, in one goroutine, until the stream or ctx ends. It returns nil
// when the edge ended the stream.
func ServeGRPC(ctx context.Context, socket string, answer Answer) error {
	conn, err := grpc.NewClient("unix://"+socket,
		append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, grpcClientWindows...)...)
	if err != nil {
		return err
	}
	defer conn.Close()
	st, err := conn.NewStream(ctx, &sessionStream, sessionMethod, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return err
	}
	var in message
	out := message{}
	for {
		if err := st.RecvMsg(&in); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		out.id, out.body = in.id, answer(out.body[:0], in.body)
		if err := st.SendMsg(&out); err != nil {
			return err
		}
	}
}
