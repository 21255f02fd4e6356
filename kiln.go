// Package kiln carries the source of kiln's Go function SDK so that a user's
// function can be built outside this repository, with no kiln module on any
// module proxy.
//
// The kiln binaries embed the SDK packages (executor/sdk and the executor
// protocol in proto/executorpb) together with kiln's go.mod and go.sum.
// WriteSDK writes them out as a small module tree named github.com/kilnfx/kiln,
// which a function's go.mod points at with a replace directive:
//
//	require github.com/kilnfx/kiln v0.0.0
//	replace github.com/kilnfx/kiln => ./.kiln/sdk
//
// GoSum gives the checksums of kiln's own dependencies, so that the function's
// build needs no checksum-database lookup for the SDK's dependencies.
package kiln

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// ModulePath is the module path of kiln and of the SDK module WriteSDK writes.
const ModulePath = "github.com/kilnfx/kiln"

// sdkGoVersion is the go directive of the SDK module when kiln's go.mod has
// none. WriteSDK otherwise uses kiln's: it is at least the highest go
// directive among kiln's dependencies (gRPC's is a full release version such
// as 1.26.0, which sorts above the language version 1.26).
const sdkGoVersion = "1.26"

// sdkSources are the directories, relative to the module root, whose Go
// sources make up the SDK.
var sdkSources = []string{"executor/sdk", "proto/executorpb"}

//go:embed go.mod executor/sdk/*.go proto/executorpb/*.go
var files embed.FS

//go:embed go.sum
var goSum []byte

// sdkDirect are the modules the SDK packages import directly; WriteSDK
// requires them at the versions of kiln's go.mod.
var sdkDirect = []string{
	"google.golang.org/grpc",
	"google.golang.org/protobuf",
}

// sdkIndirect are the other modules that provide packages the SDK builds
// with. WriteSDK pins them, as indirect requirements, at the versions kiln
// itself is built and tested with: without the pins the function's module
// would select the (older) versions gRPC asks for, which are generally not in
// the module cache nor in GoSum, so the first build would need a module proxy
// and the checksum database. TestSDKModuleDeps checks this list against
// `go list -deps`.
var sdkIndirect = []string{
	"golang.org/x/net",
	"golang.org/x/sys",
	"golang.org/x/text",
	"google.golang.org/genproto/googleapis/rpc",
}

// GoSum returns kiln's go.sum: the checksums of every module version kiln
// depends on, which include those the SDK needs. The caller must not modify
// the returned slice.
func GoSum() []byte { return goSum }

// WriteSDK writes the Go function SDK as a module tree rooted at dir, which it
// creates if needed: a go.mod for module github.com/kilnfx/kiln requiring
// only what the SDK packages need, at the versions in kiln's own go.mod, and
// the SDK sources (without tests) at their paths in the kiln repository.
// Existing files of the same names are overwritten; other files in dir are
// left alone.
func WriteSDK(dir string) error {
	if dir == "" {
		return errors.New("write sdk: empty directory")
	}
	mod, err := sdkGoMod()
	if err != nil {
		return fmt.Errorf("write sdk: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write sdk: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), mod, 0o644); err != nil {
		return fmt.Errorf("write sdk: %w", err)
	}
	for _, src := range sdkSources {
		entries, err := fs.ReadDir(files, src)
		if err != nil {
			return fmt.Errorf("write sdk: %w", err)
		}
		out := filepath.Join(dir, filepath.FromSlash(src))
		if err := os.MkdirAll(out, 0o755); err != nil {
			return fmt.Errorf("write sdk: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
				continue
			}
			b, err := files.ReadFile(path.Join(src, name))
			if err != nil {
				return fmt.Errorf("write sdk: %w", err)
			}
			if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
				return fmt.Errorf("write sdk: %w", err)
			}
		}
	}
	return nil
}

// sdkGoMod builds the SDK module's go.mod from kiln's embedded go.mod.
func sdkGoMod() ([]byte, error) {
	data, err := files.ReadFile("go.mod")
	if err != nil {
		return nil, err
	}
	kilnMod, err := modfile.ParseLax("go.mod", data, nil)
	if err != nil {
		return nil, fmt.Errorf("parse embedded go.mod: %w", err)
	}
	versions := make(map[string]string, len(kilnMod.Require))
	for _, r := range kilnMod.Require {
		versions[r.Mod.Path] = r.Mod.Version
	}
	f := new(modfile.File)
	if err := f.AddModuleStmt(ModulePath); err != nil {
		return nil, err
	}
	goVersion := sdkGoVersion
	if kilnMod.Go != nil {
		goVersion = kilnMod.Go.Version
	}
	if err := f.AddGoStmt(goVersion); err != nil {
		return nil, err
	}
	var reqs []*modfile.Require
	add := func(paths []string, indirect bool) error {
		for _, p := range paths {
			v, ok := versions[p]
			if !ok {
				return fmt.Errorf("embedded go.mod does not require %s", p)
			}
			r := &modfile.Require{Indirect: indirect}
			r.Mod.Path, r.Mod.Version = p, v
			reqs = append(reqs, r)
		}
		return nil
	}
	if err := add(sdkDirect, false); err != nil {
		return nil, err
	}
	if err := add(sdkIndirect, true); err != nil {
		return nil, err
	}
	f.SetRequireSeparateIndirect(reqs)
	f.Cleanup()
	out, err := f.Format()
	if err != nil {
		return nil, err
	}
	header := "// Code generated by kiln from its own go.mod. DO NOT EDIT.\n// It is rewritten by every `kiln deploy`.\n\n"
	return append([]byte(header), bytes.TrimLeft(out, "\n")...), nil
}
