package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kilnfx/kiln/pool"
	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

// RuntimeImage is the runtime of a function that runs an imported OCI
// image (FunctionSpec.image): its container is the image's root
// filesystem running the image's entrypoint and command, which must speak
// kiln's executor protocol (docs/RUNTIMES.md, "Images").
const RuntimeImage = "image"

// MaxImageHandlerBytes bounds the handler of an image function, the
// command line that replaces the image's command.
const MaxImageHandlerBytes = 4096

// imageStore returns the pool driver's image store, or an
// ErrInvalidArgument when the driver keeps no images.
func (a *Agent) imageStore() (pool.ImageStore, error) {
	is, ok := a.pool.Images()
	if !ok {
		return nil, fmt.Errorf("%w: image: this kilnd's container driver keeps no images", ErrInvalidArgument)
	}
	return is, nil
}

// imageError gives an image store's error its agent class: an unknown
// image is notFound's class (ErrNotFound, or ErrInvalidArgument where the
// image is an argument of something else), an archive or image that
// cannot be used ErrInvalidArgument, an unreachable containerd
// ErrUnavailable.
func imageError(err error, notFound error) error {
	switch {
	case errors.Is(err, pool.ErrImageNotFound):
		return fmt.Errorf("%w: %v", notFound, err)
	case errors.Is(err, pool.ErrInvalidImage):
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	case errors.Is(err, pool.ErrUnavailable):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}

// ImportImage stores the images of the archive r (a docker save archive or
// an OCI image layout, as a tar) and returns them. An archive that is no
// image is an ErrInvalidArgument saying why.
func (a *Agent) ImportImage(ctx context.Context, r io.Reader) ([]*kilnv1.Image, error) {
	is, err := a.imageStore()
	if err != nil {
		return nil, err
	}
	imgs, err := is.ImportImage(ctx, r)
	if err != nil {
		return nil, imageError(err, ErrInvalidArgument)
	}
	out := make([]*kilnv1.Image, 0, len(imgs))
	for _, img := range imgs {
		a.log.Info("image imported", "image", img.Name, "digest", img.Digest, "size", img.SizeBytes)
		out = append(out, imageRecord(img))
	}
	return out, nil
}

// Images lists the stored images, by name.
func (a *Agent) Images(ctx context.Context) ([]*kilnv1.Image, error) {
	is, err := a.imageStore()
	if err != nil {
		return nil, err
	}
	imgs, err := is.Images(ctx)
	if err != nil {
		return nil, imageError(err, ErrNotFound)
	}
	out := make([]*kilnv1.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, imageRecord(img))
	}
	return out, nil
}

// RemoveImage removes the stored image ref names. An unknown ref is an
// ErrNotFound, an image a deployed function runs an ErrConflict naming
// the function.
func (a *Agent) RemoveImage(ctx context.Context, ref string) error {
	is, err := a.imageStore()
	if err != nil {
		return err
	}
	a.deployMu.Lock()
	defer a.deployMu.Unlock()
	img, err := is.Image(ctx, ref)
	if err != nil {
		return imageError(err, ErrNotFound)
	}
	a.mu.RLock()
	var users []string
	for _, fn := range a.functions {
		if fn.record.Spec.Image == img.Name {
			users = append(users, fn.record.Name)
		}
	}
	a.mu.RUnlock()
	if len(users) > 0 {
		slices.Sort(users)
		return fmt.Errorf("%w: image %s is used by function %s (delete or redeploy it first)", ErrConflict, img.Name, strings.Join(users, ", "))
	}
	if err := is.RemoveImage(ctx, img.Name); err != nil {
		return imageError(err, ErrNotFound)
	}
	a.log.Info("image removed", "image", img.Name, "digest", img.Digest)
	return nil
}

// imageRootFS returns the image ref made ready to run. An image the store
// does not hold (nor could pull) is an ErrInvalidArgument of the spec's
// image field, naming ref.
func (a *Agent) imageRootFS(ctx context.Context, ref string) (pool.ImageRootFS, error) {
	is, err := a.imageStore()
	if err != nil {
		return pool.ImageRootFS{}, err
	}
	img, err := is.ImageRootFS(ctx, ref)
	if err != nil {
		return pool.ImageRootFS{}, imageError(fmt.Errorf("image: %w", err), ErrInvalidArgument)
	}
	return img, nil
}

// imageRevision is the revision of a function running img: its digest's
// first 16 hex digits.
func imageRevision(img pool.ImageRootFS) string {
	_, hex, _ := strings.Cut(img.Digest, ":")
	return "image-" + hex[:min(16, len(hex))]
}

// newImageFunction makes the cached form of rec, a function of the image
// runtime running img: the image's root filesystem, its entrypoint
// followed by its command (or by the spec's handler split at spaces), its
// environment with the spec's env over it, and its working directory.
// Stem cells cannot serve it.
func (a *Agent) newImageFunction(rec *kilnv1.Function, img pool.ImageRootFS) *function {
	f := a.newFunction(rec, img.Dir, "")
	s := rec.Spec
	cmd := img.Cmd
	if s.Handler != "" {
		cmd = strings.Fields(s.Handler)
	}
	f.pool.Args = slices.Concat(img.Entrypoint, cmd)
	f.pool.Env = imageEnv(img.Env, f.pool.Env)
	f.pool.Cwd = img.WorkingDir
	f.pool.Code = ""
	return f
}

// imageEnv is the image's environment with the function's entries over
// it: a key both set takes the function's value, in the image's place.
func imageEnv(image, function []string) []string {
	out := make([]string, 0, len(image)+len(function))
	set := make(map[string]string, len(function))
	for _, e := range function {
		k, v, _ := strings.Cut(e, "=")
		set[k] = v
	}
	for _, e := range image {
		k, _, _ := strings.Cut(e, "=")
		if v, ok := set[k]; ok {
			out = append(out, k+"="+v)
			delete(set, k)
			continue
		}
		out = append(out, e)
	}
	for _, e := range function {
		k, _, _ := strings.Cut(e, "=")
		if _, ok := set[k]; ok {
			out = append(out, e)
		}
	}
	return out
}

func imageRecord(img pool.Image) *kilnv1.Image {
	r := &kilnv1.Image{Name: img.Name, Digest: img.Digest, SizeBytes: img.SizeBytes}
	if !img.Created.IsZero() {
		r.Created = timestamppb.New(img.Created)
	}
	return r
}
