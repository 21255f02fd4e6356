package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Giving memory back after a burst. Go frees a large answer's buffers at
// the next garbage collection and returns their pages to the kernel
// (the scavenger) only once a collection has lowered the heap's goal; a
// kilnd that goes quiet after a burst allocates too little to start one,
// and Go forces one only every 2 minutes. reclaimAfterBursts starts it
// itself.
const (
	// reclaimEvery is how often the allocation counter is read.
	reclaimEvery = time.Second
	// reclaimQuiet: a second in which kilnd allocated less than this is
	// quiet.
	reclaimQuiet = 4 << 20
	// reclaimBurst: memory is given back in the first quiet second after
	// kilnd allocated this much since it last gave memory back.
	reclaimBurst = 64 << 20
)

// reclaimAfterBursts returns freed memory to the kernel
// (runtime.GC, then debug.FreeOSMemory: another collection, then every
// free page released) in
// the first quiet second after each burst of allocation, until ctx ends.
// A collection of kilnd's heap takes about a millisecond of CPU; it runs
// at most once a second, and never under a steady load, which keeps
// allocating.
func reclaimAfterBursts(ctx context.Context) {
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	allocated := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	last := allocated()
	mark := last
	t := time.NewTicker(reclaimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := allocated()
		if now-last < reclaimQuiet && now-mark >= reclaimBurst {
			// Two collections: buffers in a sync.Pool (gRPC's frames,
			// fasthttp's bodies) outlive the first in its victim cache.
			runtime.GC()
			debug.FreeOSMemory()
			now = allocated()
			mark = now
		}
		last = now
	}
}
