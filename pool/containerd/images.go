package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/archive"
	"github.com/containerd/containerd/archive/compression"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	imagearchive "github.com/containerd/containerd/images/archive"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kilnfx/kiln/pool"
)

var _ pool.ImageStore = (*Driver)(nil)

// UnnamedImagePrefix names the images an archive holds without a name:
// "kiln.local/import@sha256:...".
const UnnamedImagePrefix = "kiln.local/import"

// DefaultPullTimeout bounds ImageRootFS's pull of an image the store does
// not hold, without WithPullTimeout.
const DefaultPullTimeout = 5 * time.Second

// imageMarker is written last into an image's directory: its presence
// says the root filesystem beside it is complete.
const imageMarker = "image.json"

// WithPullTimeout bounds the pull ImageRootFS tries for an image the store
// does not hold (default DefaultPullTimeout); 0 or less never pulls.
func WithPullTimeout(d time.Duration) Option { return func(o *options) { o.pullTimeout = d } }

// imagesDir holds one directory per image digest, with the image's root
// filesystem in rootfs/ and its imageMarker.
func (d *Driver) imagesDir() string { return filepath.Join(d.opts.stateDir, "images") }

// ImportImage implements pool.ImageStore with containerd's Import: docker
// save archives and OCI image layouts (an image named only by a tag,
// "latest", or not at all is named by its digest under
// UnnamedImagePrefix). Only the node's platform is imported.
func (d *Driver) ImportImage(ctx context.Context, r io.Reader) ([]pool.Image, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	ctx = d.withNS(ctx)
	imgs, err := d.client.Import(ctx, r,
		containerd.WithImageRefTranslator(canonicalRefName),
		containerd.WithDigestRef(imagearchive.DigestTranslator(UnnamedImagePrefix)),
		containerd.WithSkipDigestRef(func(name string) bool { return name != "" }),
		containerd.WithImportPlatform(platforms.Default()),
	)
	if err != nil {
		if ctx.Err() != nil || unreachable(err) {
			return nil, fmt.Errorf("import image: %w", err)
		}
		return nil, fmt.Errorf("import image: %w: not a docker save archive nor an OCI image layout as a tar: %v", pool.ErrInvalidImage, err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("import image: %w: the archive names no image", pool.ErrInvalidImage)
	}
	out := make([]pool.Image, 0, len(imgs))
	for _, img := range imgs {
		pi, err := d.imageRecord(ctx, img)
		if err != nil {
			return nil, fmt.Errorf("import image: %w", err)
		}
		out = append(out, pi)
	}
	return out, nil
}

// canonicalRefName turns an OCI layout's org.opencontainers.image.ref.name
// into an image name: a full reference in its canonical form, nothing
// (the image is then named by its digest) for a bare tag or a name that is
// no reference.
func canonicalRefName(name string) string {
	if !strings.ContainsAny(name, "/:@") {
		return "" // "latest": a tag alone names no repository
	}
	named, err := reference.ParseDockerRef(name)
	if err != nil {
		return ""
	}
	return named.String()
}

// Images implements pool.ImageStore.
func (d *Driver) Images(ctx context.Context) ([]pool.Image, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	ctx = d.withNS(ctx)
	list, err := d.client.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]pool.Image, 0, len(list))
	for _, img := range list {
		pi, err := d.imageRecord(ctx, img)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b pool.Image) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Image implements pool.ImageStore.
func (d *Driver) Image(ctx context.Context, ref string) (pool.Image, error) {
	if err := d.usable(); err != nil {
		return pool.Image{}, err
	}
	ctx = d.withNS(ctx)
	img, err := d.lookupImage(ctx, ref)
	if err != nil {
		return pool.Image{}, err
	}
	return d.imageRecord(ctx, img)
}

// lookupImage finds the stored image ref names, as given or in its
// canonical form.
func (d *Driver) lookupImage(ctx context.Context, ref string) (images.Image, error) {
	names := []string{ref}
	if named, err := reference.ParseDockerRef(ref); err == nil && named.String() != ref {
		names = append(names, named.String())
	}
	for _, name := range names {
		img, err := d.client.ImageService().Get(ctx, name)
		if err == nil {
			return img, nil
		}
		if !errdefs.IsNotFound(err) {
			return images.Image{}, fmt.Errorf("image %s: %w", ref, err)
		}
	}
	return images.Image{}, fmt.Errorf("%w: %s", pool.ErrImageNotFound, ref)
}

