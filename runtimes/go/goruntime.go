// Package goruntime is kiln's Go runtime on the user's side: the template
// `kiln init --runtime go` writes, the kiln.yaml configuration of a function
// directory, and the build `kiln deploy` runs.
//
// A Go function directory holds a main package calling sdk.Serve, a go.mod
// that requires github.com/kilnfx/kiln v0.0.0 and replaces it with
// ./.kiln/sdk, and a kiln.yaml. Build writes the SDK source (carried by the
// kiln binary) into .kiln/sdk and compiles one static binary, so a function
// builds with no kiln module on any module proxy:
//
//	hello/
//	├── handler.go
//	├── go.mod
//	├── kiln.yaml
//	├── .gitignore          (.kiln/)
//	└── .kiln/
//	    ├── sdk/            written by Build
//	    └── build/handler   the static binary Build returns
package goruntime

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
)

// Runtime is the runtime name of Go functions in kiln.yaml and FunctionSpec.
const Runtime = "go"

// ErrInvalidName is returned (wrapped) for a function name that does not
// match NamePattern.
var ErrInvalidName = errors.New("invalid function name")

// NamePattern is the syntax of function names.
const NamePattern = `^[a-z][a-z0-9-]{0,62}$`

var nameRE = regexp.MustCompile(NamePattern)

// ValidateName returns nil when name is a valid function name and an error
// wrapping ErrInvalidName otherwise.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w %q: want a lowercase letter, then at most 62 lowercase letters, digits or '-'", ErrInvalidName, name)
	}
	return nil
}

//go:embed template/*.tmpl
var templates embed.FS

// Init writes a new Go function called name into dir: handler.go, go.mod,
// kiln.yaml and .gitignore. It creates dir if needed and refuses a dir that
// exists and is not empty (or is not a directory), so it never overwrites a
// file.
func Init(dir, name string) error {
	tmpl, err := fs.Sub(templates, "template")
	if err != nil {
		return err
	}
	return WriteTemplate(dir, name, tmpl)
}

// WriteTemplate writes a new function called name into dir from the
// text/template sources of tmpl: each file F.tmpl becomes F (gitignore.tmpl
// becomes .gitignore), executed with {{.Name}}. It creates dir if needed
// and refuses a dir that exists and is not empty (or is not a directory),
// so it never overwrites a file.
func WriteTemplate(dir, name string, tmpl fs.FS) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if dir == "" {
		return errors.New("init: empty directory")
	}
	if err := checkEmptyDir(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	data := struct{ Name string }{name}
	files, err := fs.Glob(tmpl, "*.tmpl")
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for _, f := range files {
		t, err := template.ParseFS(tmpl, f)
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		file := strings.TrimSuffix(f, ".tmpl")
		if file == "gitignore" {
			file = ".gitignore"
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return fmt.Errorf("init: %s: %w", file, err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(file, ".sh") {
			mode = 0o755
		}
		if err := writeNew(filepath.Join(dir, file), buf.Bytes(), mode); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	return nil
}

// checkEmptyDir returns nil when dir does not exist or is an empty directory.
func checkEmptyDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("init: %s exists and is not a directory", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != io.EOF {
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		return fmt.Errorf("init: directory %s is not empty", dir)
	}
	return nil
}

// writeNew creates path with data, failing if path exists.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
