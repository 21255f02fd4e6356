package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Call makes one call and returns how kiln started it (the X-Kiln-Start
// value: warm, thawed, stem, cold; "" when the server does not say). A Call
// is used by one goroutine at a time.
type Call func(ctx context.Context) (start string, err error)

// Target makes Calls: the load generator asks it for one per worker, so a
// Call may keep per-worker state (request buffers).
type Target func() Call

// OpenLoop is a load at a fixed rate, as wrk2 applies it: call i is due at
// start + i/Rate whatever happened to the calls before it, and its latency
// is measured from that intended time, so a stall delays and counts against
// every call due during it (coordinated-omission correction). Workers each
// own a share of the schedule (call i goes to worker i mod Workers); a
// worker that is late sends at once.
type OpenLoop struct {
	// Rate is the calls per second.
	Rate float64
	// Calls is the number of measured calls, after Warmup unrecorded ones.
	Calls, Warmup int
	// Workers is the number of senders (HTTP: connections); default 8.
	Workers int
	// Want, when set, is the only start kind recorded; others are counted.
	Want string
	// Progress, when set, is told the recorded calls so far.
	Progress func(done, total int)
}

// Run applies the load to target and returns the recorded latencies. It
// stops early, with ctx's error, when ctx ends, and fails when more than
// 1% of the calls fail.
func (o OpenLoop) Run(ctx context.Context, target Target) (*Latencies, error) {
	if o.Rate <= 0 || o.Calls <= 0 {
		return nil, errors.New("open loop: rate and calls must be positive")
	}
	workers := o.Workers
	if workers <= 0 {
		workers = 8
	}
	total := o.Warmup + o.Calls
	interval := time.Duration(float64(time.Second) / o.Rate)
	lat := NewLatencies()
	start := time.Now().Add(20 * time.Millisecond)
	lat.BeginAt(start.Add(time.Duration(o.Warmup) * interval))
	var (
		done    atomic.Int64
		failed  atomic.Int64
		lastEnd atomic.Int64
		wg      sync.WaitGroup
		firstMu sync.Mutex
		first   error
	)
	calls := make([]Call, workers)
	for w := range calls {
		calls[w] = target()
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(call Call) {
			defer wg.Done()
			p := newPacer()
			defer p.close()
			for i := w; i < total; i += workers {
				if ctx.Err() != nil {
					return
				}
				due := start.Add(time.Duration(i) * interval)
				p.sleepUntil(due)
				sent := time.Now()
				kind, err := call(ctx)
				end := time.Now()
				if i < o.Warmup {
					continue
				}
				if err != nil {
					lat.Error()
					if failed.Add(1) == 1 {
						firstMu.Lock()
						first = err
						firstMu.Unlock()
					}
				} else if lat.Started(kind); o.Want != "" && kind != o.Want {
					lat.Other(kind)
				} else {
					lat.RecordOpen(end.Sub(due), end.Sub(sent), sent.Sub(due))
				}
				lastEnd.Store(end.UnixNano())
				if n := done.Add(1); o.Progress != nil && n%64 == 0 {
					o.Progress(int(n), o.Calls)
				}
			}
		}(calls[w])
	}
	wg.Wait()
	lat.EndAt(time.Unix(0, lastEnd.Load()))
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f := failed.Load(); f*100 > int64(o.Calls) {
		return lat, fmt.Errorf("%d of %d calls failed, the first: %w", f, o.Calls, first)
	}
	return lat, nil
}

// ClosedLoop is a load of Concurrency clients each sending its next call
// when the previous one is answered. Calls started during Warmup are not
// recorded; then calls are recorded until Calls were, or for Duration when
// Calls is 0.
type ClosedLoop struct {
	Concurrency int
	Calls       int
	Duration    time.Duration
	Warmup      time.Duration
	// Want, when set, is the only start kind recorded; others are counted.
	Want string
	// Progress, when set, is told the progress so far (calls, or
	// milliseconds when the loop runs for a Duration).
	Progress func(done, total int)
}

// Run applies the load to target and returns the recorded latencies. It
// fails when more than 1% of the calls fail.
func (c ClosedLoop) Run(ctx context.Context, target Target) (*Latencies, error) {
	if c.Concurrency <= 0 || (c.Calls <= 0 && c.Duration <= 0) {
		return nil, errors.New("closed loop: concurrency and calls or duration must be positive")
	}
	lat := NewLatencies()
	begin := time.Now().Add(c.Warmup)
	finish := begin.Add(c.Duration)
	if c.Calls > 0 {
		finish = time.Now().Add(24 * time.Hour)
	}
	lat.BeginAt(begin)
	var (
		issued, recorded, failed atomic.Int64
		lastEnd                  atomic.Int64
		wg                       sync.WaitGroup
		firstMu                  sync.Mutex
		first                    error
	)
	calls := make([]Call, c.Concurrency)
	for w := range calls {
		calls[w] = target()
	}
	stopProgress := make(chan struct{})
	if c.Progress != nil && c.Calls <= 0 {
		go func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case now := <-t.C:
					c.Progress(int(max(now.Sub(begin), 0)/time.Millisecond), int(c.Duration/time.Millisecond))
				}
			}
		}()
	}
	for _, call := range calls {
		wg.Add(1)
		go func(call Call) {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(finish) {
					return
				}
				measured := !t0.Before(begin)
				if measured && c.Calls > 0 && issued.Add(1) > int64(c.Calls) {
					return
				}
				kind, err := call(ctx)
				end := time.Now()
				if !measured || end.After(finish) {
					continue
				}
				if err != nil {
					lat.Error()
					if failed.Add(1) == 1 {
						firstMu.Lock()
						first = err
						firstMu.Unlock()
					}
				} else if lat.Started(kind); c.Want != "" && kind != c.Want {
					lat.Other(kind)
				} else {
					lat.Record(end.Sub(t0))
				}
				lastEnd.Store(end.UnixNano())
				if n := recorded.Add(1); c.Progress != nil && c.Calls > 0 && n%64 == 0 {
					c.Progress(int(n), c.Calls)
				}
			}
		}(call)
	}
	wg.Wait()
	close(stopProgress)
	if c.Calls > 0 {
		lat.EndAt(time.Unix(0, lastEnd.Load()))
	} else {
		lat.EndAt(finish)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f := failed.Load(); f*100 > max(recorded.Load(), 1) {
		return lat, fmt.Errorf("%d of %d calls failed, the first: %w", f, recorded.Load(), first)
	}
	return lat, nil
}

