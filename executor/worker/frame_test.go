package worker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/kilnfx/kiln/executor/sdk"
)

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"uote\\", "\x00\x1f\x7f", "é€𝄞", "\xff\xfe bad", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		var back, want string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q encodes as %s, not JSON: %v", s, got, err)
		}
		std, _ := json.Marshal(s) // also replaces each bad byte with U+FFFD
		_ = json.Unmarshal(std, &want)
		if back != want {
			t.Fatalf("%q came back as %q, want %q", s, back, want)
		}
	})
}

// frame returns a frame of header and body as the worker writes it.
func frame(header string, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(header)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	return append(append(b, header...), body...)
}

func FuzzFrameReader(f *testing.F) {
	f.Add(frame(`{"t":"result","id":"a","status":201,"headers":[["K","v"]],"error":""}`, []byte("body")))
	f.Add(frame(`{"t":"ready"}`, nil))
	f.Add(frame(`not json`, nil))
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := newFrameReader(bytes.NewReader(in))
		for range 100 {
			h, _, err := fr.next()
			if err != nil {
				if !errors.Is(err, ErrProtocol) && err != io.EOF {
					t.Fatalf("error %v, want a protocol error or EOF", err)
				}
				return
			}
			if h == nil {
				t.Fatal("no header and no error")
			}
		}
	})
}

func TestFrameReader(t *testing.T) {
	in := frame(`{"t":"result","id":"a","status":201,"headers":[["K","v"],["K","w"]],"error":"e"}`, []byte("body"))
	in = append(in, frame(`{"t":"loaded"}`, nil)...)
	fr := newFrameReader(bytes.NewReader(in))
	h, body, err := fr.next()
	if err != nil || h.T != "result" || h.ID != "a" || h.Status != 201 || len(h.Headers) != 2 || h.Headers[1] != [2]string{"K", "w"} || h.Error != "e" || string(body) != "body" {
		t.Fatalf("first frame %+v %q %v", h, body, err)
	}
	if h, body, err = fr.next(); err != nil || h.T != "loaded" || body != nil {
		t.Fatalf("second frame %+v %q %v", h, body, err)
	}
	if _, _, err = fr.next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
	for name, in := range map[string][]byte{
		"header over the limit": binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, MaxHeader+1), 0),
		"body over the limit":   binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 2), MaxBody+1),
		"truncated":             frame(`{"t":"ready"}`, []byte("body"))[:15],
		"not an object":         frame(`[1]`, nil),
	} {
		if _, _, err := newFrameReader(bytes.NewReader(in)).next(); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want a protocol error", name, err)
		}
	}
}

// TestResultBodyOverLimit checks that a result whose body is over MaxBody
// is skipped and marked, not a protocol error, and that the next frame
// still reads.
func TestResultBodyOverLimit(t *testing.T) {
	frame := func(header string, body int) []byte {
		b := make([]byte, 8, 8+len(header)+body)
		binary.BigEndian.PutUint32(b[:4], uint32(len(header)))
		binary.BigEndian.PutUint32(b[4:], uint32(body))
		b = append(b, header...)
		return append(b, make([]byte, body)...)
	}
	var in []byte
	in = append(in, frame(`{"t":"result","id":"big"}`, MaxBody+1)...)
	in = append(in, frame(`{"t":"result","id":"small"}`, 2)...)
	fr := newFrameReader(bytes.NewReader(in))
	h, body, err := fr.next()
	if err != nil || h.ID != "big" || h.bodyOverLimit != MaxBody+1 || body != nil {
		t.Fatalf("over the limit: %+v %d bytes %v", h, len(body), err)
	}
	if _, err := (callResult{h, body}).response(); !errors.Is(err, sdk.ErrResponseTooLarge) {
		t.Errorf("its answer: %v, want sdk.ErrResponseTooLarge", err)
	}
	if h, body, err := fr.next(); err != nil || h.ID != "small" || len(body) != 2 {
		t.Fatalf("next frame: %+v %d bytes %v", h, len(body), err)
	}
	big := frame(`{"t":"ready"}`, MaxBody+1)
	if _, _, err := newFrameReader(bytes.NewReader(big)).next(); !errors.Is(err, ErrProtocol) {
		t.Errorf("a ready frame over the limit: %v, want ErrProtocol", err)
	}
}
