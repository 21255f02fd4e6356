package api

import (
	"context"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// disconnectWatcher cancels the calls whose HTTP client closed its
// connection while the call ran, as nginx does (a FIN from the client is an
// abort): the agent then tells the executor to cancel, and the handler sees
// ctx.Done(). One goroutine waits in epoll for every watched connection;
// nothing polls.
//
// A connection is added to the epoll set once, when it opens (add), and
// taken out when it closes (remove), edge-triggered on the peer's FIN or a
// reset; a call only arms and disarms its connection's entry (arm), which
// costs no system call. A FIN seen between calls marks the connection, so a
// call armed after it is cancelled at once.
type disconnectWatcher struct {
	epfd int

	mu    sync.Mutex // guards the fields below
	next  uint64
	conns map[net.Conn]*watchedConn
	byTok map[uint64]*watchedConn
}

// watchedConn is one connection in the epoll set.
type watchedConn struct {
	token  uint64
	raw    syscall.RawConn
	cancel context.CancelFunc // the armed call's, or nil; guarded by disconnectWatcher.mu
	gone   bool               // the peer closed or reset; guarded by disconnectWatcher.mu
}

func newDisconnectWatcher() (*disconnectWatcher, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &disconnectWatcher{epfd: fd, conns: make(map[net.Conn]*watchedConn), byTok: make(map[uint64]*watchedConn)}
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
			var cancel context.CancelFunc
			w.mu.Lock()
			if wc := w.byTok[token]; wc != nil {
				wc.gone = true
				cancel, wc.cancel = wc.cancel, nil
			}
			w.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		}
	}
}

// add starts watching conn, a new connection. A connection that cannot be
// watched (not a socket) is ignored: its calls are never cancelled by a
// disconnect.
func (w *disconnectWatcher) add(conn net.Conn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	w.mu.Lock()
	w.next++
	wc := &watchedConn{token: w.next, raw: raw}
	w.conns[conn] = wc
	w.byTok[wc.token] = wc
	w.mu.Unlock()
	ev := unix.EpollEvent{
		Events: unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR | unix.EPOLLET,
		Fd:     int32(uint32(wc.token)),
		Pad:    int32(uint32(wc.token >> 32)),
	}
	var addErr error
	if err := raw.Control(func(fd uintptr) { addErr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) }); err != nil || addErr != nil {
		w.forget(conn)
	}
}

// remove stops watching conn, which is closing or handed over.
func (w *disconnectWatcher) remove(conn net.Conn) {
	wc := w.forget(conn)
	if wc != nil {
		// Closing the descriptor takes it out of the set too; this covers
		// a connection handed over (hijacked) and kept open.
		_ = wc.raw.Control(func(fd uintptr) { _ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	}
}

func (w *disconnectWatcher) forget(conn net.Conn) *watchedConn {
	w.mu.Lock()
	defer w.mu.Unlock()
	wc := w.conns[conn]
	if wc != nil {
		delete(w.conns, conn)
		delete(w.byTok, wc.token)
	}
	return wc
}

// arm arranges for cancel to be called if conn's peer closes it, until
// disarm is called with the same conn; the peer having closed it already
// calls cancel at once. A connection add did not watch is ignored.
func (w *disconnectWatcher) arm(conn net.Conn, cancel context.CancelFunc) {
	w.mu.Lock()
	wc := w.conns[conn]
	if wc == nil {
		w.mu.Unlock()
		return
	}
	if wc.gone {
		w.mu.Unlock()
		cancel()
		return
	}
	wc.cancel = cancel
	w.mu.Unlock()
}

// disarm ends what arm arranged for conn.
func (w *disconnectWatcher) disarm(conn net.Conn) {
	w.mu.Lock()
	if wc := w.conns[conn]; wc != nil {
		wc.cancel = nil
	}
	w.mu.Unlock()
}
