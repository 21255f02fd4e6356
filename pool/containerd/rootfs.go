package containerd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/kilnfx/kiln/pool"
)

// PrepareRootFS makes dir usable as a ContainerSpec.RootFS: it creates the
// mount points in RequiredDirs (/tmp with mode 1777, the others 0755), makes
// dir itself searchable by everyone (the container's user is not its owner),
// and makes sure /etc/passwd and /etc/group exist and name uid and gid
// pool.ContainerUID ("nobody"/"nogroup"), appending an entry to existing
// files that lack one. It never removes anything and is safe to run again on
// the same dir; it must not run while containers use dir.
func PrepareRootFS(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("prepare rootfs: %q is not an absolute path", dir)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("prepare rootfs: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("prepare rootfs: %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o005 != 0o005 {
		if err := os.Chmod(dir, fi.Mode().Perm()|0o055); err != nil {
			return fmt.Errorf("prepare rootfs: %w", err)
		}
	}
	for _, d := range slices.Concat(RequiredDirs, []string{"/etc"}) {
		p := filepath.Join(dir, d)
		mode := os.FileMode(0o755)
		if d == "/tmp" {
			mode = os.ModeSticky | 0o777
		}
		if err := os.MkdirAll(p, mode); err != nil {
			return fmt.Errorf("prepare rootfs: %w", err)
		}
		if d == "/tmp" {
			// MkdirAll applies the umask and drops the sticky bit.
			if err := os.Chmod(p, mode); err != nil {
				return fmt.Errorf("prepare rootfs: %w", err)
			}
		}
	}
	uid := strconv.Itoa(pool.ContainerUID)
	if err := ensureEntry(filepath.Join(dir, "etc", "passwd"),
		"root:x:0:0:root:/root:/sbin/nologin\n",
		"nobody:x:"+uid+":"+uid+":nobody:/nonexistent:/sbin/nologin\n", 2); err != nil {
		return err
	}
	return ensureEntry(filepath.Join(dir, "etc", "group"),
		"root:x:0:\n",
		"nogroup:x:"+uid+":\n", 2)
}

// ensureEntry creates path with root and entry, or appends entry when path
// exists but has no line whose field number idx (0-based, ':'-separated)
// equals pool.ContainerUID.
func ensureEntry(path, root, entry string, idx int) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(path, []byte(root+entry), 0o644); err != nil {
			return fmt.Errorf("prepare rootfs: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("prepare rootfs: %w", err)
	}
	want := []byte(strconv.Itoa(pool.ContainerUID))
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := bytes.Split(line, []byte(":"))
		if len(f) > idx && bytes.Equal(f[idx], want) {
			return nil
		}
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		entry = "\n" + entry
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("prepare rootfs: %w", err)
	}
	if _, err := f.WriteString(entry); err != nil {
		f.Close()
		return fmt.Errorf("prepare rootfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("prepare rootfs: %w", err)
	}
	return nil
}
