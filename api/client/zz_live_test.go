package client

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"
)

func BenchmarkLive(b *testing.B) {
	addr := os.Getenv("LIVE")
	if addr == "" {
		b.Skip()
	}
	c, _ := NewGRPC(addr)
	defer c.Close()
	h, _ := New("http://127.0.0.1:18080")
	ctx := context.Background()
	s, _ := c.OpenStream(ctx)
	defer s.Close()
	for _, mode := range []string{"http", "unary", "stream"} {
		b.Run(mode, func(b *testing.B) {
			lat := make([]time.Duration, b.N)
			b.ReportAllocs()
			for i := range b.N {
				t := time.Now()
				var err error
				switch mode {
				case "unary":
					_, err = c.Invoke(ctx, "hello", []byte("w"), nil)
				case "stream":
					_, err = s.Invoke(ctx, "hello", []byte("w"))
				default:
					_, err = h.Invoke(ctx, "hello", []byte("w"), nil)
				}
				if err != nil {
					b.Fatal(err)
				}
				lat[i] = time.Since(t)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
		})
	}
}
