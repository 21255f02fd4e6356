package floor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"

	"github.com/kilnfx/kiln/api/client"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func TestFrameRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 10<<10) // 160 KiB: over the reader's buffer
	frames := []struct {
		id   uint64
		body []byte
	}{
		{1, []byte("hello")},
		{2, nil},
		{1<<64 - 1, []byte{0, 1, 2, 255}},
		{7, big},
		{8, []byte("after the big one")},
	}
	var stream []byte
	for _, f := range frames {
		stream = AppendFrame(stream, f.id, f.body)
	}
	// The same bytes from the buffered writer the hops use.
	var buf bytes.Buffer
	w := newWriter(&buf)
	for _, f := range frames {
		if err := writeFrame(w, f.id, f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), stream) {
		t.Fatal("writeFrame and AppendFrame disagree")
	}
	// Read back one byte at a time: frames must not depend on how the
	// stream is cut.
	fr := NewFrameReader(&oneByte{r: bytes.NewReader(stream)})
	for _, f := range frames {
		id, body, err := fr.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", f.id, err)
		}
		if id != f.id || !bytes.Equal(body, f.body) {
			t.Fatalf("got frame %d of %d bytes, want %d of %d", id, len(body), f.id, len(f.body))
		}
	}
	if _, _, err := fr.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestFrameReaderReady(t *testing.T) {
	stream := AppendFrame(AppendFrame(nil, 1, []byte("one")), 2, []byte("two"))
	fr := NewFrameReader(bytes.NewReader(stream[:len(stream)-1]))
	if fr.Ready() {
		t.Fatal("ready before anything was read")
	}
	if _, _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	if fr.Ready() {
		t.Fatal("ready with the second frame one byte short")
	}
	fr = NewFrameReader(bytes.NewReader(stream))
	if _, _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	if !fr.Ready() {
		t.Fatal("not ready with the second frame buffered")
	}
}

func TestFrameReaderTruncated(t *testing.T) {
	whole := AppendFrame(nil, 9, []byte("a body cut short"))
	for _, n := range []int{1, HeaderLen - 1, HeaderLen, HeaderLen + 3, len(whole) - 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			_, _, err := NewFrameReader(bytes.NewReader(whole[:n])).Next()
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("stream cut after %d bytes: %v, want io.ErrUnexpectedEOF", n, err)
			}
		})
	}
}

func TestFrameReaderTooLarge(t *testing.T) {
	h := AppendFrame(nil, 1, nil)
	h[8], h[9], h[10], h[11] = 0xff, 0xff, 0xff, 0xff
	if _, _, err := NewFrameReader(bytes.NewReader(h)).Next(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("4 GiB header: %v, want ErrFrameTooLarge", err)
	}
	w := newWriter(io.Discard)
	if err := writeFrame(w, 1, make([]byte, MaxBody+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing over MaxBody: %v, want ErrFrameTooLarge", err)
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, 1, []byte("x")), 2, nil))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		var again []byte
		for {
			id, body, err := fr.Next()
			if err != nil {
				break
			}
			again = AppendFrame(again, id, body)
		}
		// What was read re-encodes to a prefix of the input.
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("frames read do not re-encode to a prefix of the input")
		}
	})
}

// unixPair returns both ends of a unix-socket connection.
func unixPair(t *testing.T) (edge, fn net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "hop.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	fn, err = net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	edge = <-accepted
	t.Cleanup(func() { edge.Close(); fn.Close() })
	return edge, fn
}

// callMany makes n calls at once on h, each with its own body, and checks
// that each gets want(body).
func callMany(t *testing.T, h Hop, n int, want func(body []byte) []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprintf("call %d", i))
			ans, err := h.Call(ctx, body, nil)
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			if w := want(body); !bytes.Equal(ans, w) {
				t.Errorf("call %d answered %q, want %q", i, ans, w)
			}
		}()
	}
	wg.Wait()
}

func TestFrameHopManyInFlight(t *testing.T) {
	edge, fn := unixPair(t)
	h := NewFrameHop(edge)
	defer h.Close()
	// A function that answers only once it holds 64 calls, last first:
	// every call is in flight at once, and answers come back out of order.
	const n = 64
	go func() {
		fr := NewFrameReader(fn)
		type pending struct {
			id   uint64
			body []byte
		}
		var got []pending
		for len(got) < n {
			id, body, err := fr.Next()
			if err != nil {
				t.Error(err)
				return
			}
			got = append(got, pending{id, append([]byte("re: "), body...)})
		}
		var out []byte
		for i := len(got) - 1; i >= 0; i-- {
			out = AppendFrame(out, got[i].id, got[i].body)
		}
		if _, err := fn.Write(out); err != nil {
			t.Error(err)
		}
	}()
	callMany(t, h, n, func(b []byte) []byte { return append([]byte("re: "), b...) })
}

func TestFrameHopEcho(t *testing.T) {
	edge, fn := unixPair(t)
	h := NewFrameHop(edge)
	served := make(chan error, 1)
	go func() { served <- ServeFrames(fn, Echo) }()
	callMany(t, h, 500, func(b []byte) []byte { return b })
	// Bodies over the buffers, one at a time and together.
	big := bytes.Repeat([]byte("k"), 200<<10)
	if ans, err := h.Call(context.Background(), big, nil); err != nil || !bytes.Equal(ans, big) {
		t.Fatalf("big body: %d bytes back, %v", len(ans), err)
	}
	callMany(t, h, 8, func(b []byte) []byte { return b })
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("ServeFrames after the edge closed: %v, want nil", err)
	}
	if _, err := h.Call(context.Background(), []byte("late"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v, want ErrClosed", err)
	}
}

