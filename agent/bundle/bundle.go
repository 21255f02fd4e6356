// Package bundle is the code archive a deploy carries: a function's files as
// a tar stream, gzip-compressed or not. Pack makes one from a directory (the
// CLI's side); Unpack writes one into a fresh directory (the agent's side),
// refusing whatever could reach outside that directory or past its limits.
//
// An archive is outside input: kilnd runs as root, so Unpack never follows a
// link it did not check, never writes through a symbolic link, and never
// keeps an owner, a set-id bit or a device from the archive.
package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Limits bound what Unpack accepts.
type Limits struct {
	// ArchiveBytes bounds the archive as given (compressed, when it is).
	ArchiveBytes int64
	// FileBytes bounds the sum of the unpacked regular files.
	FileBytes int64
	// Entries bounds the number of entries (files, directories, links),
	// counting the directories the entries' names imply but the archive
	// does not list.
	Entries int
}

// DefaultLimits are the limits of a deploy.
var DefaultLimits = Limits{ArchiveBytes: 64 << 20, FileBytes: 512 << 20, Entries: 10000}

// maxPathBytes bounds an entry's name.
const maxPathBytes = 1024

// ErrInvalid is wrapped by every error Unpack returns for an archive it
// refuses (as opposed to a failure to write, such as a full disk).
var ErrInvalid = errors.New("invalid code archive")

// ErrTooLarge is wrapped (with ErrInvalid) by errors for an archive over a
// limit.
var ErrTooLarge = errors.New("code archive over its limit")

// Unpack writes the archive's entries under dir, which must exist and be
// empty, and returns a digest of what it wrote: the sorted names, kinds,
// modes, link targets and contents, so that the same files give the same
// digest whatever the archive's timestamps, owners and order.
//
// Regular files are written 0644, or 0755 when any execute bit is set;
// directories 0755; owners, set-id and sticky bits are dropped. Symbolic
// links are kept when their target, resolved from the link's directory,
// stays inside dir; hard links when they name an earlier regular file.
// Names that are absolute, contain "..", or pass through a symbolic link
// are refused, as are devices, FIFOs and duplicate names. Errors for a
// refused archive wrap ErrInvalid; errors writing dir (ENOSPC included) are
// returned as they are, wrapped.
func Unpack(r io.Reader, dir string, lim Limits) (digest string, err error) {
	br := bufio.NewReader(&limitedReader{r: r, n: lim.ArchiveBytes, what: "archive"})
	var tr *tar.Reader
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return "", fmt.Errorf("%w: gzip: %v", ErrInvalid, err)
		}
		defer zr.Close()
		tr = tar.NewReader(zr)
	} else {
		tr = tar.NewReader(br)
	}
	u := unpacker{dir: dir, lim: lim, seen: map[string]entryKind{}}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", invalidOr(err, "read archive")
		}
		if err := u.entry(h, tr); err != nil {
			return "", err
		}
	}
	if len(u.seen) == 0 {
		return "", fmt.Errorf("%w: the archive holds no files", ErrInvalid)
	}
	return u.digest(), nil
}

// invalidOr wraps err with ErrInvalid unless it already is a limit error.
func invalidOr(err error, what string) error {
	if errors.Is(err, ErrInvalid) {
		return err
	}
	return fmt.Errorf("%w: %s: %v", ErrInvalid, what, err)
}

type entryKind int

const (
	kindDir entryKind = iota + 1
	kindFile
	kindSymlink
)

type unpacker struct {
	dir     string
	lim     Limits
	seen    map[string]entryKind
	entries int
	bytes   int64
	records []string // digest lines, one per entry
}

