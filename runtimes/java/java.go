// Package java carries the java runtime's files: its root filesystem
// recipe, its `kiln init` template, kiln's Java worker (the package kiln:
// kiln.Worker, kiln.Request, kiln.Response, kiln.Json) and the build
// `kiln deploy` runs.
//
// A Java function is compiled on the client: Build writes the worker's
// sources into the function's .kiln/sdk/ and compiles them with the
// function's own sources into .kiln/build/classes, which is the function's
// code. Its handler is the class file of the class whose
// `public static Object handle(kiln.Request req)` handles calls,
// Handler.class by default. In a container, kiln's generic executor runs
// kiln.Worker from the code directory; a stem cell runs it from source (the
// JVM compiles WorkerSource in memory while no call waits) and loads the
// function's classes on Init.
//
//	hello/
//	├── Handler.java
//	├── kiln.yaml
//	├── .gitignore            (.kiln/)
//	└── .kiln/
//	    ├── sdk/kiln/*.java   written by Build
//	    └── build/classes/    the classes Build returns
package java

import (
	"bytes"
	"embed"
	"io/fs"
	"path"
	"slices"
	"strings"
)

// Name is the runtime's name in kiln.yaml and FunctionSpec.runtime.
const Name = "java"

// Handler is the default handler: the class file of the class Handler.
const Handler = "Handler.class"

// WorkerClass is the worker's main class.
const WorkerClass = "kiln.Worker"

// Recipe is the recipe of the runtime's base root filesystem.
//
//go:embed recipe.yaml
var Recipe []byte

//go:embed sdk/kiln/*.java
var sdk embed.FS

// SDK holds the worker's sources, kiln/*.java.
var SDK, _ = fs.Sub(sdk, "sdk")

//go:embed template
var template embed.FS

// Template holds the files `kiln init` writes, as <file>.tmpl sources.
var Template, _ = fs.Sub(template, "template")

// WorkerSource returns the worker's sources as one file for the JVM's
// source-file mode (`java Worker.java`): one package clause, the imports
// of every file, then each file's classes, kiln.Worker's first (the class
// the launcher runs). Source-file mode allows several public classes in
// one file.
func WorkerSource() []byte {
	entries, _ := fs.ReadDir(SDK, "kiln")
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == "Worker.java":
			return -1
		case b == "Worker.java":
			return 1
		}
		return strings.Compare(a, b)
	})
	var imports []string
	var bodies bytes.Buffer
	for _, name := range names {
		src, _ := fs.ReadFile(SDK, path.Join("kiln", name))
		for _, line := range strings.SplitAfter(string(src), "\n") {
			switch {
			case strings.HasPrefix(line, "package "):
			case strings.HasPrefix(line, "import "):
				imports = append(imports, strings.TrimRight(line, "\n")+"\n")
			default:
				bodies.WriteString(line)
			}
		}
		bodies.WriteString("\n")
	}
	slices.Sort(imports)
	var out bytes.Buffer
	out.WriteString("package kiln;\n\n")
	for _, imp := range slices.Compact(imports) {
		out.WriteString(imp)
	}
	out.Write(bodies.Bytes())
	return out.Bytes()
}
