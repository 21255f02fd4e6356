package containerd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrepareRootFS(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := PrepareRootFS(dir); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o005 != 0o005 {
		t.Errorf("root mode %v: not searchable by others", fi.Mode())
	}
	for _, d := range RequiredDirs {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "tmp")); fi == nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("/tmp mode = %v, want 1777", fi.Mode())
	}
	passwd, _ := os.ReadFile(filepath.Join(dir, "etc", "passwd"))
	group, _ := os.ReadFile(filepath.Join(dir, "etc", "group"))
	if strings.Count(string(passwd), ":65534:65534:") != 1 {
		t.Errorf("passwd:\n%s", passwd)
	}
	if strings.Count(string(group), ":65534:") != 1 {
		t.Errorf("group:\n%s", group)
	}
}

func TestPrepareRootFSAppends(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh", // no final newline
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	})
	if err := PrepareRootFS(dir); err != nil {
		t.Fatal(err)
	}
	passwd, _ := os.ReadFile(filepath.Join(dir, "etc", "passwd"))
	want := "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
	if string(passwd) != want {
		t.Errorf("passwd = %q, want %q", passwd, want)
	}
	group, _ := os.ReadFile(filepath.Join(dir, "etc", "group"))
	if string(group) != "root:x:0:\nnogroup:x:65534:\n" {
		t.Errorf("group changed: %q", group)
	}
}

func TestPrepareRootFSErrors(t *testing.T) {
	if err := PrepareRootFS("relative"); err == nil {
		t.Error("relative path accepted")
	}
	if err := PrepareRootFS(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing dir accepted")
	}
}
