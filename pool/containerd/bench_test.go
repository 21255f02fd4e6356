package containerd

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkStart measures Start → process running: from the Start call to
// the probe's connection on the agent socket (the readiness event kilnd
// uses), for each OCI runtime, with and without a shared shim. ns/op is that
// latency; start-ms is when Start returned, remove-ms the untimed Remove.
//
//	go test -run '^$' -bench Start -benchtime 30x ./pool/containerd/
func BenchmarkStart(b *testing.B) {
	for _, rt := range []string{"runc", "crun"} {
		for _, group := range []bool{false, true} {
			name := fmt.Sprintf("%s/shimgroup=%v", rt, group)
			b.Run(name, func(b *testing.B) {
				requireContainerd(b)
				bin := runtimeBinary(b, rt)
				opts := []Option{WithRuntimeBinary(bin), WithShimGroup("")}
				if group {
					opts = []Option{WithRuntimeBinary(bin), WithShimGroup("bench-" + rt)}
				}
				benchStart(b, newDriver(b, opts...), group)
			})
		}
	}
}

func benchStart(b *testing.B, d *Driver, group bool) {
	ctx := context.Background()
	a := newAgentSocket(b)
	if group {
		// A grouped shim exits with its last container: keep one alive, as a
		// pool always has.
		anchor := newID("anchor")
		if err := d.Start(ctx, probeSpec(anchor, a, "ready")); err != nil {
			b.Fatal(err)
		}
		a.next(b, waitTimeout)
		defer d.Remove(ctx, anchor)
	}
	// Warm up: page cache, shim binary.
	warm := newID("warm")
	if err := d.Start(ctx, probeSpec(warm, a, "ready")); err != nil {
		b.Fatal(err)
	}
	a.next(b, waitTimeout)
	if err := d.Remove(ctx, warm); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	var startRet, remove time.Duration
	b.ResetTimer()
	for b.Loop() {
		id := newID("bench")
		t0 := time.Now()
		if err := d.Start(ctx, probeSpec(id, a, "ready")); err != nil {
			b.Fatal(err)
		}
		startRet += time.Since(t0)
		a.next(b, waitTimeout)
		b.StopTimer()
		t1 := time.Now()
		if err := d.Remove(ctx, id); err != nil {
			b.Fatal(err)
		}
		remove += time.Since(t1)
		b.StartTimer()
	}
	b.ReportMetric(float64(startRet.Microseconds())/1000/float64(b.N), "start-ms")
	b.ReportMetric(float64(remove.Microseconds())/1000/float64(b.N), "remove-ms")
}

// BenchmarkStats measures one Stats reading of a running container.
func BenchmarkStats(b *testing.B) {
	d := newDriver(b)
	a := newAgentSocket(b)
	ctx := context.Background()
	id := newID("stats")
	if err := d.Start(ctx, probeSpec(id, a, "ready")); err != nil {
		b.Fatal(err)
	}
	defer d.Remove(ctx, id)
	a.next(b, waitTimeout)
	if _, err := d.Stats(ctx, id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Stats(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}
