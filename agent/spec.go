package agent

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
	"github.com/kilnfx/kiln/runtimes"
)

// Defaults and bounds of a FunctionSpec.
const (
	DefaultMemoryMB      = 128
	MinMemoryMB          = 16
	MaxMemoryMB          = 64 << 10
	DefaultTimeout       = 30 * time.Second
	MaxTimeout           = time.Hour
	DefaultMaxContainers = 10
	MaxMaxContainers     = 1000
	DefaultConcurrency   = 1
	MaxConcurrency       = 1000
	DefaultFreezeAfter   = 50 * time.Millisecond
	DefaultIdleTimeout   = 10 * time.Minute
	DefaultHandler       = "handler"
)

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// ValidateName reports whether name is a valid function name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q must match %s", ErrInvalidArgument, name, nameRE)
	}
	return nil
}

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
var handlerRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$`)

// normalizeSpec checks spec and returns a copy with every default filled in.
// Errors wrap ErrInvalidArgument and name the field.
func normalizeSpec(spec *kilnv1.FunctionSpec) (*kilnv1.FunctionSpec, error) {
	if spec == nil {
		return nil, fmt.Errorf("%w: spec: required", ErrInvalidArgument)
	}
	s := proto.Clone(spec).(*kilnv1.FunctionSpec)
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidArgument, field, fmt.Sprintf(format, args...))
	}
	if s.Image != "" && s.Runtime == "" {
		s.Runtime = RuntimeImage
	}
	switch rt := runtimes.Get(s.Runtime); {
	case s.Runtime == RuntimeImage:
		if s.Image == "" {
			return nil, bad("image", "required with runtime %s (a reference of an imported image)", RuntimeImage)
		}
		if len(s.Image) > 1024 || strings.ContainsAny(s.Image, " \t\n\x00") {
			return nil, bad("image", "%.80q is not an image reference", s.Image)
		}
		if len(s.Packages) > 0 {
			return nil, bad("packages", "an image brings its own files: it takes no packages")
		}
		if len(s.Code) > 0 {
			return nil, bad("code", "an image function runs the image's files: it takes no code")
		}
		if len(s.Handler) > MaxImageHandlerBytes || strings.IndexByte(s.Handler, 0) >= 0 {
			return nil, bad("handler", "an image's command line of at most %d bytes, without NUL", MaxImageHandlerBytes)
		}
	case s.Image != "":
		return nil, bad("image", "an image runs as runtime %s (or an empty runtime), not %q", RuntimeImage, s.Runtime)
	case s.Runtime == "go":
		if s.Handler == "" {
			s.Handler = DefaultHandler
		}
		if len(s.Packages) > 0 {
			return nil, bad("packages", "the go runtime runs a static binary alone: it takes no packages")
		}
	case s.Runtime == "":
		return nil, bad("runtime", "required (one of: %s; or image set)", strings.Join(RuntimeNames(), ", "))
	case rt == nil:
		return nil, bad("runtime", "unknown runtime %q (one of: %s)", s.Runtime, strings.Join(RuntimeNames(), ", "))
	default:
		if s.Handler == "" {
			s.Handler = rt.Handler
		}
		if len(s.Packages) > 0 {
			if _, err := recipeOf(s.Runtime, s.Packages); err != nil {
				return nil, err
			}
			s.Packages = slices.Compact(slices.Sorted(slices.Values(s.Packages)))
		}
	}
	if s.Runtime != RuntimeImage && (!handlerRE.MatchString(s.Handler) || strings.Contains(s.Handler, "..")) {
		return nil, bad("handler", "%q is not a relative path inside the code directory", s.Handler)
	}
	switch {
	case s.MemoryMb == 0:
		s.MemoryMb = DefaultMemoryMB
	case s.MemoryMb < MinMemoryMB || s.MemoryMb > MaxMemoryMB:
		return nil, bad("memory_mb", "%d is outside %d..%d", s.MemoryMb, MinMemoryMB, MaxMemoryMB)
	}
	if s.Timeout == nil {
		s.Timeout = durationpb.New(DefaultTimeout)
	} else if err := s.Timeout.CheckValid(); err != nil {
		return nil, bad("timeout", "%v", err)
	} else if d := s.Timeout.AsDuration(); d <= 0 || d > MaxTimeout {
		return nil, bad("timeout", "%v is outside (0, %v]", d, MaxTimeout)
	}
	for k := range s.Env {
		if !envKeyRE.MatchString(k) {
			return nil, bad("env", "%q is not a valid variable name", k)
		}
		if strings.HasPrefix(k, "KILN_") {
			return nil, bad("env", "%q: the KILN_ prefix is reserved", k)
		}
	}
	switch {
	case s.MaxContainers == 0:
		s.MaxContainers = DefaultMaxContainers
	case s.MaxContainers < 0 || s.MaxContainers > MaxMaxContainers:
		return nil, bad("max_containers", "%d is outside 1..%d", s.MaxContainers, MaxMaxContainers)
	}
	if s.MinWarm < 0 || s.MinWarm > s.MaxContainers {
		return nil, bad("min_warm", "%d is outside 0..max_containers (%d)", s.MinWarm, s.MaxContainers)
	}
	switch {
	case s.Concurrency == 0:
		s.Concurrency = DefaultConcurrency
	case s.Concurrency < 0 || s.Concurrency > MaxConcurrency:
		return nil, bad("concurrency", "%d is outside 1..%d", s.Concurrency, MaxConcurrency)
	}
	if s.FreezeAfter == nil {
		s.FreezeAfter = durationpb.New(DefaultFreezeAfter)
	} else if err := s.FreezeAfter.CheckValid(); err != nil {
		return nil, bad("freeze_after", "%v", err)
	}
	if s.IdleTimeout == nil {
		s.IdleTimeout = durationpb.New(DefaultIdleTimeout)
	} else if err := s.IdleTimeout.CheckValid(); err != nil {
		return nil, bad("idle_timeout", "%v", err)
	} else if s.IdleTimeout.AsDuration() < 0 {
		return nil, bad("idle_timeout", "must not be negative")
	}
	if s.CpuMillis < 0 || s.CpuMillis > 1<<20 {
		return nil, bad("cpu_millis", "%d is outside 0..%d", s.CpuMillis, 1<<20)
	}
	return s, nil
}

// containerKey hashes the settings that need a new container when they
// change: the code revision, memory, CPU and environment.
func containerKey(revision string, s *kilnv1.FunctionSpec) string {
	h := sha256.New()
	h.Write([]byte(revision))
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(s.MemoryMb))
	h.Write(b[:])
	binary.LittleEndian.PutUint64(b[:], uint64(s.CpuMillis))
	h.Write(b[:])
	keys := make([]string, 0, len(s.Env))
	for k := range s.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		h.Write([]byte(k + "=" + s.Env[k] + "\x00"))
	}
	h.Write([]byte(s.Handler))
	h.Write([]byte("\x00" + s.Runtime + "\x00" + strings.Join(s.Packages, " ")))
	if s.Image != "" {
		h.Write([]byte("\x00" + s.Image))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
