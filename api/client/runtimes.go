package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kilnfx/kiln/errdefs"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// Runtimes lists the runtimes' built root filesystems.
func (c *Client) Runtimes(ctx context.Context) ([]*kilnv1.Runtime, error) {
	list := new(kilnv1.RuntimeList)
	if err := c.do(ctx, http.MethodGet, "/v1/runtimes", nil, nil, maxManagementBody, list); err != nil {
		return nil, err
	}
	return list.GetRuntimes(), nil
}

// RemoveRuntime removes the builds of the named runtime that no function
// uses; one in use is an *APIError of class wire.ClassConflict.
func (c *Client) RemoveRuntime(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("empty runtime name")
	}
	return c.do(ctx, http.MethodDelete, "/v1/runtimes/"+name, nil, nil, maxManagementBody, nil)
}

// BuildRuntime builds the named runtime's root filesystem unless it is
// built, calling progress (when not nil) with each event of the build as it
// happens, and returns the runtime. A build that failed is an *APIError of
// the failure's class, with the agent's message (which names a package
// the mirror does not have, or the mirror it cannot reach).
func (c *Client) BuildRuntime(ctx context.Context, name string, progress func(*kilnv1.RuntimeBuildEvent)) (*kilnv1.Runtime, error) {
	if name == "" {
		return nil, errors.New("empty runtime name")
	}
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/runtimes/"+name, nil, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readAPIError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), maxManagementBody)
	for sc.Scan() {
		ev := new(kilnv1.RuntimeBuildEvent)
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(sc.Bytes(), ev); err != nil {
			return nil, fmt.Errorf("runtime build: decoding the answer: %w", err)
		}
		switch {
		case ev.Error != nil:
			return nil, &APIError{Status: statusOf(ev.Error.Class), Class: ev.Error.Class, Message: ev.Error.Error}
		case ev.Runtime != nil:
			return ev.Runtime, nil
		case progress != nil:
			progress(ev)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("runtime build: %w", err)
	}
	return nil, errors.New("runtime build: the answer ended before the build did")
}

// statusOf is the HTTP status kiln answers errors of class with.
func statusOf(class string) int {
	if c, ok := errdefs.Lookup(class); ok {
		return c.HTTP
	}
	return http.StatusInternalServerError
}