// imageRecord describes img with the size of its content for the node's
// platform.
func (d *Driver) imageRecord(ctx context.Context, img images.Image) (pool.Image, error) {
	size, err := containerd.NewImage(d.client, img).Size(ctx)
	if err != nil {
		return pool.Image{}, fmt.Errorf("image %s: size: %w", img.Name, err)
	}
	return pool.Image{Name: img.Name, Digest: img.Target.Digest.String(), SizeBytes: size, Created: img.CreatedAt}, nil
}

// RemoveImage implements pool.ImageStore: containerd deletes the content no
// other image shares (synchronously), and the root filesystem directory of
// the image's digest goes once no other image has that digest.
func (d *Driver) RemoveImage(ctx context.Context, ref string) error {
	if err := d.usable(); err != nil {
		return err
	}
	ctx = d.withNS(ctx)
	img, err := d.lookupImage(ctx, ref)
	if err != nil {
		return err
	}
	if err := d.client.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("image %s: %w", ref, pool.ErrImageNotFound)
		}
		return fmt.Errorf("remove image %s: %w", ref, err)
	}
	d.imageMu.Lock()
	defer d.imageMu.Unlock()
	others, err := d.client.ImageService().List(ctx, "target.digest=="+img.Target.Digest.String())
	if err != nil || len(others) > 0 {
		return nil // the directory stays for the images that share it
	}
	if err := os.RemoveAll(filepath.Join(d.imagesDir(), img.Target.Digest.Encoded())); err != nil {
		return fmt.Errorf("remove image %s: its root filesystem: %w", ref, err)
	}
	return nil
}

// imageDescription is what imageMarker holds: the image config's process
// settings, so that a later ImageRootFS needs no content read.
type imageDescription struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
}

// ImageRootFS implements pool.ImageStore. The root filesystem of an image
// is made once per digest, under the driver's state dir
// (images/<digest>/rootfs): its layers are applied in order to a
// temporary directory, PrepareRootFS runs on it, its description is
// written beside it, and the whole is renamed into place, so a directory
// in place is complete. Builds are serialised.
func (d *Driver) ImageRootFS(ctx context.Context, ref string) (pool.ImageRootFS, error) {
	if err := d.usable(); err != nil {
		return pool.ImageRootFS{}, err
	}
	ctx = d.withNS(ctx)
	img, err := d.lookupImage(ctx, ref)
	if errors.Is(err, pool.ErrImageNotFound) {
		img, err = d.pull(ctx, ref)
	}
	if err != nil {
		return pool.ImageRootFS{}, err
	}
	rec, err := d.imageRecord(ctx, img)
	if err != nil {
		return pool.ImageRootFS{}, err
	}
	dir := filepath.Join(d.imagesDir(), img.Target.Digest.Encoded())
	out := pool.ImageRootFS{Image: rec, Dir: filepath.Join(dir, "rootfs")}
	d.imageMu.Lock()
	defer d.imageMu.Unlock()
	desc, err := readImageDescription(dir)
	if err != nil {
		if desc, err = d.buildImageRootFS(ctx, img, dir); err != nil {
			return pool.ImageRootFS{}, fmt.Errorf("image %s: %w", ref, err)
		}
	}
	out.Entrypoint, out.Cmd, out.Env, out.WorkingDir = desc.Entrypoint, desc.Cmd, desc.Env, desc.WorkingDir
	return out, nil
}

// readImageDescription reads the marker of a complete image directory.
func readImageDescription(dir string) (imageDescription, error) {
	var desc imageDescription
	b, err := os.ReadFile(filepath.Join(dir, imageMarker))
	if err != nil {
		return desc, err
	}
	if err := json.Unmarshal(b, &desc); err != nil {
		return desc, fmt.Errorf("%s: %w", filepath.Join(dir, imageMarker), err)
	}
	return desc, nil
}

