package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// ImportImage sends the image archive r (size bytes: a docker save
// archive, or an OCI image layout as a tar) to the agent's image store and
// returns the images it held. An archive that is no image is an *APIError
// of class wire.ClassInvalidArgument, one over the agent's import limit of
// class wire.ClassPayloadTooLarge.
func (c *Client) ImportImage(ctx context.Context, r io.Reader, size int64) ([]*kilnv1.Image, error) {
	if size <= 0 {
		return nil, errors.New("image import: empty archive")
	}
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/images", nil, nil)
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(r)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/x-tar")
	req.Header.Set("Accept", "application/json")
	data, err := c.send(req, maxManagementBody)
	if err != nil {
		return nil, err
	}
	list := new(kilnv1.ImageList)
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, list); err != nil {
		return nil, fmt.Errorf("image import: decoding the answer: %w", err)
	}
	return list.GetImages(), nil
}

// Images lists the agent's stored images.
func (c *Client) Images(ctx context.Context) ([]*kilnv1.Image, error) {
	list := new(kilnv1.ImageList)
	if err := c.do(ctx, http.MethodGet, "/v1/images", nil, nil, maxManagementBody, list); err != nil {
		return nil, err
	}
	return list.GetImages(), nil
}

// RemoveImage removes the stored image ref. One a function runs is an
// *APIError of class wire.ClassConflict, an unknown one of class
// wire.ClassNotFound.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	if ref == "" {
		return errors.New("empty image reference")
	}
	return c.do(ctx, http.MethodDelete, "/v1/images/"+ref, nil, nil, maxManagementBody, nil)
}
