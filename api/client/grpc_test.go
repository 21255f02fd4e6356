package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kilnfx/kiln/api/wire"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// fakeInvoker is an in-memory kiln.v1.Invoker. Its stream answers requests
// in batches, last first, so that answers come out of order; a request for
// "hold" is only answered when the stream ends or it is cancelled.
type fakeInvoker struct {
	kilnv1.UnimplementedInvokerServer

	mu        sync.Mutex
	lastUnary *kilnv1.InvokeRequest
	cancelled []uint64
	maxBatch  int
}

func (f *fakeInvoker) Invoke(ctx context.Context, req *kilnv1.InvokeRequest) (*kilnv1.InvokeResponse, error) {
	f.mu.Lock()
	f.lastUnary = req
	f.mu.Unlock()
	switch req.Function {
	case "missing":
		grpc.SetTrailer(ctx, metadata.Pairs(wire.TrailerErrorClass, wire.ClassNotFound, wire.TrailerCallID, "call-1"))
		return nil, status.Error(codes.NotFound, `function "missing" not found`)
	case "broken":
		return nil, status.Error(codes.Unavailable, "connection reset")
	}
	return &kilnv1.InvokeResponse{Id: req.Id, Status: 200, Body: append([]byte("echo:"), req.Body...)}, nil
}

