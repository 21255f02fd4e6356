//go:build !linux

package journal

import "os"

// lockDir opens the lock file at path. Outside Linux the directory is not
// locked.
func lockDir(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
}

func fdatasync(f *os.File) error { return f.Sync() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
