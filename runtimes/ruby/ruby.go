// Package ruby carries the ruby runtime's files: its root filesystem recipe,
// its worker bootstrap and its `kiln init` template.
package ruby

import (
	"embed"
	"io/fs"
)

// Name is the runtime's name in kiln.yaml and FunctionSpec.runtime.
const Name = "ruby"

// Handler is the handler file the template's kiln.yaml names.
const Handler = "handler.rb"

// Recipe is the recipe of the runtime's base root filesystem.
//
//go:embed recipe.yaml
var Recipe []byte

// Worker is the source of the worker bootstrap the executor runs.
//
//go:embed worker.rb
var Worker []byte

//go:embed template
var template embed.FS

// Template holds the files `kiln init` writes, as <file>.tmpl sources.
var Template, _ = fs.Sub(template, "template")