func (f *fakeInvoker) InvokeStream(stream kilnv1.Invoker_InvokeStreamServer) error {
	reqs := make(chan *kilnv1.InvokeRequest)
	go func() {
		defer close(reqs)
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- req:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	held := map[uint64]bool{}
	for {
		req, ok := <-reqs
		if !ok {
			return nil
		}
		batch := []*kilnv1.InvokeRequest{req}
		// Gather what else is already there, then answer last first.
	gather:
		for {
			select {
			case r, ok := <-reqs:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			case <-time.After(time.Millisecond):
				break gather
			}
		}
		f.mu.Lock()
		f.maxBatch = max(f.maxBatch, len(batch))
		f.mu.Unlock()
		for i := len(batch) - 1; i >= 0; i-- {
			r := batch[i]
			var resp *kilnv1.InvokeResponse
			switch {
			case r.Cancel:
				f.mu.Lock()
				f.cancelled = append(f.cancelled, r.Id)
				f.mu.Unlock()
				if !held[r.Id] {
					continue
				}
				delete(held, r.Id)
				resp = &kilnv1.InvokeResponse{Id: r.Id, Error: &kilnv1.InvokeError{Code: int32(codes.Canceled), Message: "cancelled", Class: wire.ClassUnavailable}}
			case r.Function == "hold":
				held[r.Id] = true
				continue
			case r.Function == "missing":
				resp = &kilnv1.InvokeResponse{Id: r.Id, CallId: "c", Error: &kilnv1.InvokeError{Code: int32(codes.NotFound), Message: "not found", Class: wire.ClassNotFound}}
			case r.Function == "kill":
				return status.Error(codes.Internal, "killed")
			default:
				resp = &kilnv1.InvokeResponse{Id: r.Id, Status: 200, Body: append([]byte("echo:"), r.Body...)}
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

func newFakeGRPC(t *testing.T, opts ...GRPCOption) (*fakeInvoker, *GRPCClient) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeInvoker{}
	srv := grpc.NewServer()
	kilnv1.RegisterInvokerServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	c, err := NewGRPC(ln.Addr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestGRPCInvoke(t *testing.T) {
	f, c := newFakeGRPC(t)
	ctx := context.Background()
	resp, err := c.Invoke(ctx, "hello", []byte("x"), http.Header{"A": {"1", "2"}})
	if err != nil || string(resp.Body) != "echo:x" {
		t.Fatalf("got %v %v", resp, err)
	}
	if n := len(f.lastUnary.Headers); n != 2 {
		t.Errorf("sent %d headers, want 2", n)
	}

	_, err = c.Invoke(ctx, "missing", nil, nil)
	var ge *GRPCError
	if !errors.As(err, &ge) || ge.Class != wire.ClassNotFound || ge.CallID != "call-1" || status.Code(err) != codes.NotFound {
		t.Errorf("kiln's error: %#v", err)
	} else if want := `function "missing" not found (not_found, gRPC NotFound)`; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}

	// An error without kiln's class is the transport's: not a *GRPCError.
	_, err = c.Invoke(ctx, "broken", nil, nil)
	if errors.As(err, &ge) || status.Code(err) != codes.Unavailable {
		t.Errorf("transport error: %#v", err)
	}

	if _, err := c.Invoke(ctx, "Bad Name", nil, nil); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad name: %v", err)
	}
}

func TestGRPCStreamDemultiplexes(t *testing.T) {
	f, c := newFakeGRPC(t, WithGRPCMaxInFlight(16))
	ctx := context.Background()
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for w := range 64 {
		wg.Go(func() {
			for i := range 50 {
				body := fmt.Sprintf("%d/%d", w, i)
				resp, err := s.Invoke(ctx, "hello", []byte(body))
				if err != nil {
					errc <- err
					return
				}
				if string(resp.Body) != "echo:"+body {
					errc <- fmt.Errorf("sent %q, got %q", body, resp.Body)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	f.mu.Lock()
	batch := f.maxBatch
	f.mu.Unlock()
	if batch > 16 {
		t.Errorf("%d requests in flight at once, want at most 16", batch)
	}
	if batch < 2 {
		t.Logf("answers never came out of order (largest batch %d)", batch)
	}

	resp, err := s.Invoke(ctx, "missing", nil)
	var ge *GRPCError
	if !errors.As(err, &ge) || ge.Code != codes.NotFound || ge.CallID != "c" || resp == nil {
		t.Errorf("refused call: %v %v", resp, err)
	}
	if _, err := s.Invoke(ctx, "UPPER", nil); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad name: %v", err)
	}
}

func TestGRPCStreamCancelAndClose(t *testing.T) {
	f, c := newFakeGRPC(t, WithGRPCMaxInFlight(1))
	ctx := context.Background()
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A cancelled caller returns ctx's error and the server is told.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err = s.Invoke(cctx, "hold", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("held call: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.cancelled)
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server was not told of the cancel")
		}
		time.Sleep(time.Millisecond)
	}
	// The slot was freed: the stream still takes a call.
	if resp, err := s.Invoke(ctx, "hello", []byte("y")); err != nil || string(resp.Body) != "echo:y" {
		t.Errorf("after cancel: %v %v", resp, err)
	}
	// A caller waiting for a slot gives up with its ctx.
	held := make(chan error, 1)
	go func() { _, err := s.Invoke(ctx, "hold", nil); held <- err }()
	time.Sleep(20 * time.Millisecond)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err = s.Invoke(wctx, "hello", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for a slot: %v", err)
	}
	// Close fails the waiting call and later ones.
	s.Close()
	if err := <-held; !errors.Is(err, ErrStreamClosed) {
		t.Errorf("held call at Close: %v", err)
	}
	if _, err := s.Invoke(ctx, "hello", nil); !errors.Is(err, ErrStreamClosed) {
		t.Errorf("after Close: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Error("Done not closed after Close")
	}
}

func TestGRPCStreamBrokenByServer(t *testing.T) {
	_, c := newFakeGRPC(t)
	ctx := context.Background()
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	held := make(chan error, 1)
	go func() { _, err := s.Invoke(ctx, "hold", nil); held <- err }()
	_, err = s.Invoke(ctx, "kill", nil)
	if status.Code(err) != codes.Internal {
		t.Errorf("call ending the stream: %v", err)
	}
	if err := <-held; status.Code(err) != codes.Internal {
		t.Errorf("other call in flight: %v", err)
	}
	if _, err := s.Invoke(ctx, "hello", nil); status.Code(err) != codes.Internal {
		t.Errorf("call after the end: %v", err)
	}
	if status.Code(s.Err()) != codes.Internal {
		t.Errorf("Err: %v", s.Err())
	}
}

// TestStatusErrorClasses checks that every class kiln can answer comes back
// from a management RPC's status as it was sent, codes shared by several
// classes included, and that statuses kiln did not answer itself stay as
// they are.
func TestStatusErrorClasses(t *testing.T) {
	for _, class := range wire.Classes() {
		st, err := status.New(codes.ResourceExhausted, "message").WithDetails(&kilnv1.Error{Class: class})
		if err != nil {
			t.Fatal(err)
		}
		var ge *GRPCError
		if err := statusError(st.Err()); !errors.As(err, &ge) || ge.Class != class || ge.Code != codes.ResourceExhausted || ge.Message != "message" {
			t.Errorf("class %s came back as %#v", class, err)
		}
	}
	for _, err := range []error{
		status.Error(codes.ResourceExhausted, "grpc: received message larger than max"),
		status.Error(codes.Unavailable, "connection refused"),
		errors.New("not a status"),
	} {
		if got := statusError(err); got != err {
			t.Errorf("statusError(%v) = %#v, want it unchanged", err, got)
		}
	}
	if statusError(nil) != nil {
		t.Error("statusError(nil) is not nil")
	}
}
