package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// tarEntry is one entry of a hand-made code archive.
type tarEntry struct {
	name, link string
	typ        byte
	body       []byte
	size       int64 // of zeros, when body is nil
}

// makeArchive writes a gzip-compressed tar of entries.
func makeArchive(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o755}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
			if e.body == nil {
				h.Size = e.size
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ != tar.TypeReg {
			continue
		}
		if e.body != nil {
			tw.Write(e.body)
			continue
		}
		zeros := make([]byte, 1<<20)
		for left := e.size; left > 0; left -= int64(len(zeros)) {
			tw.Write(zeros[:min(left, int64(len(zeros)))])
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func deployArchive(t *testing.T, k *kilnd, name string, archive []byte) response {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"runtime": "go", "code": base64.StdEncoding.EncodeToString(archive)})
	return k.do(t, "PUT", "/v1/functions/"+name, b)
}

// asNobody runs argv as uid and gid 65534, the way any local user could.
func asNobody(argv ...string) ([]byte, error) {
	return exec.Command("setpriv", append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups", "--"}, argv...)...).CombinedOutput()
}

// TestHostFilesStayPrivate: code reaches kilnd only in the request, an
// archive that reaches outside its tree is refused, the management API needs
// the admin token, and nothing in the data dir is readable by another user.
func TestHostFilesStayPrivate(t *testing.T) {
	k := sharedKilnd(t)
	probe, err := os.ReadFile(filepath.Join(binDir, "probe"))
	if err != nil {
		t.Fatal(err)
	}

	// The request that copied /etc into the data dir: no token, then a
	// host path as code.
	leak := []byte(`{"runtime":"go","code":"/etc","handler":"init.d/procps"}`)
	if r := k.doToken(t, "PUT", "/v1/functions/leak", "", leak); r.status != 401 {
		t.Fatalf("deploy without the admin token = %d %s, want 401", r.status, r.body)
	}
	if r := k.do(t, "PUT", "/v1/functions/leak", leak); r.status != 400 || !bytes.Contains(r.body, []byte("code")) {
		t.Fatalf("deploy of a host path = %d %s, want 400 naming code", r.status, r.body)
	}
	for _, tt := range []struct {
		name    string
		archive []byte
		mention string
	}{
		{"absolute name", makeArchive(t, tarEntry{name: "/etc/cron.d/x", typ: tar.TypeReg, body: probe}), "absolute"},
		{"dot-dot", makeArchive(t, tarEntry{name: "../../../../etc/x", typ: tar.TypeReg, body: probe}), ".."},
		{"handler a link to shadow", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeSymlink, link: "/etc/shadow"}), "absolute"},
		{"link out of the tree", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeReg, body: probe}, tarEntry{name: "etc", typ: tar.TypeSymlink, link: "../../../../etc"}), "leaves"},
		{"hard link to shadow", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeLink, link: "/etc/shadow"}), "absolute"},
		{"device", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeReg, body: probe}, tarEntry{name: "mem", typ: tar.TypeChar}), "not allowed"},
		{"over the unpacked limit", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeReg, body: probe}, tarEntry{name: "big", typ: tar.TypeReg, size: 600 << 20}), "over"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := deployArchive(t, k, "leak", tt.archive)
			if r.status != 400 || !bytes.Contains(r.body, []byte(tt.mention)) {
				t.Fatalf("deploy = %d %s, want 400 mentioning %q", r.status, r.body, tt.mention)
			}
		})
	}
	if r := k.do(t, "GET", "/v1/functions/leak", nil); r.status != 404 {
		t.Errorf("a refused function exists: %d %s", r.status, r.body)
	}
	if ents, _ := os.ReadDir(filepath.Join(k.dataDir, "functions", "leak")); len(ents) != 0 {
		t.Errorf("refused deploys left %d entries in the data dir", len(ents))
	}

	// A good archive deploys and answers; its files are not readable by
	// any other user, nor is the token.
	if r := deployArchive(t, k, "private", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeReg, body: probe})); r.status != 200 {
		t.Fatalf("deploy = %d %s", r.status, r.body)
	}
	if r := k.do(t, "POST", "/invoke/private", []byte("x")); r.status != 202 {
		t.Fatalf("invoke = %d %s", r.status, r.body)
	}
	st, err := os.Stat(k.dataDir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
	handlers, _ := filepath.Glob(filepath.Join(k.dataDir, "functions", "private", "*", "rootfs", "handler"))
	if len(handlers) != 1 {
		t.Fatalf("installed handlers: %v", handlers)
	}
	for _, p := range []string{handlers[0], filepath.Join(k.dataDir, "admin.token"), filepath.Join(k.dataDir, "kiln.db")} {
		if out, err := asNobody("cat", p); err == nil {
			t.Errorf("uid 65534 read %s: %.80q", p, out)
		} else if !strings.Contains(string(out), "Permission denied") {
			t.Errorf("uid 65534 reading %s: %v %s, want permission denied", p, err, out)
		}
	}
}

// TestDeployDiskFull: a deploy that fills the disk answers 507 with the
// cause, leaves nothing half-written, and the next deploy works.
func TestDeployDiskFull(t *testing.T) {
	requireIntegration(t)
	dir := tmpfsDataDir(t, "96m")
	k := startKilnd(t, dir)
	probe, err := os.ReadFile(filepath.Join(binDir, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	var before syscall.Statfs_t
	syscall.Statfs(dir, &before)
	full := makeArchive(t, tarEntry{name: "handler", typ: tar.TypeReg, body: probe}, tarEntry{name: "data", typ: tar.TypeReg, size: 200 << 20})
	r := deployArchive(t, k, "big", full)
	if r.status != 507 || r.header.Get("X-Kiln-Error") != "insufficient_storage" || !bytes.Contains(r.body, []byte("disk is full")) {
		t.Fatalf("deploy on a full disk = %d %s, want 507 insufficient_storage", r.status, r.body)
	}
	var after syscall.Statfs_t
	syscall.Statfs(dir, &after)
	if lost := int64(before.Bfree-after.Bfree) * int64(after.Bsize); lost > 8<<20 {
		t.Errorf("the failed deploy left %d bytes behind", lost)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "functions", "big")); len(ents) != 0 {
		t.Errorf("the failed deploy left %d entries", len(ents))
	}
	if r := deployArchive(t, k, "small", makeArchive(t, tarEntry{name: "handler", typ: tar.TypeReg, body: probe})); r.status != 200 {
		t.Fatalf("deploy after the full disk = %d %s", r.status, r.body)
	}
	if r := k.do(t, "POST", "/invoke/small", []byte("x")); r.status != 202 {
		t.Fatalf("invoke = %d %s", r.status, r.body)
	}
}
