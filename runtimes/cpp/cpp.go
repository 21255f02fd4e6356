// Package cpp carries the cpp runtime's files: its root filesystem recipe,
// its `kiln init` template, kiln's header-only C++ SDK (kiln.hpp) and the
// build `kiln deploy` runs.
//
// A C++ function is compiled on the client, as a Go function is: Build
// writes the SDK into the function's .kiln/sdk/ and compiles handler.cpp
// into one static binary, .kiln/build/handler, which is the function's code.
// In a container, kiln's generic executor runs that binary as the worker:
// the SDK's kiln::serve speaks the worker side of the frame protocol
// (package executor/worker). There is no interpreter: the program is the
// handler, so the runtime has no worker bootstrap.
//
//	hello/
//	├── handler.cpp
//	├── kiln.yaml
//	├── .gitignore          (.kiln/)
//	└── .kiln/
//	    ├── sdk/kiln.hpp    written by Build
//	    └── build/handler   the static binary Build returns
package cpp

import (
	"embed"
	"io/fs"
)

// Name is the runtime's name in kiln.yaml and FunctionSpec.runtime.
const Name = "cpp"

// Handler is the function's handler in its code archive: the binary Build
// makes.
const Handler = "handler"

// Recipe is the recipe of the runtime's base root filesystem.
//
//go:embed recipe.yaml
var Recipe []byte

// SDK is kiln.hpp, the header-only C++17 SDK a function includes.
//
//go:embed kiln.hpp
var SDK []byte

//go:embed template
var template embed.FS

// Template holds the files `kiln init` writes, as <file>.tmpl sources.
var Template, _ = fs.Sub(template, "template")
