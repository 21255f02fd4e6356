package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
)

// logsAPI answers a followed log as the agent does (api/logs.go): two
// lines, then, flushed, each text sent on next, keep-alive empty lines
// included, until next is closed or the request ends.
type logsAPI struct {
	next chan string
}

func (m *logsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "2026-03-01T10:00:00Z c1 stdout: one\n\n2026-03-01T10:00:01Z c1 stderr: two\n")
	w.(http.Flusher).Flush()
	for {
		select {
		case line, ok := <-m.next:
			if !ok {
				return
			}
			io.WriteString(w, line)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
	}
}

// TestLogsFollow reads a followed log line by line while the agent writes
// it, keep-alives included, and stops it by cancelling the context.
func TestLogsFollow(t *testing.T) {
	m := &logsAPI{next: make(chan string)}
	srv := httptest.NewServer(m)
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	body, err := c.Logs(ctx, "hello", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	br := bufio.NewReader(body)
	readLine := func() string {
		t.Helper()
		s, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading %q: %v", s, err)
		}
		return s
	}
	if l := readLine(); l != "2026-03-01T10:00:00Z c1 stdout: one\n" {
		t.Errorf("line 1 %q", l)
	}
	if l := readLine(); l != "2026-03-01T10:00:01Z c1 stderr: two\n" {
		t.Errorf("line 2 %q", l)
	}
	// Lines come one at a time, each read before the next is written.
	m.next <- "\n" // keep-alive
	m.next <- "2026-03-01T10:00:02Z c2 stdout: three\n"
	if l := readLine(); l != "2026-03-01T10:00:02Z c2 stdout: three\n" {
		t.Errorf("line 3 %q", l)
	}
	m.next <- "\n"
	m.next <- "\n"
	m.next <- "2026-03-01T10:00:03Z c2 stdout: \n" // an empty line of the function is kept
	if l := readLine(); l != "2026-03-01T10:00:03Z c2 stdout: \n" {
		t.Errorf("line 4 %q", l)
	}
	cancel()
	if _, err := io.ReadAll(br); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v", err)
	}
}

func TestLogReader(t *testing.T) {
	long := strings.Repeat("x", 4096) // exactly bufio's default buffer
	in := "\n" + long + "\n\n\r\nshort\n" + long + "y\n\n" + "last without newline"
	want := long + "\nshort\n" + long + "y\n" + "last without newline"
	for name, r := range map[string]io.Reader{
		"whole":    strings.NewReader(in),
		"one byte": iotest.OneByteReader(strings.NewReader(in)),
	} {
		lr := &logReader{body: io.NopCloser(nil), r: bufio.NewReader(r)}
		got, err := io.ReadAll(lr)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s: got %d bytes, want %d", name, len(got), len(want))
		}
	}
	// Small reads get everything too.
	lr := &logReader{body: io.NopCloser(nil), r: bufio.NewReader(strings.NewReader(in))}
	var b bytes.Buffer
	p := make([]byte, 3)
	for {
		n, err := lr.Read(p)
		b.Write(p[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if b.String() != want {
		t.Errorf("small reads: got %d bytes, want %d", b.Len(), len(want))
	}
}
