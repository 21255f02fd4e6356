package worker

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kilnfx/kiln/runtimes/java"
)

// javaOptions are the JVM's options for the java worker, those that start
// it fastest (a worker's start is a cold call's): the serial collector
// (one core, a small heap), the C1 compiler only, the class data sharing
// archive read when there is one, and no perf data file (which would be
// written under /tmp). java.util is opened to the worker so that load can
// set the function's environment where System.getenv sees it.
var javaOptions = []string{
	"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-XX:-UsePerfData",
	"--add-opens=java.base/java.util=ALL-UNNAMED",
}

// javaCommand is the java worker's command line: kiln.Worker run from the
// classes of the code directory (the class path is set by prepareJava).
func javaCommand() []string {
	return append(append([]string{"java"}, javaOptions...), java.WorkerClass)
}

// prepareJava adapts the java worker's argv (javaCommand's) and env to
// cfg and returns what to run, and a function removing what it wrote.
// The java command is taken from PATH, else from /usr/lib/jvm (the
// runtime's root filesystem has no /usr/bin/java). In function mode the
// code directory is the class path (CLASSPATH): the function's code holds
// kiln.Worker, compiled at deploy. In stem mode there is no code yet: the
// worker's source is written into a new temporary directory and run in
// the JVM's source-file mode, compiled in memory before the stem says
// Ready; the function's classes are loaded on Init.
func prepareJava(cfg Config, argv, env []string) ([]string, []string, func(), error) {
	argv = slices.Clone(argv)
	if _, err := exec.LookPath(argv[0]); err != nil {
		found, _ := filepath.Glob("/usr/lib/jvm/*/bin/java")
		if len(found) == 0 {
			return nil, nil, nil, fmt.Errorf("no java command in PATH nor in /usr/lib/jvm: %w", err)
		}
		argv[0] = found[len(found)-1]
	}
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "CLASSPATH=") })
	if cfg.Handler != "" {
		return argv, append(env, "CLASSPATH="+cfg.CodeDir), func() {}, nil
	}
	dir, err := os.MkdirTemp("", "kiln-java-")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("java worker source: %w", err)
	}
	src := filepath.Join(dir, "Worker.java")
	if err := os.WriteFile(src, java.WorkerSource(), 0o444); err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, fmt.Errorf("java worker source: %w", err)
	}
	argv[len(argv)-1] = src
	return argv, env, func() { os.RemoveAll(dir) }, nil
}
