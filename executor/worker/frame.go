package worker

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// Frame limits; a frame over them is a protocol error, except a result
// whose body alone is over MaxBody: its call fails with
// sdk.ErrResponseTooLarge and the worker serves on.
const (
	// MaxHeader is the largest frame header, in bytes.
	MaxHeader = 1 << 20
	// MaxBody is the largest frame body, in bytes.
	MaxBody = 64 << 20
)

// Frame kinds, the header's "t".
const (
	kindLoad      = "load"
	kindCall      = "call"
	kindCancel    = "cancel"
	kindReady     = "ready"
	kindLoaded    = "loaded"
	kindLoadError = "load_error"
	kindResult    = "result"
)

// ErrProtocol classes a frame from the worker that breaks the protocol.
var ErrProtocol = errors.New("worker protocol error")

// workerHeader is the header of a frame from the worker: every member any
// of its kinds uses.
type workerHeader struct {
	T       string      `json:"t"`
	ID      string      `json:"id"`
	Status  int         `json:"status"`
	Headers [][2]string `json:"headers"`
	Error   string      `json:"error"`
	Version string      `json:"version"`

	// A result's optional usage figures: the worker process's CPU time
	// during the call, in microseconds, and its peak resident set, in KiB.
	CPUUserUs int64 `json:"cpu_user_us"`
	CPUSysUs  int64 `json:"cpu_sys_us"`
	MaxRSSKB  int64 `json:"max_rss_kb"`

	// bodyOverLimit is the size of a result's body the reader skipped
	// because it was over MaxBody; 0 for any other frame.
	bodyOverLimit int64
}

// frameReader reads the worker's frames. It is not safe for concurrent use.
type frameReader struct {
	r      *bufio.Reader
	header []byte // reused between frames
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// next reads one frame. Its body is newly allocated (nil when empty) and
// belongs to the caller. An error wrapping ErrProtocol means a malformed
// frame; io.EOF means the pipe ended between frames.
func (fr *frameReader) next() (*workerHeader, []byte, error) {
	var prefix [8]byte
	if _, err := io.ReadFull(fr.r, prefix[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("%w: truncated frame", ErrProtocol)
		}
		return nil, nil, err
	}
	hl, bl := binary.BigEndian.Uint32(prefix[:4]), binary.BigEndian.Uint32(prefix[4:])
	if hl > MaxHeader {
		return nil, nil, fmt.Errorf("%w: frame of %d+%d bytes is over the limits", ErrProtocol, hl, bl)
	}
	if cap(fr.header) < int(hl) {
		fr.header = make([]byte, hl)
	}
	fr.header = fr.header[:hl]
	if _, err := io.ReadFull(fr.r, fr.header); err != nil {
		return nil, nil, fmt.Errorf("%w: truncated frame: %v", ErrProtocol, err)
	}
	if bl > MaxBody {
		// A result's body over the limit is skipped, and its call
		// answered response_too_large; any other frame that large
		// breaks the protocol.
		h := new(workerHeader)
		if err := json.Unmarshal(fr.header, h); err != nil || h.T != kindResult {
			return nil, nil, fmt.Errorf("%w: frame of %d+%d bytes is over the limits", ErrProtocol, hl, bl)
		}
		if _, err := io.CopyN(io.Discard, fr.r, int64(bl)); err != nil {
			return nil, nil, fmt.Errorf("%w: truncated frame: %v", ErrProtocol, err)
		}
		h.bodyOverLimit = int64(bl)
		return h, nil, nil
	}
	var body []byte
	if bl > 0 {
		body = make([]byte, bl)
		if _, err := io.ReadFull(fr.r, body); err != nil {
			return nil, nil, fmt.Errorf("%w: truncated frame: %v", ErrProtocol, err)
		}
	}
	h := new(workerHeader)
	if err := json.Unmarshal(fr.header, h); err != nil {
		return nil, nil, fmt.Errorf("%w: frame header: %v", ErrProtocol, err)
	}
	return h, body, nil
}

// beginFrame appends a frame's length prefix to b with room for the
// header's length, to be set by endHeader once the header is written.
func beginFrame(b []byte) []byte {
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0)
}

// endHeader sets the lengths of the frame begun at start of b, whose header
// is everything after its prefix, with a body of bodyLen bytes to follow.
func endHeader(b []byte, start, bodyLen int) []byte {
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-8))
	binary.BigEndian.PutUint32(b[start+4:], uint32(bodyLen))
	return b
}

// appendJSONString appends s to b as a JSON string. Bytes that are not
// UTF-8 become U+FFFD, so that the header stays valid JSON whatever a
// caller's header holds.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendMember appends `,"key":` and s as a JSON string.
func appendMember(b []byte, key, s string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, s)
}

// appendIntMember appends `,"key":n`.
func appendIntMember(b []byte, key string, n int64) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, n, 10)
}
