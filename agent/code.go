package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	ctrd "github.com/kilnfx/kiln/pool/containerd"
)

// installCode copies a function's code into the agent's own directory and
// returns the code's revision (a content hash) and the root filesystem
// directory that holds it. The code is a built binary (installed as handler)
// or a directory (copied whole; handler names the executable in it).
// Installing the same code twice is cheap: an existing revision is reused.
func installCode(functionsDir, name, code, handler string) (revision, rootfs string, err error) {
	if !filepath.IsAbs(code) {
		return "", "", fmt.Errorf("%w: code: %q is not an absolute path", ErrInvalidArgument, code)
	}
	fi, err := os.Stat(code)
	if err != nil {
		return "", "", fmt.Errorf("%w: code: %v", ErrInvalidArgument, err)
	}
	var files []string // relative paths of regular files
	if fi.IsDir() {
		err = filepath.WalkDir(code, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				rel, _ := filepath.Rel(code, p)
				files = append(files, rel)
			}
			return nil
		})
		if err != nil {
			return "", "", fmt.Errorf("%w: code: %v", ErrInvalidArgument, err)
		}
		sort.Strings(files)
		if hi, err := os.Stat(filepath.Join(code, handler)); err != nil || !hi.Mode().IsRegular() || hi.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("%w: handler: %q is not an executable file in %s", ErrInvalidArgument, handler, code)
		}
	} else {
		if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("%w: code: %s is not an executable file", ErrInvalidArgument, code)
		}
		if err := checkELF(code); err != nil {
			return "", "", fmt.Errorf("%w: code: %v", ErrInvalidArgument, err)
		}
	}

	h := sha256.New()
	hashFile := func(rel, p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", rel, st.Mode().Perm(), st.Size())
		_, err = io.Copy(h, f)
		return err
	}
	if fi.IsDir() {
		for _, rel := range files {
			if err := hashFile(rel, filepath.Join(code, rel)); err != nil {
				return "", "", fmt.Errorf("%w: code: %v", ErrInvalidArgument, err)
			}
		}
	} else if err := hashFile(handler, code); err != nil {
		return "", "", fmt.Errorf("%w: code: %v", ErrInvalidArgument, err)
	}
	revision = hex.EncodeToString(h.Sum(nil))[:12]

	dir := filepath.Join(functionsDir, name, revision)
	rootfs = filepath.Join(dir, "rootfs")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return revision, rootfs, nil
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	tmpRoot := filepath.Join(tmp, "rootfs")
	if err := os.MkdirAll(tmpRoot, 0o755); err != nil {
		return "", "", fmt.Errorf("install code: %w", err)
	}
	if err := ctrd.PrepareRootFS(tmpRoot); err != nil {
		return "", "", err
	}
	if fi.IsDir() {
		for _, rel := range files {
			if err := copyFile(filepath.Join(code, rel), filepath.Join(tmpRoot, rel)); err != nil {
				return "", "", err
			}
		}
	} else if err := copyFile(code, filepath.Join(tmpRoot, handler)); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), nil, 0o644); err != nil {
		return "", "", err
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", "", fmt.Errorf("install code: %w", err)
	}
	return revision, rootfs, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy code: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy code: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy code: %w", err)
	}
	// Readable (and, where the source is, executable) by the container's
	// non-root user; owned by root so it cannot change it.
	mode := os.FileMode(0o644)
	if st.Mode()&0o111 != 0 {
		mode = 0o755
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("copy code: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy code: %w", err)
	}
	return out.Close()
}

// checkELF reports an error unless path starts like an ELF executable.
func checkELF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "\x7fELF" {
		return errors.New(path + " is not an ELF executable (build the function with `kiln deploy` or CGO_ENABLED=0 go build)")
	}
	return nil
}