// pacer sleeps until given instants with a timerfd read through Go's
// netpoller: the sleeping goroutine holds no thread and no P, so the
// runtime's own sleep granularity (up to a millisecond on some VMs) and
// blocking syscalls (which hold a P until sysmon takes it back, up to 10
// ms later) stay out of the measurement. It never spins: a goroutine
// spinning on one of two Ps delays the netpoller's events by up to 10 ms.
// Waking an idle vCPU still takes 50 to 100 µs on a VM; Result.SendLagP50
// says how much. It falls back to time.Sleep where timerfd is missing. A
// pacer is used by one goroutine at a time.
type pacer struct {
	fd  int
	f   *os.File
	buf [8]byte
}

func newPacer() *pacer {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return &pacer{fd: -1}
	}
	return &pacer{fd: fd, f: os.NewFile(uintptr(fd), "timerfd")}
}

// sleepUntil returns at t or soon after (tens of microseconds on an idle
// VM); at once when t has passed.
func (p *pacer) sleepUntil(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	if p.f == nil {
		time.Sleep(d)
		return
	}
	var now unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &now) != nil {
		time.Sleep(d)
		return
	}
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(now.Nano() + d.Nanoseconds())}
	if unix.TimerfdSettime(p.fd, unix.TFD_TIMER_ABSTIME, &its, nil) != nil {
		time.Sleep(d)
		return
	}
	if _, err := p.f.Read(p.buf[:]); err != nil {
		time.Sleep(d)
	}
}

func (p *pacer) close() {
	if p.f != nil {
		p.f.Close()
	}
}
