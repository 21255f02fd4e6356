package journal_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/kilnfx/kiln/datastore"
	"github.com/kilnfx/kiln/datastore/journal"
)

// Example shows kilnd's wiring: append before answering, ingest in the
// background, report from SQLite.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kiln-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	store, err := datastore.Open(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	j, err := journal.Open(filepath.Join(dir, "usage"))
	if err != nil {
		log.Fatal(err)
	}
	defer j.Close()
	in, err := datastore.NewIngester(store, j)
	if err != nil {
		log.Fatal(err)
	}
	// At start: whatever a previous run left in the journal.
	if _, err := in.IngestAll(ctx); err != nil {
		log.Fatal(err)
	}

	// Per call, before the response is sent.
	received := time.Date(2026, 11, 23, 9, 30, 0, 0, time.UTC)
	for i, run := range []time.Duration{3 * time.Millisecond, 5 * time.Millisecond, 40 * time.Millisecond} {
		rec := datastore.UsageRecord{
			CallID: fmt.Sprintf("0190c0de-0000-7000-8000-00000000000%d", i), Function: "resize",
			Tenant: "acme", Trigger: "http", ReceivedAt: received, Start: "warm",
			RunTime: run, MemoryLimitBytes: 128 << 20, Status: 200,
		}
		if err := j.Append(&rec); err != nil {
			log.Fatal(err) // the call must not be acknowledged
		}
	}
	fmt.Println("lag before ingestion:", j.Lag())

	// kilnd runs in.Run(ctx) in the background; one pass does the same here.
	n, err := in.IngestAll(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ingested:", n, "lag:", j.Lag())

	rows, err := store.Report(ctx, datastore.ReportQuery{Tenant: "acme", GroupBy: datastore.GroupByFunction})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range rows {
		fmt.Printf("%s: %d calls, %d 2xx, run %v, %.4f GB-s\n", r.Group, r.Count, r.Status2xx, r.RunTime, r.GBSeconds)
	}
	// Output:
	// lag before ingestion: 3
	// ingested: 3 lag: 0
	// resize: 3 calls, 3 2xx, run 48ms, 0.0060 GB-s
}
