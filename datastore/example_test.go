package datastore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/kilnfx/kiln/datastore"
)

func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kiln-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := datastore.Open(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	f, err := s.PutFunction(ctx, datastore.Function{
		Name:     "resize",
		Runtime:  "go",
		Revision: "v1",
		Spec:     []byte(`{"memory":"128Mi","concurrency":1}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored", f.Name, f.Revision, f.Created.Equal(f.Updated))

	f.Revision = "v2"
	f, err = s.PutFunction(ctx, f)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("updated", f.Name, f.Revision, f.Updated.After(f.Created))

	got, err := s.GetFunction(ctx, "resize")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("got %s %s %s\n", got.Name, got.Runtime, got.Spec)

	if err := s.DeleteFunction(ctx, "resize"); err != nil {
		log.Fatal(err)
	}
	_, err = s.GetFunction(ctx, "resize")
	fmt.Println(errors.Is(err, datastore.ErrNotFound), err)

	// Output:
	// stored resize v1 true
	// updated resize v2 true
	// got resize go {"memory":"128Mi","concurrency":1}
	// true datastore: function "resize": not found
}