// buildImageRootFS makes dir (absent or incomplete) from img: rootfs/
// with img's layers for the node's platform applied in order, prepared for
// containers, then imageMarker. It runs under imageMu.
func (d *Driver) buildImageRootFS(ctx context.Context, img images.Image, dir string) (imageDescription, error) {
	cs := d.client.ContentStore()
	platform := platforms.Default()
	manifest, err := images.Manifest(ctx, cs, img.Target, platform)
	if err != nil {
		return imageDescription{}, fmt.Errorf("%w: no manifest for %s: %v", pool.ErrInvalidImage, platforms.DefaultString(), err)
	}
	cfgBlob, err := content.ReadBlob(ctx, cs, manifest.Config)
	if err != nil {
		return imageDescription{}, fmt.Errorf("%w: config: %v", pool.ErrInvalidImage, err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		return imageDescription{}, fmt.Errorf("%w: config: %v", pool.ErrInvalidImage, err)
	}
	if err := os.MkdirAll(d.imagesDir(), 0o711); err != nil {
		return imageDescription{}, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return imageDescription{}, err
	}
	tmp, err := os.MkdirTemp(d.imagesDir(), ".build-")
	if err != nil {
		return imageDescription{}, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil {
		return imageDescription{}, err
	}
	root := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return imageDescription{}, err
	}
	for i, layer := range manifest.Layers {
		if err := applyLayer(ctx, cs, layer, root); err != nil {
			return imageDescription{}, fmt.Errorf("%w: layer %d (%s): %v", pool.ErrInvalidImage, i, layer.Digest, err)
		}
	}
	if err := PrepareRootFS(root); err != nil {
		return imageDescription{}, err
	}
	desc := imageDescription{
		Entrypoint: cfg.Config.Entrypoint,
		Cmd:        cfg.Config.Cmd,
		Env:        cfg.Config.Env,
		WorkingDir: cfg.Config.WorkingDir,
	}
	b, err := json.Marshal(desc)
	if err != nil {
		return imageDescription{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, imageMarker), b, 0o644); err != nil {
		return imageDescription{}, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return imageDescription{}, err
	}
	return desc, nil
}

// applyLayer unpacks the layer blob desc (a tar, compressed or not) onto
// root, whiteouts removing what earlier layers made.
func applyLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor, root string) error {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return err
	}
	defer ra.Close()
	rd, err := compression.DecompressStream(content.NewReader(ra))
	if err != nil {
		return err
	}
	defer rd.Close()
	if _, err := archive.Apply(ctx, root, rd); err != nil {
		return err
	}
	// Read to the end, as the layer's trailing padding is part of it.
	_, err = io.Copy(io.Discard, rd)
	return err
}

// pull fetches ref from its registry (no unpacking: ImageRootFS applies
// the layers itself) within the pull timeout. Its failure wraps
// pool.ErrImageNotFound and names ref.
func (d *Driver) pull(ctx context.Context, ref string) (images.Image, error) {
	if d.opts.pullTimeout <= 0 {
		return images.Image{}, fmt.Errorf("%w: %s is not imported (kiln image import)", pool.ErrImageNotFound, ref)
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return images.Image{}, fmt.Errorf("%w: %s is not imported (kiln image import), and it is no reference a registry could serve: %v", pool.ErrImageNotFound, ref, err)
	}
	pctx, cancel := context.WithTimeout(ctx, d.opts.pullTimeout)
	defer cancel()
	img, err := d.client.Pull(pctx, named.String(), containerd.WithPlatformMatcher(platforms.Default()))
	if err != nil {
		if ctx.Err() != nil {
			return images.Image{}, ctx.Err()
		}
		return images.Image{}, fmt.Errorf("%w: %s is not imported (kiln image import), and pulling %s failed within %v: %v",
			pool.ErrImageNotFound, ref, named, d.opts.pullTimeout, err)
	}
	return img.Metadata(), nil
}

// usable returns ErrClosed after Close and a pool.ErrUnavailable while
// containerd does not answer.
func (d *Driver) usable() error {
	d.mu.RLock()
	closed := d.closed
	d.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if !d.reachable.Load() {
		return fmt.Errorf("%w: containerd does not answer on %s", pool.ErrUnavailable, d.address)
	}
	return nil
}
