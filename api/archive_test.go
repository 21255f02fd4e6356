package api

import (
	"archive/tar"
	"bytes"
	"os"
	"sync"
	"testing"
)

var (
	selfOnce sync.Once
	selfTar  []byte
	selfErr  error
)

// selfArchive returns an uncompressed code archive holding the test binary
// (an ELF file) as the handler, made once.
func selfArchive(tb testing.TB) []byte {
	tb.Helper()
	selfOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			selfErr = err
			return
		}
		b, err := os.ReadFile(exe)
		if err != nil {
			selfErr = err
			return
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if selfErr = tw.WriteHeader(&tar.Header{Name: "handler", Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); selfErr != nil {
			return
		}
		tw.Write(b)
		selfErr = tw.Close()
		selfTar = buf.Bytes()
	})
	if selfErr != nil {
		tb.Fatal(selfErr)
	}
	return selfTar
}