func (u *unpacker) entry(h *tar.Header, r io.Reader) error {
	switch h.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil // metadata of the next entry; archive/tar applies it
	}
	name, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if h.Typeflag == tar.TypeDir {
			return nil
		}
		return fmt.Errorf("%w: %q: not a file name", ErrInvalid, h.Name)
	}
	if u.entries++; u.lim.Entries > 0 && u.entries > u.lim.Entries {
		return fmt.Errorf("%w: %w: more than %d entries", ErrInvalid, ErrTooLarge, u.lim.Entries)
	}
	if k, dup := u.seen[name]; dup && !(k == kindDir && h.Typeflag == tar.TypeDir) {
		return fmt.Errorf("%w: %s: appears twice", ErrInvalid, name)
	}
	if err := u.parents(name); err != nil {
		return err
	}
	target := filepath.Join(u.dir, filepath.FromSlash(name))
	switch h.Typeflag {
	case tar.TypeDir:
		if _, dup := u.seen[name]; dup {
			return nil
		}
		if err := os.Mkdir(target, 0o755); err != nil {
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		u.seen[name] = kindDir
		u.records = append(u.records, "d "+name)
	case tar.TypeReg: // tar.Reader reports old-style regular files (TypeRegA) as TypeReg
		mode := os.FileMode(0o644)
		if h.Mode&0o111 != 0 {
			mode = 0o755
		}
		if err := u.writeFile(name, target, mode, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := checkLinkTarget(name, h.Linkname); err != nil {
			return err
		}
		if err := os.Symlink(h.Linkname, target); err != nil {
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		u.seen[name] = kindSymlink
		u.records = append(u.records, "l "+name+"\x00"+h.Linkname)
	case tar.TypeLink:
		src, err := cleanName(h.Linkname)
		if err != nil {
			return err
		}
		if u.seen[src] != kindFile {
			return fmt.Errorf("%w: %s: hard link to %q, which is no earlier file of the archive", ErrInvalid, name, h.Linkname)
		}
		if err := os.Link(filepath.Join(u.dir, filepath.FromSlash(src)), target); err != nil {
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		u.seen[name] = kindFile
		u.records = append(u.records, "h "+name+"\x00"+src)
	default:
		return fmt.Errorf("%w: %s: entries of type %q (devices, FIFOs and the like) are not allowed", ErrInvalid, name, string(h.Typeflag))
	}
	return nil
}

// parents creates the directories above name that the archive did not
// list, and refuses a name under anything but a directory this unpack made.
func (u *unpacker) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		switch u.seen[p] {
		case kindDir:
			continue
		case 0:
			// A directory the archive implies counts as an entry: a few
			// deep names must not make many directories.
			if u.entries++; u.lim.Entries > 0 && u.entries > u.lim.Entries {
				return fmt.Errorf("%w: %w: more than %d entries, with the directories their names imply", ErrInvalid, ErrTooLarge, u.lim.Entries)
			}
			if err := os.Mkdir(filepath.Join(u.dir, filepath.FromSlash(p)), 0o755); err != nil {
				return fmt.Errorf("unpack %s: %w", p, err)
			}
			u.seen[p] = kindDir
			u.records = append(u.records, "d "+p)
		default:
			return fmt.Errorf("%w: %s: its parent %s is not a directory", ErrInvalid, name, p)
		}
	}
	return nil
}

func (u *unpacker) writeFile(name, target string, mode os.FileMode, r io.Reader) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", name, err)
	}
	h := sha256.New()
	var room int64 = -1
	if u.lim.FileBytes > 0 {
		room = u.lim.FileBytes - u.bytes
	}
	src := r
	if room >= 0 {
		src = &limitedReader{r: r, n: room, what: "unpacked files"}
	}
	n, err := copyFile(io.MultiWriter(f, h), src)
	u.bytes += n
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("unpack %s: %w", name, cerr)
	}
	if err != nil {
		return err
	}
	u.seen[name] = kindFile
	u.records = append(u.records, fmt.Sprintf("f %s\x00%o\x00%x", name, mode, h.Sum(nil)))
	return nil
}

// copyFile copies src to dst. A failure to read is the archive's fault and
// wraps ErrInvalid; a failure to write (a full disk) is returned as it is.
func copyFile(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, fmt.Errorf("unpack: %w", werr)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, invalidOr(rerr, "read archive")
		}
	}
}

func (u *unpacker) digest() string {
	sort.Strings(u.records)
	h := sha256.New()
	for _, r := range u.records {
		h.Write([]byte(r))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// cleanName checks an archive entry's name and returns it cleaned, with
// slashes and without a leading "./".
func cleanName(name string) (string, error) {
	if name == "" || len(name) > maxPathBytes || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: entry name %q is empty, too long or holds a NUL", ErrInvalid, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: %q: absolute names are not allowed", ErrInvalid, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q: names with .. are not allowed", ErrInvalid, name)
		}
	}
	return path.Clean(name), nil
}

