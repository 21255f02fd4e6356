package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// imageFile is a regular file of a test image's one layer.
type imageFile struct {
	name string // without a leading slash
	mode int64
	data []byte
}

// layerTar returns a tar of files, with their parent directories.
func layerTar(t *testing.T, files []imageFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f.name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// imageConfig is an OCI image config of one layer whose uncompressed
// digest is diffID, for this machine's platform.
func imageConfig(t *testing.T, diffID string, entrypoint, env []string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": entrypoint, "Env": env, "WorkingDir": "/app"},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tarFiles returns a tar of the named blobs (name → content), in order.
func tarFiles(t *testing.T, names []string, blobs map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(blobs[name]))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(blobs[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ociArchive returns an OCI image layout as a tar: one gzip'd layer of
// files, a config with entrypoint and env, a manifest, and an index
// naming it refName (org.opencontainers.image.ref.name).
func ociArchive(t *testing.T, refName string, files []imageFile, entrypoint, env []string) []byte {
	t.Helper()
	layer := layerTar(t, files)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	config := imageConfig(t, sha256Digest(layer), entrypoint, env)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256Digest(config), "size": len(config)},
		"layers": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256Digest(gz.Bytes()), "size": gz.Len(),
		}},
	})
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType":   "application/vnd.oci.image.manifest.v1+json",
			"digest":      sha256Digest(manifest),
			"size":        len(manifest),
			"annotations": map[string]string{"org.opencontainers.image.ref.name": refName},
		}},
	})
	blobs := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": index,
	}
	names := []string{"oci-layout", "index.json"}
	for _, b := range [][]byte{gz.Bytes(), config, manifest} {
		name := "blobs/sha256/" + strings.TrimPrefix(sha256Digest(b), "sha256:")
		blobs[name] = b
		names = append(names, name)
	}
	return tarFiles(t, names, blobs)
}

// dockerArchive returns a docker save archive of one uncompressed layer of
// files, tagged tag.
func dockerArchive(t *testing.T, tag string, files []imageFile, entrypoint, env []string) []byte {
	t.Helper()
	layer := layerTar(t, files)
	config := imageConfig(t, sha256Digest(layer), entrypoint, env)
	configName := strings.TrimPrefix(sha256Digest(config), "sha256:") + ".json"
	manifest, _ := json.Marshal([]any{map[string]any{
		"Config":   configName,
		"RepoTags": []string{tag},
		"Layers":   []string{"layer0/layer.tar"},
	}})
	blobs := map[string][]byte{"manifest.json": manifest, configName: config, "layer0/layer.tar": layer}
	return tarFiles(t, []string{configName, "layer0/layer.tar", "manifest.json"}, blobs)
}

// upperSource is a binary handler: it answers its body in capitals, with
// two variables of its environment and its working directory.
const upperSource = `package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	b, _ := io.ReadAll(os.Stdin)
	wd, _ := os.Getwd()
	fmt.Print(strings.ToUpper(string(b)), " ", os.Getenv("FROM_IMAGE"), " ", os.Getenv("BOTH"), " ", wd)
}
`

