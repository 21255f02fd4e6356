package goruntime

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	"github.com/kilnfx/kiln/runtimes"
	"github.com/kilnfx/kiln/runtimes/cpp"
)

// ConfigFile is the name of a function's configuration file in its directory.
const ConfigFile = "kiln.yaml"

// Config is a function's kiln.yaml. Zero values mean the agent's defaults
// (see kilnv1.FunctionSpec); durations are Go durations such as "30s".
type Config struct {
	// Name is the function's name (required).
	Name string `yaml:"name"`
	// Runtime is the function's runtime: "go" (the default), "python3",
	// "node", "binary", "cpp" or "java".
	Runtime string `yaml:"runtime"`
	// Handler is the file of the function's directory that handles calls
	// (default: the runtime's, e.g. handler.py); not for go nor cpp, whose
	// handler is the binary kiln deploy builds.
	Handler string `yaml:"handler"`
	// Packages are Debian packages added to the runtime's root filesystem
	// (not for go).
	Packages []string `yaml:"packages"`
	// Memory is the container's memory limit in MiB.
	Memory int64 `yaml:"memory"`
	// Timeout bounds one call; it must be positive when set.
	Timeout string `yaml:"timeout"`
	// MinWarm is how many containers are kept started.
	MinWarm int `yaml:"min_warm"`
	// MaxContainers bounds the function's containers.
	MaxContainers int `yaml:"max_containers"`
	// Concurrency is the number of calls in flight per container.
	Concurrency int `yaml:"concurrency"`
	// FreezeAfter is the idle time before a container is frozen: "0s"
	// freezes at once; "never", -1 or any negative duration never freezes;
	// empty means the default.
	FreezeAfter string `yaml:"freeze_after"`
	// IdleTimeout is the idle time before a container is stopped.
	IdleTimeout string `yaml:"idle_timeout"`
	// CPU is the CPU quota in millicores; 0 means unlimited.
	CPU int64 `yaml:"cpu"`
	// Env is added to the function's environment.
	Env map[string]string `yaml:"env"`
	// RequireKey makes calls need a tenant's API key.
	RequireKey bool `yaml:"require_key"`
}

// LoadConfig reads and validates the kiln.yaml at path. Unknown keys,
// malformed or out-of-range values are errors that name the key.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// unknownFieldRE matches yaml.v3's message for a key with no Config field.
var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)

// ParseConfig parses and validates the content of a kiln.yaml.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("empty configuration")
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				msgs[i] = unknownFieldRE.ReplaceAllString(m, `unknown key "$1"`)
			}
			return Config{}, errors.New(strings.Join(msgs, "; "))
		}
		return Config{}, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("more than one YAML document")
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks c, returning an error naming the first bad key.
func (c Config) Validate() error {
	_, err := c.spec()
	return err
}

// Spec returns the FunctionSpec deploying c with code, the code archive
// holding the built function binary. It fails when c is invalid (see
// Validate) or code is empty.
func (c Config) Spec(code []byte) (*kilnv1.FunctionSpec, error) {
	if len(code) == 0 {
		return nil, errors.New("empty code archive")
	}
	s, err := c.spec()
	if err != nil {
		return nil, err
	}
	s.Code = code
	return s, nil
}

// ImageSpec converts c to the spec of a function running the imported image
// ref instead of code (runtime "image"): the handler, when set, replaces
// the image's command; runtime and packages must be unset.
func (c Config) ImageSpec(ref string) (*kilnv1.FunctionSpec, error) {
	if ref == "" {
		return nil, errors.New("image: empty reference")
	}
	if c.Runtime != "" && c.Runtime != "image" {
		return nil, fmt.Errorf("runtime: %q with an image: leave it out (an image is its own runtime)", c.Runtime)
	}
	if len(c.Packages) > 0 {
		return nil, errors.New("packages: an image brings its own files: leave them out")
	}
	plain := c
	plain.Runtime, plain.Handler = "", ""
	s, err := plain.spec()
	if err != nil {
		return nil, err
	}
	s.Runtime, s.Image, s.Handler = "image", ref, c.Handler
	return s, nil
}

