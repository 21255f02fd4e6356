package pool

import (
	"bytes"
	"strings"
	"sync"
)

// TailBuffer keeps the last bytes written to it, up to a fixed size. It is an
// io.Writer safe for concurrent use, used for a container's output.
type TailBuffer struct {
	mu   sync.Mutex
	buf  []byte
	size int
}

// NewTailBuffer returns a TailBuffer keeping the last size bytes.
func NewTailBuffer(size int) *TailBuffer {
	return &TailBuffer{size: size, buf: make([]byte, 0, min(size, 4096))}
}

// Write appends p, dropping the oldest bytes beyond the size. It never fails.
func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if n >= t.size {
		t.buf = append(t.buf[:0], p[n-t.size:]...)
		return n, nil
	}
	if over := len(t.buf) + n - t.size; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// Bytes returns a copy of what the buffer holds.
func (t *TailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf)
}

// Tail returns the last n lines the buffer holds.
func (t *TailBuffer) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(string(t.Bytes()), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