// TestImages imports images of the probe function (an OCI layout and a
// docker save archive, made here), deploys and calls them, and checks the
// refusals: an unknown image, an archive that is no image, removing an
// image a function runs.
func TestImages(t *testing.T) {
	k := sharedKilnd(t)
	probe, err := os.ReadFile(filepath.Join(binDir, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	files := []imageFile{{name: "bin/probe", mode: 0o755, data: probe}, {name: "app/README", mode: 0o644, data: []byte("the probe\n")}}
	env := []string{"PATH=/bin", "PROBE_FROM=image"}
	work := t.TempDir()

	ociFile := filepath.Join(work, "probe-oci.tar")
	if err := os.WriteFile(ociFile, ociArchive(t, "kiln.test/probe:1", files, []string{"/bin/probe"}, env), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := kilnCLI(t, k, work, "", "image", "import", ociFile)
	if err != nil || !strings.Contains(out, "Imported kiln.test/probe:1 (sha256:") {
		t.Fatalf("kiln image import (OCI layout): %v\n%s", err, out)
	}
	dockerFile := filepath.Join(work, "probe-docker.tar")
	if err := os.WriteFile(dockerFile, dockerArchive(t, "probe-docker:1", files, []string{"/bin/probe"}, env), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = kilnCLI(t, k, work, "", "image", "import", dockerFile)
	if err != nil || !strings.Contains(out, "Imported docker.io/library/probe-docker:1") {
		t.Fatalf("kiln image import (docker save): %v\n%s", err, out)
	}
	out, err = kilnCLI(t, k, work, "", "image", "list")
	if err != nil || !strings.Contains(out, "kiln.test/probe:1") || !strings.Contains(out, "docker.io/library/probe-docker:1") {
		t.Fatalf("kiln image list: %v\n%s", err, out)
	}

	for _, c := range []struct{ fn, ref string }{
		{"img-oci", "kiln.test/probe:1"},
		{"img-docker", "probe-docker:1"}, // found in its canonical form
	} {
		out, err := kilnCLI(t, k, work, "", "deploy", "--image", c.ref, c.fn)
		if err != nil || !strings.Contains(out, "Deployed "+c.fn) {
			t.Fatalf("kiln deploy --image %s %s: %v\n%s", c.ref, c.fn, err, out)
		}
		r := k.do(t, "POST", "/invoke/"+c.fn+"/x", []byte("hello"))
		if r.status != 202 || string(r.body) != "probe:hello" {
			t.Fatalf("%s answered %d %q\n%s", c.fn, r.status, r.body, k.logs)
		}
		r = k.do(t, "POST", "/invoke/"+c.fn, []byte("report"))
		var rep struct {
			UID          int
			RootWritable bool
		}
		if err := json.Unmarshal(r.body, &rep); err != nil || r.status != 200 {
			t.Fatalf("%s report: %d %q %v", c.fn, r.status, r.body, err)
		}
		if rep.UID != 65534 || rep.RootWritable {
			t.Errorf("%s runs as uid %d, root writable %v: want 65534 on a read-only root", c.fn, rep.UID, rep.RootWritable)
		}
	}
	r := k.do(t, "GET", "/v1/functions/img-docker", nil)
	if !strings.Contains(string(r.body), `"image":"docker.io/library/probe-docker:1"`) || !strings.Contains(string(r.body), `"runtime":"image"`) {
		t.Errorf("img-docker's record: %s", r.body)
	}

	t.Run("generic executor", func(t *testing.T) {
		// The image's entrypoint is kiln-executor serving a binary
		// handler, all named by the image's environment.
		src := filepath.Join(t.TempDir(), "main.go")
		if err := os.WriteFile(src, []byte(upperSource), 0o644); err != nil {
			t.Fatal(err)
		}
		upper := filepath.Join(t.TempDir(), "upper")
		build := exec.Command("go", "build", "-o", upper, src)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build upper: %v\n%s", err, out)
		}
		executor, err := os.ReadFile(filepath.Join(binDir, "kiln-executor"))
		if err != nil {
			t.Fatal(err)
		}
		program, err := os.ReadFile(upper)
		if err != nil {
			t.Fatal(err)
		}
		archive := ociArchive(t, "kiln.test/upper:1",
			[]imageFile{{name: "kiln-executor", mode: 0o755, data: executor}, {name: "app/upper", mode: 0o755, data: program}},
			[]string{"/kiln-executor"},
			[]string{"KILN_RUNTIME=binary", "KILN_CODE_DIR=/app", "KILN_HANDLER=upper", "FROM_IMAGE=image", "BOTH=image"})
		if r := k.do(t, "POST", "/v1/images", archive); r.status != 200 || !strings.Contains(string(r.body), "kiln.test/upper:1") {
			t.Fatalf("import: %d %s", r.status, r.body)
		}
		k.deploy(t, "img-upper", map[string]any{"image": "kiln.test/upper:1", "env": map[string]string{"BOTH": "function"}})
		r := k.do(t, "POST", "/invoke/img-upper", []byte("hello"))
		if want := "HELLO image function /app"; r.status != 200 || string(r.body) != want {
			t.Fatalf("img-upper answered %d %q, want %q\n%s", r.status, r.body, want, k.logs)
		}
		if r := k.do(t, "DELETE", "/v1/functions/img-upper", nil); r.status != 204 {
			t.Fatalf("delete img-upper: %d %s", r.status, r.body)
		}
		if r := k.do(t, "DELETE", "/v1/images/kiln.test/upper:1", nil); r.status != 204 {
			t.Fatalf("DELETE the image: %d %s", r.status, r.body)
		}
	})
	t.Run("unknown image", func(t *testing.T) {
		r := k.tryDeploy(t, "img-missing", map[string]any{"image": "kiln.test/missing:1"})
		if r.status != 400 || !strings.Contains(string(r.body), "kiln.test/missing:1") {
			t.Errorf("deploy of an unknown image: %d %s", r.status, r.body)
		}
		t.Logf("deploy of an unknown image: %d %s", r.status, r.body)
		out, err := kilnCLI(t, k, work, "", "deploy", "--image", "kiln.test/missing:1", "img-missing")
		if err == nil || !strings.Contains(out, "kiln.test/missing:1") {
			t.Errorf("kiln deploy --image of an unknown image: %v\n%s", err, out)
		}
	})
	t.Run("not an image", func(t *testing.T) {
		for name, body := range map[string][]byte{
			"text":        []byte("not an image at all"),
			"tar, no oci": tarFiles(t, []string{"hello.txt"}, map[string][]byte{"hello.txt": []byte("hi")}),
		} {
			r := k.do(t, "POST", "/v1/images", body)
			if r.status != 400 || !strings.Contains(string(r.body), "invalid image") {
				t.Errorf("%s: import answered %d %s", name, r.status, r.body)
			}
			t.Logf("import of %s: %d %s", name, r.status, r.body)
		}
	})
	t.Run("remove", func(t *testing.T) {
		r := k.do(t, "DELETE", "/v1/images/kiln.test/probe:1", nil)
		if r.status != 409 || !strings.Contains(string(r.body), "img-oci") {
			t.Fatalf("removing an image in use: %d %s", r.status, r.body)
		}
		t.Logf("removing an image in use: %d %s", r.status, r.body)
		out, err := kilnCLI(t, k, work, "", "image", "rm", "probe-docker:1")
		if err == nil || !strings.Contains(out, "img-docker") {
			t.Errorf("kiln image rm of an image in use: %v\n%s", err, out)
		}
		for _, fn := range []string{"img-oci", "img-docker"} {
			if r := k.do(t, "DELETE", "/v1/functions/"+fn, nil); r.status != 204 {
				t.Fatalf("delete %s: %d %s", fn, r.status, r.body)
			}
		}
		if out, err := kilnCLI(t, k, work, "", "image", "rm", "kiln.test/probe:1"); err != nil {
			t.Fatalf("kiln image rm: %v\n%s", err, out)
		}
		if r := k.do(t, "DELETE", "/v1/images/docker.io/library/probe-docker:1", nil); r.status != 204 {
			t.Fatalf("DELETE an image: %d %s", r.status, r.body)
		}
		if r := k.do(t, "DELETE", "/v1/images/kiln.test/probe:1", nil); r.status != 404 {
			t.Errorf("DELETE a removed image: %d %s", r.status, r.body)
		}
		r = k.do(t, "GET", "/v1/images", nil)
		if r.status != 200 || strings.Contains(string(r.body), "probe") {
			t.Errorf("images after removal: %d %s", r.status, r.body)
		}
		dirs, _ := os.ReadDir(filepath.Join(k.dataDir, "driver", "images"))
		if len(dirs) != 0 {
			t.Errorf("image root filesystems left after removal: %v", dirs)
		}
	})
}

// TestImageFunctionRestart checks that a function of an image serves again
// after kilnd restarts, from the root filesystem made at its deploy.
func TestImageFunctionRestart(t *testing.T) {
	requireIntegration(t)
	dir := shortTempDir(t)
	k := startKilnd(t, dir)
	probe, err := os.ReadFile(filepath.Join(binDir, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	archive := ociArchive(t, "kiln.test/probe:restart", []imageFile{{name: "probe", mode: 0o755, data: probe}, {name: "app/x", mode: 0o644}}, []string{"/probe"}, nil)
	if r := k.do(t, "POST", "/v1/images", archive); r.status != 200 {
		t.Fatalf("import: %d %s", r.status, r.body)
	}
	k.deploy(t, "img-restart", map[string]any{"image": "kiln.test/probe:restart"})
	if r := k.do(t, "POST", "/invoke/img-restart", []byte("one")); r.status != 202 || string(r.body) != "probe:one" {
		t.Fatalf("before the restart: %d %q", r.status, r.body)
	}
	if err := k.stop(); err != nil {
		t.Fatal(err)
	}
	k = startKilnd(t, dir)
	if r := k.do(t, "POST", "/invoke/img-restart", []byte("two")); r.status != 202 || string(r.body) != "probe:two" {
		t.Fatalf("after the restart: %d %q\n%s", r.status, r.body, k.logs)
	}
}
