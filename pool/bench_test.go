package pool_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/kilnfx/kiln/pool"
	"github.com/kilnfx/kiln/pool/fake"
	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// BenchmarkInvoke measures one call through an executor session (agent side
// and in-process SDK over a real unix socket) on a warm container.
func BenchmarkInvoke(b *testing.B) {
	d := fake.New(echo)
	dir := b.TempDir()
	p, err := pool.New(d, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx := context.Background()
	body := []byte("hello")
	fn := newFn("echo")
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = "call-" + strconv.Itoa(i)
	}
	c, _, err := p.Acquire(ctx, fn)
	if err != nil {
		b.Fatal(err)
	}
	p.Release(c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _, err := p.Acquire(ctx, fn)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Invoke(ctx, &pb.Invoke{CallId: ids[i], Body: body}); err != nil {
			b.Fatal(err)
		}
		p.Release(c)
	}
}

// BenchmarkAcquireRelease measures the pool's own share of a warm call:
// Acquire of an idle running container and its Release, without the call
// itself. It must not allocate.
func BenchmarkAcquireRelease(b *testing.B) {
	p, err := pool.New(fake.New(echo), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx := context.Background()
	fn := newFn("echo")
	c, _, err := p.Acquire(ctx, fn)
	if err != nil {
		b.Fatal(err)
	}
	p.Release(c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _, err := p.Acquire(ctx, fn)
		if err != nil {
			b.Fatal(err)
		}
		p.Release(c)
	}
}