func TestFrameHopPeerClosesMidFrame(t *testing.T) {
	edge, fn := unixPair(t)
	h := NewFrameHop(edge)
	defer h.Close()
	// The function reads two calls, answers half of the first answer's
	// frame, and dies.
	go func() {
		fr := NewFrameReader(fn)
		id, _, err := fr.Next()
		if err != nil {
			t.Error(err)
			return
		}
		if _, _, err := fr.Next(); err != nil {
			t.Error(err)
			return
		}
		f := AppendFrame(nil, id, []byte("an answer that never ends"))
		_, _ = fn.Write(f[:HeaderLen+4])
		fn.Close()
	}()
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := h.Call(context.Background(), []byte("doomed"), nil)
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("call in flight: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a call in flight still waits after the peer closed")
		}
	}
	<-h.Done()
	if _, err := h.Call(context.Background(), []byte("later"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after the peer closed: %v, want ErrClosed", err)
	}
}

func TestFrameHopCallerGivesUp(t *testing.T) {
	edge, fn := unixPair(t)
	h := NewFrameHop(edge)
	defer h.Close()
	// The function holds the first call's answer until the second call
	// came, then answers every call.
	go func() {
		fr := NewFrameReader(fn)
		id, body, err := fr.Next()
		if err != nil {
			t.Error(err)
			return
		}
		held := AppendFrame(nil, id, body)
		for {
			id, body, err := fr.Next()
			if err != nil {
				return
			}
			if _, err := fn.Write(AppendFrame(held, id, body)); err != nil {
				return
			}
			held = held[:0]
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.Call(ctx, []byte("slow"), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call past its deadline: %v", err)
	}
	// The late answer to the first call is dropped; the hop goes on.
	callMany(t, h, 16, func(b []byte) []byte { return b })
}

func TestGRPCHop(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "grpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := ListenGRPC(l)
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- ServeGRPC(ctx, sock, func(dst, b []byte) []byte { return append(append(dst, "re: "...), b...) })
	}()
	h, err := g.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	callMany(t, h, 500, func(b []byte) []byte { return append([]byte("re: "), b...) })
	if ans, err := h.Call(ctx, nil, nil); err != nil || string(ans) != "re: " {
		t.Fatalf("empty body: %q, %v", ans, err)
	}
	// The function's process ends: calls fail with ErrClosed.
	cancel()
	<-served
	<-h.Done()
	if _, err := h.Call(context.Background(), []byte("later"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after the session ended: %v, want ErrClosed", err)
	}
}

func TestRelayHandler(t *testing.T) {
	edge, fn := unixPair(t)
	h := NewFrameHop(edge)
	defer h.Close()
	go func() { _ = ServeFrames(fn, Echo) }()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: RelayHandler(h)}
	go func() { _ = srv.Serve(l) }()
	defer srv.Shutdown()
	c := &fasthttp.HostClient{Addr: l.Addr().String(), MaxConns: 8}
	post := func(body string) (int, string) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + c.Addr + "/echo")
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetBodyString(body)
		if err := c.Do(req, resp); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode(), string(resp.Body())
	}
	for _, b := range []string{"one", "two", ""} {
		if code, got := post(b); code != 200 || got != b {
			t.Fatalf("POST %q: %d %q", b, code, got)
		}
	}
	fn.Close()
	<-h.Done()
	if code, _ := post("after"); code != fasthttp.StatusBadGateway {
		t.Fatalf("after the function's process closed: status %d, want 502", code)
	}
}

// oneByte reads one byte at a time.
type oneByte struct{ r io.Reader }

func (o *oneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestInvoker(t *testing.T) {
	edge, fn := unixPair(t)
	h := NewFrameHop(edge)
	defer h.Close()
	go func() { _ = ServeFrames(fn, Echo) }()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterInvokerServer(srv, NewInvoker(h))
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	c, err := client.NewGRPC(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Invoke(ctx, "echo", []byte("unary"), nil)
	if err != nil || resp.Status != 200 || string(resp.Body) != "unary" {
		t.Fatalf("Invoke: %v, %v", resp, err)
	}
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("stream call %d", i)
			resp, err := s.Invoke(ctx, "echo", []byte(body))
			if err != nil || resp.Status != 200 || string(resp.Body) != body {
				t.Errorf("stream call %d: %v, %v", i, resp, err)
			}
		}()
	}
	wg.Wait()
}

// The benchmarks measure one call through each hop to an echoing peer in
// the same process over a real unix socket, one at a time and from
// GOMAXPROCS goroutines at once:
//
//	go test -run '^$' -bench . -count 10 ./bench/floor/ > new.txt && benchstat old.txt new.txt

func BenchmarkFrameHop(b *testing.B) {
	edge, fn := unixPairB(b)
	h := NewFrameHop(edge)
	defer h.Close()
	go func() { _ = ServeFrames(fn, Echo) }()
	benchHop(b, h)
}

func BenchmarkGRPCHop(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "grpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	g := ListenGRPC(l)
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = ServeGRPC(ctx, sock, Echo) }()
	h, err := g.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	benchHop(b, h)
}

func benchHop(b *testing.B, h Hop) {
	body := bytes.Repeat([]byte("x"), 64)
	ctx := context.Background()
	b.Run("calls=seq", func(b *testing.B) {
		b.ReportAllocs()
		var dst []byte
		for i := 0; i < b.N; i++ {
			var err error
			if dst, err = h.Call(ctx, body, dst[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("calls=parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			var dst []byte
			for pb.Next() {
				var err error
				if dst, err = h.Call(ctx, body, dst[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

func unixPairB(b *testing.B) (edge, fn net.Conn) {
	l, err := net.Listen("unix", filepath.Join(b.TempDir(), "hop.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	fn, err = net.Dial("unix", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	edge = <-accepted
	b.Cleanup(func() { edge.Close(); fn.Close() })
	return edge, fn
}
