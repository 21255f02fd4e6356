// Package grpccodec is gRPC's protobuf codec with large messages kept out
// of gRPC's buffer pool.
//
// grpc-go's own codec marshals a message of 1 KiB or more into a buffer
// from its pool, and unmarshals a received message from a copy in a pooled
// buffer. Buffers over 1 MiB go back to one sync.Pool, which keeps them
// until two garbage collections have passed: after a burst of large
// answers, a process that then goes quiet holds every one of them, and
// the next burst may take new ones rather than reuse those (a pooled
// buffer smaller than asked for is dropped). This codec gives a message of
// PoolBelow bytes or more a buffer of its own instead, garbage as soon as
// gRPC has written or decoded it, and leaves smaller messages, the common
// case, to grpc-go's codec.
package grpccodec

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// PoolBelow is the size from which a message gets a buffer of its own,
// never pooled: 1 MiB, the largest of grpc-go's pooled buffer tiers.
const PoolBelow = 1 << 20

// Codec is the codec; its zero value is ready. It is safe for concurrent
// use.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// base is grpc-go's protobuf codec, for the messages under PoolBelow.
var base = encoding.GetCodecV2(gproto.Name)

// ServerOption makes a gRPC server use Codec for every message.
func ServerOption() grpc.ServerOption { return grpc.ForceServerCodecV2(Codec{}) }

// Marshal encodes v, a proto.Message. A message of PoolBelow bytes or more
// is encoded into a slice of its own, which the garbage collector frees
// once gRPC has written it.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return base.Marshal(v)
	}
	size := proto.Size(m)
	if size < PoolBelow {
		return base.Marshal(v)
	}
	// UseCachedSize is safe: Size has just been computed, and a message
	// is not changed while it is sent.
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(make([]byte, 0, size), m)
	if err != nil {
		return nil, fmt.Errorf("grpccodec: marshal %T: %w", v, err)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// Unmarshal decodes data into v, a proto.Message. A message of PoolBelow
// bytes or more is gathered into a slice of its own (gRPC receives it in
// frames of at most 16 KiB), which is garbage once decoded: the decoded
// message's bytes fields are copies.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok || data.Len() < PoolBelow {
		return base.Unmarshal(data, v)
	}
	if err := proto.Unmarshal(data.Materialize(), m); err != nil {
		return fmt.Errorf("grpccodec: unmarshal %T: %w", v, err)
	}
	return nil
}

// Name is the content subtype, "proto", as grpc-go's codec's.
func (Codec) Name() string { return gproto.Name }
