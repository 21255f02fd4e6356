package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// Errors a call through a container can end with. Callers test them with
// errors.Is.
var (
	// ErrExecutorFailed means the container's executor died, broke its
	// session, or never became ready.
	ErrExecutorFailed = errors.New("executor failed")
	// ErrClosed means the pool or the container is shutting down.
	ErrClosed = errors.New("pool closed")
)

// session is the agent's side of one executor's Session stream. Invoke may be
// called from many goroutines; the stream's single receiver is serve.
type session struct {
	stream pb.Agent_SessionServer
	ready  *pb.Ready

	sendMu sync.Mutex

	mu      sync.Mutex
	pending map[string]chan *pb.Result
	err     error         // set once the session ended
	done    chan struct{} // closed when the session ended
}

func newSession(stream pb.Agent_SessionServer, ready *pb.Ready) *session {
	return &session{
		stream:  stream,
		ready:   ready,
		pending: make(map[string]chan *pb.Result),
		done:    make(chan struct{}),
	}
}

var resultChanPool = sync.Pool{New: func() any { return make(chan *pb.Result, 1) }}

// invoke sends inv and waits for its Result. When ctx ends first it sends
// Cancel and returns ctx's error; when the session ends first it returns an
// error wrapping ErrExecutorFailed.
func (s *session) invoke(ctx context.Context, inv *pb.Invoke) (*pb.Result, error) {
	ch := resultChanPool.Get().(chan *pb.Result)
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		resultChanPool.Put(ch)
		return nil, err
	}
	if _, dup := s.pending[inv.CallId]; dup {
		s.mu.Unlock()
		resultChanPool.Put(ch)
		return nil, fmt.Errorf("call id %q is already in flight", inv.CallId)
	}
	s.pending[inv.CallId] = ch
	s.mu.Unlock()

	var sendingAt int64
	if inv.Trace {
		sendingAt = pb.MonotonicNow()
	}
	msg := &pb.AgentMsg{Msg: &pb.AgentMsg_Invoke{Invoke: inv}}
	if err := s.send(msg); err != nil {
		// A stream that fails a Send is broken for good: end the session
		// now, so the container is not handed out again before serve sees
		// the end of the stream.
		err = fmt.Errorf("%w: send invoke: %v", ErrExecutorFailed, err)
		s.close(err)
		return nil, err
	}
	select {
	case res := <-ch:
		resultChanPool.Put(ch)
		if res.Trace != nil {
			res.Trace.AgentSendingNs = sendingAt
		}
		return res, nil
	case <-ctx.Done():
		if s.forget(inv.CallId) {
			_ = s.send(&pb.AgentMsg{Msg: &pb.AgentMsg_Cancel{Cancel: &pb.Cancel{CallId: inv.CallId}}})
		}
		// The channel is not reused: a Result may still be delivered to it.
		return nil, ctx.Err()
	case <-s.done:
		s.forget(inv.CallId)
		return nil, s.err
	}
}

// forget drops a pending call and reports whether it was still pending.
func (s *session) forget(id string) bool {
	s.mu.Lock()
	_, ok := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	return ok
}

func (s *session) send(m *pb.AgentMsg) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(m)
}

// serve receives the executor's messages until the stream ends, delivering
// each Result to its waiting call. It returns the reason the session ended.
func (s *session) serve() error {
	for {
		m, err := s.stream.Recv()
		if err != nil {
			s.close(fmt.Errorf("%w: session ended: %v", ErrExecutorFailed, err))
			return err
		}
		switch msg := m.Msg.(type) {
		case *pb.ExecutorMsg_Result:
			res := msg.Result
			if res.Trace != nil {
				res.Trace.AgentReceivedNs = pb.MonotonicNow()
			}
			s.mu.Lock()
			ch, ok := s.pending[res.CallId]
			delete(s.pending, res.CallId)
			s.mu.Unlock()
			if ok {
				ch <- res
			}
		case *pb.ExecutorMsg_Pong, *pb.ExecutorMsg_Log, *pb.ExecutorMsg_Ready:
			// Nothing waits for these yet.
		}
	}
}

// close ends the session with err; calls in flight return err.
func (s *session) close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	clear(s.pending)
	close(s.done)
}
