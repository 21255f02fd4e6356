// Package binary carries the binary runtime's files: its root filesystem recipe,
// its worker bootstrap and its `kiln init` template.
package binary

import (
	"embed"
	"io/fs"
)

// Name is the runtime's name in kiln.yaml and FunctionSpec.runtime.
const Name = "binary"

// Handler is the handler file the template's kiln.yaml names.
const Handler = "handler.sh"

// Recipe is the recipe of the runtime's base root filesystem.
//
//go:embed recipe.yaml
var Recipe []byte

//go:embed template
var template embed.FS

// Template holds the files `kiln init` writes, as <file>.tmpl sources.
var Template, _ = fs.Sub(template, "template")
