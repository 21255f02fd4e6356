package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/kilnfx/kiln/agent/bundle"
)

// installCode unpacks a function's code archive into the agent's own
// directory, makes it a root filesystem with prepare (the driver's), and
// returns the code's revision (a digest of the unpacked
// files) and the root filesystem directory that holds it. handler must be a
// regular file of the archive: for the go and binary runtimes an
// executable one, for go an ELF one.
// Installing the same files twice is cheap: an existing revision is reused.
// A refused archive is an ErrInvalidArgument; a full disk an
// ErrInsufficientStorage. Nothing half-written is left behind.
func installCode(functionsDir, name string, archive []byte, runtime, handler string, lim bundle.Limits, prepare func(dir string) error) (revision, rootfs string, err error) {
	fnDir := filepath.Join(functionsDir, name)
	if err := os.MkdirAll(fnDir, 0o700); err != nil {
		return "", "", storageError("install code", err)
	}
	tmp, err := os.MkdirTemp(fnDir, ".install-")
	if err != nil {
		return "", "", storageError("install code", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	tmpRoot := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(tmpRoot, 0o755); err != nil {
		return "", "", storageError("install code", err)
	}
	digest, err := bundle.Unpack(bytes.NewReader(archive), tmpRoot, lim)
	if errors.Is(err, bundle.ErrInvalid) {
		return "", "", fmt.Errorf("%w: code: %v", ErrInvalidArgument, err)
	}
	if err != nil {
		return "", "", storageError("install code", err)
	}
	hi, err := os.Lstat(filepath.Join(tmpRoot, handler))
	switch {
	case err != nil || !hi.Mode().IsRegular():
		return "", "", fmt.Errorf("%w: handler: %q is not a file of the code archive", ErrInvalidArgument, handler)
	case hi.Mode()&0o111 == 0 && (runtime == "go" || runtime == "binary" || runtime == "cpp"):
		return "", "", fmt.Errorf("%w: handler: %q is not an executable file of the code archive", ErrInvalidArgument, handler)
	}
	if runtime == "go" {
		if err := checkELF(filepath.Join(tmpRoot, handler)); err != nil {
			return "", "", fmt.Errorf("%w: code: %s %v", ErrInvalidArgument, handler, err)
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s", digest, handler)
	revision = hex.EncodeToString(h.Sum(nil))[:12]

	dir := filepath.Join(fnDir, revision)
	rootfs = filepath.Join(dir, "rootfs")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return revision, rootfs, nil
	}
	if err := prepare(tmpRoot); err != nil {
		return "", "", storageError("install code", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), nil, 0o644); err != nil {
		return "", "", storageError("install code", err)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", "", storageError("install code", err)
	}
	return revision, rootfs, nil
}

// storageError wraps a failure to write the data dir: ENOSPC and EDQUOT
// are ErrInsufficientStorage, anything else is returned as it is.
func storageError(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %s: the data directory's disk is full: %v", ErrInsufficientStorage, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// copyFile copies the host file src to dst, readable (and, where src is,
// executable) by the container's non-root user, owned by root so that it
// cannot change it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	mode := os.FileMode(0o644)
	if st.Mode()&0o111 != 0 {
		mode = 0o755
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
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
		return errors.New("is not an ELF executable (build the function with `kiln deploy` or CGO_ENABLED=0 go build)")
	}
	return nil
}
