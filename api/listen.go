package api

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/mem"
)

// Connection limits of each edge listener unless WithConnLimits or
// WithGRPCConnLimits say otherwise. kilnd lowers the total to fit its
// descriptor limit.
const (
	// DefaultMaxConns bounds the connections one listener keeps open.
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerIP bounds the connections one listener keeps open
	// from one client IP: room for a load generator's 256 connections
	// twice over, while one client can hold an eighth of DefaultMaxConns.
	DefaultMaxConnsPerIP = 512
)

// Accept backoff: a failed accept that may succeed later is retried after
// acceptBackoffMin, doubling up to acceptBackoffMax.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// logEvery is the least time between two log lines about the same kind of
// trouble on one listener (failed accepts, refused connections).
const logEvery = 10 * time.Second

// refusal says why a connection was not admitted.
type refusal int

const (
	admitted  refusal = iota
	overTotal         // the listener has its total bound of connections open
	overPerIP         // the client's IP has its bound of connections open
)

func (r refusal) String() string {
	switch r {
	case overTotal:
		return "too many connections"
	case overPerIP:
		return "too many connections from one address"
	}
	return "admitted"
}

// connLimiter counts the connections of a listener, in total and per
// client IP, and admits a new one only within both bounds. It is safe for
// concurrent use.
type connLimiter struct {
	total, perIP int // bounds; below 1: none

	mu   sync.Mutex
	open int                // guarded by mu: connections admitted and not released
	byIP map[netip.Addr]int // guarded by mu: open connections of each IP that has any
}

func newConnLimiter(total, perIP int) *connLimiter {
	return &connLimiter{total: total, perIP: perIP, byIP: make(map[netip.Addr]int)}
}

// acquire admits a connection from ip (the zero Addr when the peer has no
// IP, which only the total bound applies to) or says why not. An admitted
// connection must be released exactly once.
func (l *connLimiter) acquire(ip netip.Addr) refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total > 0 && l.open >= l.total {
		return overTotal
	}
	if ip.IsValid() && l.perIP > 0 && l.byIP[ip] >= l.perIP {
		return overPerIP
	}
	l.open++
	if ip.IsValid() {
		l.byIP[ip]++
	}
	return admitted
}

// release gives back the slot of a connection from ip that acquire
// admitted.
func (l *connLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if !ip.IsValid() {
		return
	}
	if n := l.byIP[ip] - 1; n > 0 {
		l.byIP[ip] = n
	} else {
		delete(l.byIP, ip)
	}
}

// counts returns the connections open in total and from ip.
func (l *connLimiter) counts(ip netip.Addr) (total, fromIP int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.byIP[ip]
}

// remoteIP returns the IP c comes from, IPv4-mapped addresses as IPv4, or
// the zero Addr when c's peer has no IP (a unix socket). It does not
// allocate.
func remoteIP(c net.Conn) netip.Addr {
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return ip.Unmap()
}

// limitListener is the listener under kiln's HTTP and gRPC servers. Its
// Accept
//
//   - retries accepts that failed for want of a resource that frees up
//     (descriptors: EMFILE, ENFILE; kernel memory: ENOBUFS, ENOMEM) or for
//     any other temporary reason, after 5 ms doubling to 1 s, logging at
//     most one line every 10 s; it returns an error only once the listener
//     is closed or for an error no retry can fix, so a server never stops
//     serving because clients exhausted its descriptors;
//   - refuses a connection over the limiter's bounds: it writes the
//     refusal (when refuse is set), closes the connection at once and goes
//     on accepting.
//
// A connection it returns holds a slot of the limiter until released:
// with track set, by the connection's first Close; without, the server
// must call release(remoteIP(c)) once it has closed c (the HTTP server does
// from fasthttp's ConnState hook, which leaves the *net.TCPConn unwrapped
// for fasthttp's writev and kiln's disconnect watcher).
type limitListener struct {
	net.Listener
	lim    *connLimiter
	log    *slog.Logger
	name   string                        // the listener in logs: "http", "grpc"
	refuse func(c net.Conn, why refusal) // writes the refusal; nil: close only
	track  bool                          // wrap connections so that Close releases

	// tcpUserTimeout, when positive, is set as TCP_USER_TIMEOUT on tracked
	// TCP connections: what grpc-go does itself with its keepalive timeout
	// on a *net.TCPConn, and cannot do on the wrapper.
	tcpUserTimeout time.Duration

	closeOnce sync.Once
	closed    chan struct{} // closed by Close: cuts a backoff short

	// lingering holds a token for each refused connection closing
	// gracefully (lingerClose); when it is full, refusals close at once.
	lingering chan struct{}

	acceptLog, refuseLog throttle
}