// checkLinkTarget refuses a symbolic link whose target could leave the
// archive's tree. The target must be relative, with ".." only as its
// leading components and no more of them than the link is deep. Since no
// entry lies under a symbolic link, the link's own directory and its
// ancestors are real directories, so the leading ".." steps end inside the
// tree; every later step descends, and any link met on the way is held to
// the same rule. (A ".." after another component could climb out of a
// link to ".", so it is refused.)
func checkLinkTarget(name, target string) error {
	if target == "" || strings.ContainsRune(target, 0) || len(target) > maxPathBytes {
		return fmt.Errorf("%w: %s: bad link target %q", ErrInvalid, name, target)
	}
	if path.IsAbs(target) {
		return fmt.Errorf("%w: %s: link to the absolute path %q leaves the archive", ErrInvalid, name, target)
	}
	depth := strings.Count(name, "/")
	up, descended := 0, false
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			if descended {
				return fmt.Errorf("%w: %s: link target %q has .. after a name", ErrInvalid, name, target)
			}
			if up++; up > depth {
				return fmt.Errorf("%w: %s: link to %q leaves the archive", ErrInvalid, name, target)
			}
		default:
			descended = true
		}
	}
	return nil
}

// limitedReader fails with ErrTooLarge once more than n bytes are read.
// It hands over no byte past the limit: it reads one more to learn that
// there is more, and keeps it.
type limitedReader struct {
	r    io.Reader
	n    int64 // bytes allowed; a non-positive limit means none
	what string
	read int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return l.r.Read(p)
	}
	if l.read > l.n {
		return 0, l.overErr()
	}
	if room := l.n - l.read + 1; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := l.r.Read(p)
	l.read += int64(n)
	if l.read > l.n {
		return n - int(l.read-l.n), l.overErr()
	}
	return n, err
}

func (l *limitedReader) overErr() error {
	return fmt.Errorf("%w: %w: the %s are over %d bytes", ErrInvalid, ErrTooLarge, l.what, l.n)
}

// Skip reports whether Pack leaves a directory entry out: version control
// and editor state that a function never needs.
func Skip(name string, isDir bool) bool {
	switch name {
	case ".git", ".hg", ".svn", ".DS_Store", ".idea", ".vscode", "__pycache__", ".kiln":
		return true
	}
	return !isDir && (strings.HasSuffix(name, "~") || strings.HasSuffix(name, ".swp"))
}

// Pack writes a gzip-compressed tar of the tree under root, leaving out what
// Skip names and anything but regular files, directories and symbolic
// links. Entries are in name order with zero times and owners, so the same
// files make the same archive. extra, when not nil, adds files (name →
// host path) at the top of the archive, after the tree; they win over
// tree files of the same name. Pack fails once the archive would exceed
// maxBytes (0: no limit), naming the limit.
func Pack(w io.Writer, root string, extra map[string]string, maxBytes int64) error {
	cw := &countingWriter{w: w, max: maxBytes}
	// Fastest compression: a function binary packs in tens of ms and still
	// shrinks to about a third.
	zw, _ := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	add := func(name, hostPath string, fi fs.FileInfo) error {
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if h.Linkname, err = os.Readlink(hostPath); err != nil {
				return err
			}
		}
		h.Name = name
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.ModTime, h.AccessTime, h.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(hostPath)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	}
	if root != "" {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil
			}
			rel = filepath.ToSlash(rel)
			if Skip(d.Name(), d.IsDir()) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if _, over := extra[rel]; over {
				return nil
			}
			if !d.IsDir() && !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return add(rel, p, fi)
		})
		if err != nil {
			return packError(err, cw)
		}
	}
	names := make([]string, 0, len(extra))
	for n := range extra {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fi, err := os.Stat(extra[n])
		if err != nil {
			return err
		}
		if err := add(n, extra[n], fi); err != nil {
			return packError(err, cw)
		}
	}
	if err := tw.Close(); err != nil {
		return packError(err, cw)
	}
	return packError(zw.Close(), cw)
}

func packError(err error, cw *countingWriter) error {
	if err == nil {
		return nil
	}
	if cw.over {
		return fmt.Errorf("%w: the packed code is over %d bytes; leave large files out of the function's directory", ErrTooLarge, cw.max)
	}
	return fmt.Errorf("pack code: %w", err)
}

// PackBytes is Pack into memory.
func PackBytes(root string, extra map[string]string, maxBytes int64) ([]byte, error) {
	var buf bytes.Buffer
	if err := Pack(&buf, root, extra, maxBytes); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type countingWriter struct {
	w    io.Writer
	n    int64
	max  int64
	over bool
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.max > 0 && c.n+int64(len(p)) > c.max {
		c.over = true
		return 0, ErrTooLarge
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
