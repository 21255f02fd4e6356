package api

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/kilnfx/kiln/agent"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// images serves /v1/images: GET lists the stored images, POST imports the
// image archive of the body (a docker save archive or an OCI image layout,
// as a tar; up to the image import limit) and answers the images it held,
// DELETE /v1/images/{ref} removes an image no function runs. A ref holds
// slashes ("/v1/images/docker.io/library/hello:1").
func (s *HTTPServer) images(ctx *fasthttp.RequestCtx, rest string) {
	method := string(ctx.Method())
	if rest == "" || rest == "/" {
		switch method {
		case fasthttp.MethodGet:
			list, err := s.agent.Images(s.base)
			if err != nil {
				s.writeError(ctx, err)
				return
			}
			writeJSON(ctx, fasthttp.StatusOK, &kilnv1.ImageList{Images: list})
		case fasthttp.MethodPost:
			body := ctx.PostBody()
			if len(body) == 0 {
				s.writeError(ctx, fmt.Errorf("%w: body: an image archive (docker save, or an OCI image layout as a tar) is required", agent.ErrInvalidArgument))
				return
			}
			list, err := s.agent.ImportImage(s.base, bytes.NewReader(body))
			if err != nil {
				s.writeError(ctx, err)
				return
			}
			writeJSON(ctx, fasthttp.StatusOK, &kilnv1.ImageList{Images: list})
		default:
			s.methodNotAllowed(ctx, "GET, POST")
		}
		return
	}
	ref, ok := strings.CutPrefix(rest, "/")
	if !ok || ref == "" {
		s.writeError(ctx, fmt.Errorf("%w: no route for /v1/images%s", agent.ErrNotFound, rest))
		return
	}
	if method != fasthttp.MethodDelete {
		s.methodNotAllowed(ctx, "DELETE")
		return
	}
	if err := s.agent.RemoveImage(s.base, ref); err != nil {
		s.writeError(ctx, err)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}
