package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type entry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
}

func makeTar(t testing.TB, gz bool, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	var zw *gzip.Writer
	var tw *tar.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		tw = tar.NewWriter(zw)
	} else {
		tw = tar.NewWriter(&buf)
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Uid: 1000, Gid: 1000}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	return buf.Bytes()
}

func TestUnpackGood(t *testing.T) {
	for _, gz := range []bool{false, true} {
		dir := t.TempDir()
		arc := makeTar(t, gz,
			entry{name: "handler", typ: tar.TypeReg, mode: 0o4755, body: "\x7fELF..."},
			entry{name: "./lib/", typ: tar.TypeDir},
			entry{name: "lib/data.txt", typ: tar.TypeReg, mode: 0o600, body: "data"},
			entry{name: "deep/er/file", typ: tar.TypeReg, body: "x"},
			entry{name: "lib/link", typ: tar.TypeSymlink, link: "../handler"},
			entry{name: "hard", typ: tar.TypeLink, link: "lib/data.txt"},
		)
		d1, err := Unpack(bytes.NewReader(arc), dir, DefaultLimits)
		if err != nil {
			t.Fatalf("gz=%v: %v", gz, err)
		}
		st, err := os.Stat(filepath.Join(dir, "handler"))
		if err != nil || st.Mode().Perm() != 0o755 || st.Mode()&os.ModeSetuid != 0 {
			t.Errorf("handler mode = %v, %v; want 0755 without setuid", st.Mode(), err)
		}
		if st, _ := os.Stat(filepath.Join(dir, "lib/data.txt")); st.Mode().Perm() != 0o644 {
			t.Errorf("data mode = %v, want 0644", st.Mode())
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "hard")); string(b) != "data" {
			t.Errorf("hard link reads %q", b)
		}
		if l, _ := os.Readlink(filepath.Join(dir, "lib/link")); l != "../handler" {
			t.Errorf("symlink = %q", l)
		}
		// The same files in another order give the same digest.
		dir2 := t.TempDir()
		arc2 := makeTar(t, !gz,
			entry{name: "deep/er/file", typ: tar.TypeReg, body: "x"},
			entry{name: "lib/data.txt", typ: tar.TypeReg, body: "data"},
			entry{name: "handler", typ: tar.TypeReg, mode: 0o755, body: "\x7fELF..."},
			entry{name: "lib/link", typ: tar.TypeSymlink, link: "../handler"},
			entry{name: "hard", typ: tar.TypeLink, link: "lib/data.txt"},
		)
		d2, err := Unpack(bytes.NewReader(arc2), dir2, DefaultLimits)
		if err != nil || d1 != d2 {
			t.Errorf("digests %s and %s (%v), want equal", d1, d2, err)
		}
	}
}

