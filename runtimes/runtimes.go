// Package runtimes names the language runtimes kiln serves besides Go and
// carries, for each, what the rest of kiln needs from runtimes/<name>/: the
// recipe of its root filesystem (recipe.yaml), the bootstrap of its worker
// process (the language side of the executor's frame protocol) and the
// template `kiln init --runtime NAME` writes.
//
// The Go runtime is runtimes/go: its functions are static binaries that
// need no root filesystem but their own.
package runtimes

import (
	"io/fs"
	"slices"

	"github.com/kilnfx/kiln/runtimes/binary"
	"github.com/kilnfx/kiln/runtimes/cpp"
	"github.com/kilnfx/kiln/runtimes/csharp"
	"github.com/kilnfx/kiln/runtimes/java"
	"github.com/kilnfx/kiln/runtimes/node"
	"github.com/kilnfx/kiln/runtimes/python3"
	"github.com/kilnfx/kiln/runtimes/ruby"
)

// Runtime is one language runtime served by the generic executor.
type Runtime struct {
	// Name is the runtime's name in kiln.yaml and FunctionSpec.runtime.
	Name string
	// Recipe is the runtime's recipe.yaml: how its base root filesystem is
	// built from Debian packages.
	Recipe []byte
	// Worker is the source of the worker bootstrap the executor runs, or
	// nil for a runtime with no worker bootstrap (binary; cpp, whose program
	// is its own worker). For csharp it is compiled into the function's
	// program by kiln deploy.
	Worker []byte
	// Template holds the files `kiln init` writes, as text/template
	// sources named <file>.tmpl.
	Template fs.FS
	// Handler is the handler file a template's kiln.yaml names.
	Handler string
}

var all = []*Runtime{
	{Name: python3.Name, Recipe: python3.Recipe, Worker: python3.Worker, Template: python3.Template, Handler: python3.Handler},
	{Name: node.Name, Recipe: node.Recipe, Worker: node.Worker, Template: node.Template, Handler: node.Handler},
	{Name: ruby.Name, Recipe: ruby.Recipe, Worker: ruby.Worker, Template: ruby.Template, Handler: ruby.Handler},
	{Name: binary.Name, Recipe: binary.Recipe, Template: binary.Template, Handler: binary.Handler},
	{Name: cpp.Name, Recipe: cpp.Recipe, Template: cpp.Template, Handler: cpp.Handler},
	{Name: java.Name, Recipe: java.Recipe, Worker: java.WorkerSource(), Template: java.Template, Handler: java.Handler},
	{Name: csharp.Name, Recipe: csharp.Recipe, Worker: csharp.Worker, Template: csharp.Template, Handler: csharp.Handler},
}

// Get returns the named runtime, or nil when kiln has none of that name.
func Get(name string) *Runtime {
	for _, r := range all {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Names returns the names of the runtimes of this package, sorted.
func Names() []string {
	names := make([]string, 0, len(all))
	for _, r := range all {
		names = append(names, r.Name)
	}
	slices.Sort(names)
	return names
}
