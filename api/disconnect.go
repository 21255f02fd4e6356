package api

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// disconnectWatcher cancels the calls whose HTTP client closed its
// connection while the call ran, as nginx does (a FIN from the client is an
// abort): the agent then tells the executor to cancel, and the handler sees
// ctx.Done(). One goroutine waits in epoll for every watched connection;
// nothing polls.
type disconnectWatcher struct {
	epfd  int
	next  atomic.Uint64
	mu    sync.Mutex
	calls map[uint64]context.CancelFunc
}

func newDisconnectWatcher() (*disconnectWatcher, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &disconnectWatcher{epfd: fd, calls: make(map[uint64]context.CancelFunc)}
	go w.loop()
	return w, nil
}

func (w *disconnectWatcher) loop() {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			w.mu.Lock()
			cancel := w.calls[token]
			delete(w.calls, token)
			w.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		}
	}
}

// watch arranges for cancel to be called if conn's peer closes it. The
// returned function stops watching; it must be called before conn is
// closed or reused. A connection that cannot be watched (not a socket) is
// ignored.
func (w *disconnectWatcher) watch(conn net.Conn, cancel context.CancelFunc) (unwatch func()) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return func() {}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return func() {}
	}
	token := w.next.Add(1)
	w.mu.Lock()
	w.calls[token] = cancel
	w.mu.Unlock()
	ev := unix.EpollEvent{
		Events: unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR,
		Fd:     int32(uint32(token)),
		Pad:    int32(uint32(token >> 32)),
	}
	var addErr error
	if err := raw.Control(func(fd uintptr) { addErr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) }); err != nil || addErr != nil {
		w.forget(token)
		return func() {}
	}
	return func() {
		_ = raw.Control(func(fd uintptr) { _ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		w.forget(token)
	}
}

func (w *disconnectWatcher) forget(token uint64) {
	w.mu.Lock()
	delete(w.calls, token)
	w.mu.Unlock()
}
