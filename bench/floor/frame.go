package floor

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// A frame is a call's or an answer's body with the call's id:
//
//	+----------------+----------------+-----------------+
//	| id: uint64 LE  | len: uint32 LE | body: len bytes |
//	+----------------+----------------+-----------------+
//
// An answer carries the id of its call; ids are the caller's to choose and
// unique among its calls in flight.
const (
	// HeaderLen is the length of a frame's header.
	HeaderLen = 12
	// MaxBody is the largest body a frame may carry.
	MaxBody = 64 << 20
)

// ErrFrameTooLarge means a frame's header announced a body over MaxBody: the
// peer is not speaking this framing, or is broken.
var ErrFrameTooLarge = errors.New("frame body over the limit")

// AppendFrame appends the frame of id and body to dst.
func AppendFrame(dst []byte, id uint64, body []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, id)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// writeFrame writes the frame of id and body to w, header then body, with
// no copy of the body when w has room.
func writeFrame(w *bufio.Writer, id uint64, body []byte) error {
	if len(body) > MaxBody {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(body))
	}
	// The header goes straight into w's buffer: a local array would
	// escape through Write and cost an allocation per frame.
	if w.Available() < HeaderLen {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	h := binary.LittleEndian.AppendUint64(w.AvailableBuffer(), id)
	h = binary.LittleEndian.AppendUint32(h, uint32(len(body)))
	if _, err := w.Write(h); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// FrameReader reads frames from a stream. It is used by one goroutine at a
// time.
type FrameReader struct {
	r   *bufio.Reader
	buf []byte // the last body read, when it did not fit r's buffer
}

// NewFrameReader returns a FrameReader of r, buffering 64 KiB.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// Next reads the next frame. body is valid until the following call of
// Next. At the end of the stream between two frames it returns io.EOF; when
// the stream ends inside a frame, io.ErrUnexpectedEOF; for a header
// announcing more than MaxBody, an error wrapping ErrFrameTooLarge.
func (fr *FrameReader) Next() (id uint64, body []byte, err error) {
	h, err := fr.r.Peek(HeaderLen)
	if err != nil {
		if errors.Is(err, io.EOF) && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	id = binary.LittleEndian.Uint64(h[:8])
	n := int(binary.LittleEndian.Uint32(h[8:]))
	if n > MaxBody {
		return 0, nil, fmt.Errorf("%w: header announces %d bytes", ErrFrameTooLarge, n)
	}
	_, _ = fr.r.Discard(HeaderLen)
	// A body that fits the buffer is read in place, without a copy.
	if n <= fr.r.Size() {
		body, err = fr.r.Peek(n)
		if err != nil {
			return 0, nil, unexpected(err)
		}
		_, _ = fr.r.Discard(n)
		return id, body, nil
	}
	// A larger one grows its buffer as its bytes come, so that a header
	// alone cannot make the reader allocate MaxBody.
	fr.buf = fr.buf[:0]
	for len(fr.buf) < n {
		have := len(fr.buf)
		chunk := min(n-have, 1<<20)
		fr.buf = slices.Grow(fr.buf, chunk)[:have+chunk]
		m, err := io.ReadFull(fr.r, fr.buf[have:])
		fr.buf = fr.buf[:have+m]
		if err != nil {
			return 0, nil, unexpected(err)
		}
	}
	return id, fr.buf, nil
}

// Ready reports whether a whole frame is buffered, so that Next returns
// without reading the stream: a server answering frames flushes its
// answers before it would wait.
func (fr *FrameReader) Ready() bool {
	b := fr.r.Buffered()
	if b < HeaderLen {
		return false
	}
	h, _ := fr.r.Peek(HeaderLen)
	return b-HeaderLen >= int(binary.LittleEndian.Uint32(h[8:]))
}

// unexpected turns the end of the stream inside a frame into
// io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// newWriter returns the buffered writer frames are written through, the
// size of a FrameReader's buffer.
func newWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 64<<10) }
