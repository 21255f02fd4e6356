package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
)

func ExampleClient_Usage() {
	c, err := client.New("http://127.0.0.1:8080", client.WithToken("ADMIN-TOKEN-OR-TENANT-KEY"))
	if err != nil {
		log.Fatal(err)
	}
	rep, err := c.Usage(context.Background(), client.UsageQuery{
		From:    time.Now().Add(-24 * time.Hour),
		GroupBy: wire.GroupByFunction,
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range rep.Rows {
		fmt.Printf("%s: %d calls, %d failed, p99 %.2fms, %.3f GB-s\n",
			r.Group, r.Count, r.ByStatus[wire.Status5xx], r.RunP99Ms, r.GbSeconds)
	}
}