// spec validates c and converts it, without the code path.
func (c Config) spec() (*kilnv1.FunctionSpec, error) {
	if c.Name == "" {
		return nil, errors.New("name: missing")
	}
	if err := ValidateName(c.Name); err != nil {
		return nil, fmt.Errorf("name: %w", err)
	}
	s := &kilnv1.FunctionSpec{Runtime: c.Runtime, Handler: c.Handler, Packages: c.Packages}
	switch {
	case c.Runtime == "":
		s.Runtime = Runtime
	case c.Runtime == Runtime:
	case runtimes.Get(c.Runtime) == nil:
		return nil, fmt.Errorf("runtime: %q is not supported (want one of: %s)", c.Runtime, strings.Join(append([]string{Runtime}, runtimes.Names()...), ", "))
	}
	if (s.Runtime == Runtime || s.Runtime == cpp.Name) && c.Handler != "" {
		return nil, fmt.Errorf("handler: the %s runtime's handler is the binary kiln deploy builds; leave it out", s.Runtime)
	}
	if s.Runtime == Runtime && len(c.Packages) > 0 {
		return nil, errors.New("packages: the go runtime runs a static binary alone: it takes no packages")
	}
	for _, p := range c.Packages {
		if p == "" || strings.ContainsAny(p, " \t\n/") {
			return nil, fmt.Errorf("packages: %q is not a Debian package name", p)
		}
	}
	var err error
	if s.MemoryMb, err = int32Of("memory", "MiB", c.Memory); err != nil {
		return nil, err
	}
	if s.CpuMillis, err = int32Of("cpu", "millicores", c.CPU); err != nil {
		return nil, err
	}
	s.RequireKey = c.RequireKey
	if s.MinWarm, err = count("min_warm", c.MinWarm); err != nil {
		return nil, err
	}
	if s.MaxContainers, err = count("max_containers", c.MaxContainers); err != nil {
		return nil, err
	}
	if s.Concurrency, err = count("concurrency", c.Concurrency); err != nil {
		return nil, err
	}
	if c.MaxContainers > 0 && c.MinWarm > c.MaxContainers {
		return nil, fmt.Errorf("min_warm: %d is above max_containers (%d)", c.MinWarm, c.MaxContainers)
	}
	if s.Timeout, err = duration("timeout", c.Timeout, false); err != nil {
		return nil, err
	}
	if s.Timeout != nil && s.Timeout.AsDuration() == 0 {
		return nil, errors.New("timeout: must be positive")
	}
	if s.FreezeAfter, err = duration("freeze_after", c.FreezeAfter, true); err != nil {
		return nil, err
	}
	if s.IdleTimeout, err = duration("idle_timeout", c.IdleTimeout, false); err != nil {
		return nil, err
	}
	if len(c.Env) > 0 {
		s.Env = make(map[string]string, len(c.Env))
		for k, v := range c.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return nil, fmt.Errorf("env: invalid variable name %q", k)
			}
			if strings.ContainsRune(v, 0) {
				return nil, fmt.Errorf("env: %s: value contains a NUL byte", k)
			}
			s.Env[k] = v
		}
	}
	return s, nil
}

// count checks a non-negative int32 setting.
func count(key string, n int) (int32, error) {
	return int32Of(key, "", int64(n))
}

// int32Of checks a non-negative int32 setting measured in unit.
func int32Of(key, unit string, n int64) (int32, error) {
	if unit != "" {
		unit = " " + unit
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: %d%s is negative", key, n, unit)
	}
	if n > math.MaxInt32 {
		return 0, fmt.Errorf("%s: %d%s is too large", key, n, unit)
	}
	return int32(n), nil
}

// duration parses a duration setting; empty means unset (nil).
func duration(key, s string, negativeOK bool) (*durationpb.Duration, error) {
	if s == "" {
		return nil, nil
	}
	if negativeOK && (s == "never" || s == "-1") {
		return durationpb.New(-time.Second), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if negativeOK {
			return nil, fmt.Errorf("%s: invalid duration %q (want e.g. 30s, 500ms, 5m, or never/-1)", key, s)
		}
		return nil, fmt.Errorf("%s: invalid duration %q (want e.g. 30s, 500ms, 5m)", key, s)
	}
	if d < 0 && !negativeOK {
		return nil, fmt.Errorf("%s: %s is negative", key, s)
	}
	return durationpb.New(d), nil
}
