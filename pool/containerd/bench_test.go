package containerd

import (
	"context"
	"fmt"
	"slices"
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

// BenchmarkStartInterleaved runs the four variants of BenchmarkStart in turn
// within each iteration, so that load from other processes on a shared
// machine hits them alike, and reports each variant's median and p90
// Start → process running latency in ms.
//
//	go test -run '^$' -bench StartInterleaved -benchtime 40x ./pool/containerd/
func BenchmarkStartInterleaved(b *testing.B) {
	requireContainerd(b)
	type variant struct {
		name    string
		d       *Driver
		samples []time.Duration
	}
	ctx := context.Background()
	a := newAgentSocket(b)
	var vs []*variant
	for _, rt := range []string{"runc", "crun"} {
		bin := runtimeBinary(b, rt)
		for _, group := range []bool{false, true} {
			v := &variant{name: rt}
			opts := []Option{WithRuntimeBinary(bin)}
			if group {
				v.name += "-group"
				opts = append(opts, WithShimGroup("ib-"+rt))
			}
			v.d = newDriver(b, opts...)
			if group {
				anchor := newID("anchor")
				if err := v.d.Start(ctx, probeSpec(anchor, a, "ready")); err != nil {
					b.Fatal(err)
				}
				a.next(b, waitTimeout)
				defer v.d.Remove(ctx, anchor)
			}
			vs = append(vs, v)
		}
	}
	run := func(v *variant) time.Duration {
		id := newID("ib")
		t0 := time.Now()
		if err := v.d.Start(ctx, probeSpec(id, a, "ready")); err != nil {
			b.Fatal(err)
		}
		a.next(b, waitTimeout)
		took := time.Since(t0)
		if err := v.d.Remove(ctx, id); err != nil {
			b.Fatal(err)
		}
		return took
	}
	for _, v := range vs {
		run(v) // warm up
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		for k := range vs {
			v := vs[(i+k)%len(vs)] // rotate the order too
			v.samples = append(v.samples, run(v))
		}
		i++
	}
	for _, v := range vs {
		slices.Sort(v.samples)
		n := len(v.samples)
		b.ReportMetric(ms(v.samples[n/2]), v.name+"-p50-ms")
		b.ReportMetric(ms(v.samples[n*9/10]), v.name+"-p90-ms")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkFreezeThaw measures one Freeze (until the kernel reports FROZEN)
// and one Thaw of a running container, with the driver's sentinel cgroup
// frozen.
func BenchmarkFreezeThaw(b *testing.B) {
	d := newDriver(b)
	a := newAgentSocket(b)
	ctx := context.Background()
	id := newID("ft")
	if err := d.Start(ctx, probeSpec(id, a, "ready")); err != nil {
		b.Fatal(err)
	}
	defer d.Remove(ctx, id)
	a.next(b, waitTimeout)
	var freeze, thaw time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		if err := d.Freeze(ctx, id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.Thaw(ctx, id); err != nil {
			b.Fatal(err)
		}
		freeze += t1.Sub(t0)
		thaw += time.Since(t1)
	}
	b.ReportMetric(float64(freeze.Nanoseconds())/1000/float64(b.N), "freeze-µs")
	b.ReportMetric(float64(thaw.Nanoseconds())/1000/float64(b.N), "thaw-µs")
}
