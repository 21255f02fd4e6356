package worker

import (
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/kilnfx/kiln/runtimes/java"
)

var javaBuilt struct {
	sync.Mutex
	root string            // a temporary directory holding the builds, removed by TestMain
	dirs map[string]string // source → its function directory
}

func TestMain(m *testing.M) {
	code := m.Run()
	if javaBuilt.root != "" {
		os.RemoveAll(javaBuilt.root)
	}
	os.Exit(code)
}

// CompileJava builds source, the file Handler.java of a Java function,
// with java.Build (the flags and worker of kiln deploy) and returns the
// classes directory and the handler, Handler.class. Builds are kept for
// the test binary's life, so each source compiles once; the directory is
// shared and must not be written. Without javac or java the test is
// skipped, or fails when CI is set.
func CompileJava(t testing.TB, source string) (dir, handler string) {
	t.Helper()
	for _, command := range []string{java.Compiler, "java"} {
		if _, err := exec.LookPath(command); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (make setup installs it): %v", command, err)
			}
			t.Skipf("%s is not installed: %v", command, err)
		}
	}
	javaBuilt.Lock()
	defer javaBuilt.Unlock()
	if fn, ok := javaBuilt.dirs[source]; ok {
		return fn + "/.kiln/build/classes", java.Handler
	}
	if javaBuilt.root == "" {
		root, err := os.MkdirTemp("", "kiln-java-test-")
		if err != nil {
			t.Fatal(err)
		}
		javaBuilt.root, javaBuilt.dirs = root, make(map[string]string)
	}
	fn, err := os.MkdirTemp(javaBuilt.root, "fn-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fn+"/Handler.java", []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	classes, err := java.Build(t.Context(), fn)
	if err != nil {
		t.Fatal(err)
	}
	javaBuilt.dirs[source] = fn
	return classes, java.Handler
}
