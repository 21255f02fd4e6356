// Package csharp carries the csharp runtime's files (its root filesystem
// recipe, its worker and its `kiln init` template) and builds a C#
// function: the client compiles the worker and the function's sources with
// mono's mcs into one program, handler.exe, which the container runs with
// mono as its worker (see Build).
package csharp

import (
	"embed"
	"io/fs"
)

// Name is the runtime's name in kiln.yaml and FunctionSpec.runtime.
const Name = "csharp"

// Handler is the program a function's code holds: the worker and the
// function compiled together by Build. kiln.yaml leaves the handler out.
const Handler = "handler.exe"

// Recipe is the recipe of the runtime's base root filesystem.
//
//go:embed recipe.yaml
var Recipe []byte

// Worker is the C# source of the worker: the C# side of the executor's
// frame protocol and the handler conventions. Build compiles it together
// with the function's sources.
//
//go:embed Worker.cs
var Worker []byte

//go:embed template
var template embed.FS

// Template holds the files `kiln init` writes, as <file>.tmpl sources.
var Template, _ = fs.Sub(template, "template")
