package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/kilnfx/kiln/api/client"
	"github.com/kilnfx/kiln/api/wire"
)

func Example() {
	c, err := client.New("http://127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	res, err := c.Invoke(ctx, "hello", []byte("world"), nil)
	var apiErr *client.APIError
	switch {
	case errors.As(err, &apiErr) && apiErr.Class == wire.ClassNotFound:
		fmt.Println("hello is not deployed")
	case err != nil:
		log.Fatal(err)
	case res.FunctionError:
		fmt.Printf("hello failed with status %d: %s\n", res.Status, res.Body)
	default:
		fmt.Printf("%s\n", res.Body)
	}
}