func TestUnpackRefuses(t *testing.T) {
	small := Limits{ArchiveBytes: 1 << 20, FileBytes: 1000, Entries: 5}
	tests := []struct {
		name    string
		arc     []byte
		lim     Limits
		wantErr string
	}{
		{"absolute", makeTar(t, false, entry{name: "/etc/passwd", typ: tar.TypeReg, body: "x"}), DefaultLimits, "absolute"},
		{"dotdot", makeTar(t, false, entry{name: "a/../../x", typ: tar.TypeReg, body: "x"}), DefaultLimits, ".."},
		{"symlink absolute", makeTar(t, false, entry{name: "l", typ: tar.TypeSymlink, link: "/etc/shadow"}), DefaultLimits, "absolute"},
		{"symlink escapes", makeTar(t, false, entry{name: "a/l", typ: tar.TypeSymlink, link: "../../etc"}), DefaultLimits, "leaves"},
		{"write through symlink", makeTar(t, false,
			entry{name: "d", typ: tar.TypeSymlink, link: "."},
			entry{name: "d/l", typ: tar.TypeSymlink, link: "../x"}), DefaultLimits, "not a directory"},
		{"dotdot after a link", makeTar(t, false,
			entry{name: "y", typ: tar.TypeSymlink, link: "."},
			entry{name: "x", typ: tar.TypeSymlink, link: "y/.."}), DefaultLimits, "after a name"},
		{"hard link outside", makeTar(t, false, entry{name: "h", typ: tar.TypeLink, link: "/etc/shadow"}), DefaultLimits, "absolute"},
		{"hard link to nothing", makeTar(t, false, entry{name: "h", typ: tar.TypeLink, link: "missing"}), DefaultLimits, "no earlier file"},
		{"device", makeTar(t, false, entry{name: "dev", typ: tar.TypeChar}), DefaultLimits, "not allowed"},
		{"fifo", makeTar(t, false, entry{name: "fifo", typ: tar.TypeFifo}), DefaultLimits, "not allowed"},
		{"duplicate", makeTar(t, false, entry{name: "a", typ: tar.TypeReg, body: "1"}, entry{name: "./a", typ: tar.TypeReg, body: "2"}), DefaultLimits, "twice"},
		{"files too large", makeTar(t, true, entry{name: "big", typ: tar.TypeReg, body: strings.Repeat("0", 5000)}), small, "over 1000 bytes"},
		{"archive too large", makeTar(t, false, entry{name: "big", typ: tar.TypeReg, body: strings.Repeat("0", 5000)}), Limits{ArchiveBytes: 2048}, "over 2048 bytes"},
		{"too many entries", makeTar(t, false,
			entry{name: "1", typ: tar.TypeReg}, entry{name: "2", typ: tar.TypeReg}, entry{name: "3", typ: tar.TypeReg},
			entry{name: "4", typ: tar.TypeReg}, entry{name: "5", typ: tar.TypeReg}, entry{name: "6", typ: tar.TypeReg}), small, "more than 5"},
		{"empty", makeTar(t, false), DefaultLimits, "no files"},
		{"not a tar", []byte("/etc is a path, not an archive"), DefaultLimits, "read archive"},
		{"bad gzip", []byte{0x1f, 0x8b, 0, 0}, DefaultLimits, "gzip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := Unpack(bytes.NewReader(tt.arc), dir, tt.lim)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
			}
			if tt.name == "files too large" || tt.name == "archive too large" || tt.name == "too many entries" {
				if !errors.Is(err, ErrTooLarge) {
					t.Errorf("err = %v, want ErrTooLarge", err)
				}
			}
		})
	}
}

func TestPackRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.MkdirAll(filepath.Join(src, ".git", "objects"), 0o755)
	os.WriteFile(filepath.Join(src, ".git", "HEAD"), []byte("ref"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh"), 0o755)
	os.WriteFile(filepath.Join(src, "notes.txt~"), []byte("backup"), 0o644)
	os.Symlink("sub/run.sh", filepath.Join(src, "run"))
	bin := filepath.Join(t.TempDir(), "built")
	os.WriteFile(bin, []byte("\x7fELF"), 0o755)

	a1, err := PackBytes(src, map[string]string{"handler": bin}, 0)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := PackBytes(src, map[string]string{"handler": bin}, 0)
	if !bytes.Equal(a1, a2) {
		t.Error("packing the same tree twice gave different archives")
	}
	dst := t.TempDir()
	if _, err := Unpack(bytes.NewReader(a1), dst, DefaultLimits); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"main.go", "sub/run.sh", "handler", "run"} {
		if _, err := os.Lstat(filepath.Join(dst, want)); err != nil {
			t.Errorf("%s missing after round trip: %v", want, err)
		}
	}
	for _, skipped := range []string{".git", "notes.txt~"} {
		if _, err := os.Lstat(filepath.Join(dst, skipped)); err == nil {
			t.Errorf("%s was packed", skipped)
		}
	}
	if st, _ := os.Stat(filepath.Join(dst, "handler")); st.Mode().Perm() != 0o755 {
		t.Errorf("handler mode %v", st.Mode())
	}
	if _, err := PackBytes(src, nil, 64); err == nil || !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "64 bytes") {
		t.Errorf("pack over the limit: %v", err)
	}
}