// Bounds of a refused connection's graceful close: how many may linger at
// once, and for how long each waits for its client's end.
const (
	maxLingering = 64
	lingerFor    = 500 * time.Millisecond
)

// newLimitListener returns ln limited by lim. See limitListener for the
// meaning of the other arguments.
func newLimitListener(ln net.Listener, lim *connLimiter, log *slog.Logger, name string, track bool, refuse func(net.Conn, refusal)) *limitListener {
	return &limitListener{
		Listener:  ln,
		lim:       lim,
		log:       log,
		name:      name,
		refuse:    refuse,
		track:     track,
		closed:    make(chan struct{}),
		lingering: make(chan struct{}, maxLingering),
		acceptLog: throttle{every: logEvery},
		refuseLog: throttle{every: logEvery},
	}
}

// Accept waits for and returns the next connection within the bounds.
func (l *limitListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !retryAccept(err) {
				return nil, err
			}
			delay = nextBackoff(delay)
			if ok, skipped := l.acceptLog.allow(time.Now()); ok {
				l.log.Warn("accept failed; retrying", "listener", l.name, "err", err, "retry_in", delay, "failed_since_last_log", skipped)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.closed:
				t.Stop()
			}
			continue
		}
		delay = 0
		ip := remoteIP(c)
		if why := l.lim.acquire(ip); why != admitted {
			l.refuseConn(c, ip, why)
			continue
		}
		if !l.track {
			return c, nil
		}
		if l.tcpUserTimeout > 0 {
			setTCPUserTimeout(c, l.tcpUserTimeout)
		}
		return newTrackedConn(c, l.lim, ip), nil
	}
}

// refuseConn answers and closes c, refused for why, and logs it (at most
// one line every logEvery).
func (l *limitListener) refuseConn(c net.Conn, ip netip.Addr, why refusal) {
	if l.refuse != nil {
		// A new socket's send buffer takes a short answer at once; the
		// deadline only guards against the unexpected.
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		l.refuse(c, why)
		select {
		case l.lingering <- struct{}{}:
			go func() {
				lingerClose(c)
				<-l.lingering
			}()
		default:
			discardReceived(c)
			_ = c.Close()
		}
	} else {
		_ = c.Close()
	}
	if ok, skipped := l.refuseLog.allow(time.Now()); ok {
		total, fromIP := l.lim.counts(ip)
		l.log.Warn("connection refused", "listener", l.name, "reason", why.String(), "ip", ip.String(),
			"open", total, "open_from_ip", fromIP, "max_conns", l.lim.total, "max_conns_per_ip", l.lim.perIP,
			"refused_since_last_log", skipped)
	}
}

// lingerClose closes c, whose refusal was written, gracefully: it sends
// its FIN, then reads and drops what the client sends until the client
// closes too or lingerFor passes. Closing a socket with unread data sends
// a reset instead of a FIN, and a reset can make the client's kernel drop
// the refusal written just before; a client that sends its request as it
// connects may have it arrive only after the refusal was written.
func lingerClose(c net.Conn) {
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		discardReceived(c)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(lingerFor))
	buf := make([]byte, 4096)
	for n := 0; n < 64<<10; {
		m, err := c.Read(buf)
		n += m
		if err != nil {
			return
		}
	}
	discardReceived(c)
}

// discardReceived reads and drops, without waiting, what c's peer has sent
// so far (up to 64 KiB): closing a socket with unread data sends a reset
// instead of a FIN, and a reset can make the peer's kernel drop the answer
// written just before, so that a client which sent its request at once
// would see a broken connection instead of the refusal.
func discardReceived(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 4096)
	_ = raw.Read(func(fd uintptr) bool {
		for range 16 {
			if n, err := syscall.Read(int(fd), buf); n <= 0 || err != nil {
				break
			}
		}
		return true // never wait
	})
}

// Close closes the listener; an Accept waiting out a backoff returns at
// once.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// retryAccept reports whether an accept that failed with err may succeed
// if tried again: the process or the system ran out of descriptors or
// kernel memory, or the error says it is temporary or a timeout. A closed
// listener's error is final.
func retryAccept(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, errno := range []syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.EAGAIN, syscall.EINTR, syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EPROTO, syscall.EPERM,
	} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// nextBackoff returns the wait after one more failed accept, given the
// previous wait (0 after a success).
func nextBackoff(prev time.Duration) time.Duration {
	if prev <= 0 {
		return acceptBackoffMin
	}
	return min(2*prev, acceptBackoffMax)
}

