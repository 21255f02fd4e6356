package worker_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/kilnfx/kiln/executor/sdk"
	"github.com/kilnfx/kiln/executor/worker"
)

// BenchmarkCall is one call's round trip through a worker whose handler
// echoes the body: the cost the worker adds to a call, beside the Go
// executor's own.
func BenchmarkCall(b *testing.B) {
	for _, l := range []struct{ runtime, file, handler string }{
		{"python3", "handler.py", "def handle(req):\n    return req.body\n"},
		{"node", "handler.js", "module.exports = (req) => req.body;\n"},
		{"ruby", "handler.rb", "def handle(req)\n  req.body\nend\n"},
	} {
		b.Run(l.runtime, func(b *testing.B) {
			requireCommand(b, l.runtime)
			dir := b.TempDir()
			writeFile(b, dir, l.file, l.handler)
			argv, _ := worker.Command(l.runtime)
			ctx := context.Background()
			p, err := worker.Start(ctx, argv, worker.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			if err := p.Load(ctx, dir, l.file, nil); err != nil {
				b.Fatal(err)
			}
			req := &sdk.Request{Method: "POST", Path: "/", Header: map[string][]string{"Content-Type": {"text/plain"}}, Body: []byte("hello")}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				req.ID = strconv.Itoa(i)
				resp, err := p.Call(ctx, req)
				if err != nil || string(resp.Body) != "hello" {
					b.Fatalf("call: %v %v", resp, err)
				}
			}
		})
	}
}