// FuzzUnpack unpacks arbitrary archives into a directory inside a
// sandbox directory. Unpack must never panic, refuse with ErrInvalid (the
// temporary directories do not fail to write), write nothing outside its
// directory (the sandbox holds only it afterwards), leave no link that
// leads out, no device, FIFO or set-id file, keep within its limits on
// entries and unpacked bytes, and give the same digest when it unpacks the
// same archive again.
func FuzzUnpack(f *testing.F) {
	f.Add(makeTar(f, false, entry{name: "handler", typ: tar.TypeReg, mode: 0o755, body: "x"}))
	f.Add(makeTar(f, true, entry{name: "a/b", typ: tar.TypeReg, body: "x"}, entry{name: "l", typ: tar.TypeSymlink, link: "a/b"}))
	f.Add(makeTar(f, false, entry{name: "d", typ: tar.TypeSymlink, link: "."}, entry{name: "d/x", typ: tar.TypeReg}))
	f.Add(makeTar(f, false, entry{name: "a/l", typ: tar.TypeSymlink, link: "../.."}, entry{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}))
	f.Add(makeTar(f, false, entry{name: "f", typ: tar.TypeReg, body: "1"}, entry{name: "h", typ: tar.TypeLink, link: "f"}, entry{name: "f/x", typ: tar.TypeReg}))
	f.Add(makeTar(f, false, entry{name: "./a/../../x", typ: tar.TypeReg}, entry{name: "dev", typ: tar.TypeChar}))
	f.Add(makeTar(f, true, entry{name: "big", typ: tar.TypeReg, body: strings.Repeat("z", 5000)}))
	f.Add([]byte{0x1f, 0x8b})
	const fileBytes, entries = 4096, 16
	lim := Limits{ArchiveBytes: 1 << 20, FileBytes: fileBytes, Entries: entries}
	f.Fuzz(func(t *testing.T, arc []byte) {
		sandbox := t.TempDir()
		dir := filepath.Join(sandbox, "code")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		digest, err := Unpack(bytes.NewReader(arc), dir, lim)
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("an unwritable archive error that is not ErrInvalid: %v", err)
		}
		if names, _ := os.ReadDir(sandbox); len(names) != 1 || names[0].Name() != "code" {
			t.Fatalf("Unpack wrote beside its directory: %v", names)
		}
		// Whatever was written stays under dir, and no symbolic link in it
		// points outside.
		var n int
		var size int64
		inodes := map[uint64]bool{}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || p == dir {
				return nil
			}
			n++
			if d.Type()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(p)
				abs := filepath.Clean(filepath.Join(filepath.Dir(p), target))
				if filepath.IsAbs(target) || !strings.HasPrefix(abs+"/", dir+"/") {
					t.Fatalf("link %s → %s leaves %s", p, target, dir)
				}
			}
			info, ierr := d.Info()
			if ierr != nil {
				return nil
			}
			if info.Mode()&(os.ModeDevice|os.ModeNamedPipe|os.ModeSocket|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
				t.Fatalf("%s has mode %v", p, info.Mode())
			}
			if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() && !inodes[st.Ino] {
				inodes[st.Ino] = true
				size += info.Size()
			}
			return nil
		})
		if n > entries || size > fileBytes {
			t.Fatalf("%d entries of %d bytes, over the limits of %d entries and %d bytes (err %v)", n, size, entries, fileBytes, err)
		}
		if err != nil {
			return
		}
		again := filepath.Join(sandbox, "again")
		if err := os.Mkdir(again, 0o755); err != nil {
			t.Fatal(err)
		}
		if d2, err := Unpack(bytes.NewReader(arc), again, lim); err != nil || d2 != digest {
			t.Fatalf("unpacking again: digest %s, %v; first %s", d2, err, digest)
		}
	})
}

// TestUnpackLimitsAreExact checks the limits as the disk sees them: no
// byte of a file past the unpacked-bytes limit is written, and the
// directories that deep names imply count as entries.
func TestUnpackLimitsAreExact(t *testing.T) {
	dir := t.TempDir()
	arc := makeTar(t, false, entry{name: "big", typ: tar.TypeReg, body: strings.Repeat("z", 5000)})
	if _, err := Unpack(bytes.NewReader(arc), dir, Limits{FileBytes: 4096}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("file over the limit: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "big")); err != nil || st.Size() > 4096 {
		t.Errorf("%d bytes written past a limit of 4096 (%v)", st.Size(), err)
	}

	deep := strings.Repeat("d/", 20)
	arc = makeTar(t, false, entry{name: deep + "x", typ: tar.TypeReg})
	if _, err := Unpack(bytes.NewReader(arc), t.TempDir(), Limits{Entries: 16}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("one entry implying 20 directories under a limit of 16 entries: %v", err)
	}
	if _, err := Unpack(bytes.NewReader(arc), t.TempDir(), Limits{Entries: 21}); err != nil {
		t.Errorf("one entry implying 20 directories under a limit of 21 entries: %v", err)
	}
}