// throttle lets one log line through every interval and counts the events
// it held back. It is safe for concurrent use.
type throttle struct {
	every time.Duration

	mu      sync.Mutex
	last    time.Time // guarded by mu: when a line last went through
	skipped int       // guarded by mu: events held back since
}

// allow reports whether an event at now may be logged and, if so, how many
// were held back since the last one that was.
func (t *throttle) allow(now time.Time) (ok bool, skipped int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.last.IsZero() && now.Sub(t.last) < t.every {
		t.skipped++
		return false, 0
	}
	skipped, t.last, t.skipped = t.skipped, now, 0
	return true, skipped
}

// trackedConn is a connection of a limitListener that gives back its slot
// when first closed. It keeps what gRPC finds on a bare *net.TCPConn: the
// raw socket (syscall.Conn) and gRPC's non-memory-pinning read
// (ReadOnReady, which grpc-go looks for on any net.Conn), so that an idle
// connection holds no read buffer.
type trackedConn struct {
	net.Conn
	lim    *connLimiter
	ip     netip.Addr
	closed atomic.Bool

	raw syscall.RawConn // nil: not a socket; ReadOnReady reads through Read
	// The read ReadOnReady runs; fields, not a closure, so that a read does
	// not allocate. Only one goroutine reads a connection at a time.
	readFn   func(fd uintptr) bool
	readBuf  *[]byte
	readN    int
	readErr  error
	readSize int
	readPool mem.BufferPool
}

var (
	_ net.Conn     = (*trackedConn)(nil)
	_ syscall.Conn = (*trackedConn)(nil)
	_ interface {
		ReadOnReady(int, mem.BufferPool) (*[]byte, int, error)
	} = (*trackedConn)(nil)
)

func newTrackedConn(c net.Conn, lim *connLimiter, ip netip.Addr) *trackedConn {
	tc := &trackedConn{Conn: c, lim: lim, ip: ip}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			tc.raw = raw
			tc.readFn = tc.readReady
		}
	}
	return tc
}

// Close closes the connection and, the first time, releases its slot.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if !c.closed.Swap(true) {
		c.lim.release(c.ip)
	}
	return err
}

// SyscallConn returns the raw socket, as the bare connection would.
func (c *trackedConn) SyscallConn() (syscall.RawConn, error) {
	if c.raw == nil {
		return nil, errors.ErrUnsupported
	}
	return c.raw, nil
}

// ReadOnReady waits until the connection is readable (within its read
// deadline), then takes a buffer of bufSize from pool and reads into it:
// gRPC's optional net.Conn method for reads that pin no memory while
// waiting. The caller puts the returned buffer back into pool. As
// io.Reader's, n > 0 bytes come before any error; the end of the stream is
// io.EOF.
func (c *trackedConn) ReadOnReady(bufSize int, pool mem.BufferPool) (*[]byte, int, error) {
	if c.raw == nil {
		buf := pool.Get(bufSize)
		n, err := c.Conn.Read(*buf)
		if n == 0 {
			pool.Put(buf)
			return nil, 0, err
		}
		return buf, n, err
	}
	c.readSize, c.readPool = bufSize, pool
	err := c.raw.Read(c.readFn)
	buf, n, rerr := c.readBuf, c.readN, c.readErr
	c.readBuf, c.readErr, c.readPool = nil, nil, nil
	switch {
	case err != nil: // the deadline passed or the connection was closed
		if buf != nil {
			pool.Put(buf)
		}
		return nil, 0, err
	case rerr != nil:
		return nil, 0, rerr
	case n == 0:
		pool.Put(buf)
		return nil, 0, io.EOF
	}
	return buf, n, nil
}

// readReady is the raw read of ReadOnReady: false (wait for readability)
// when nothing is there yet.
func (c *trackedConn) readReady(fd uintptr) bool {
	c.readBuf = c.readPool.Get(c.readSize)
	// syscall, not x/sys/unix, as net does: mixing the two confuses the
	// race detector.
	c.readN, c.readErr = syscall.Read(int(fd), *c.readBuf)
	if c.readErr != nil {
		c.readPool.Put(c.readBuf)
		c.readBuf = nil
		return c.readErr != syscall.EAGAIN
	}
	return true
}

// setTCPUserTimeout sets TCP_USER_TIMEOUT on c when it is a TCP socket: how
// long sent data may stay unacknowledged before the kernel drops the
// connection.
func setTCPUserTimeout(c net.Conn, d time.Duration) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
	})
}
