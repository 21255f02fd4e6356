package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"

	kilnv1 "github.com/kilnfx/kiln/proto/kiln/v1"
)

func TestImageEnv(t *testing.T) {
	got := imageEnv([]string{"PATH=/bin", "A=image", "B=image"}, []string{"A=fn", "C=fn"})
	want := []string{"PATH=/bin", "A=fn", "B=image", "C=fn"}
	if !slices.Equal(got, want) {
		t.Errorf("imageEnv = %q, want %q", got, want)
	}
}

func TestNormalizeImageSpec(t *testing.T) {
	for _, tt := range []struct {
		name  string
		spec  *kilnv1.FunctionSpec
		field string // "" when the spec is valid
	}{
		{"image alone", &kilnv1.FunctionSpec{Image: "hello:1"}, ""},
		{"runtime image", &kilnv1.FunctionSpec{Runtime: RuntimeImage, Image: "hello:1", Handler: "/bin/serve --fast"}, ""},
		{"runtime image without image", &kilnv1.FunctionSpec{Runtime: RuntimeImage}, "image"},
		{"image with another runtime", &kilnv1.FunctionSpec{Runtime: "python3", Image: "hello:1"}, "image"},
		{"image with code", &kilnv1.FunctionSpec{Image: "hello:1", Code: []byte("x")}, "code"},
		{"image with packages", &kilnv1.FunctionSpec{Image: "hello:1", Packages: []string{"jq"}}, "packages"},
		{"image reference with a space", &kilnv1.FunctionSpec{Image: "hello 1"}, "image"},
		{"handler with a NUL", &kilnv1.FunctionSpec{Image: "hello:1", Handler: "a\x00b"}, "handler"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := normalizeSpec(tt.spec)
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.Runtime != RuntimeImage || s.Handler != tt.spec.Handler {
					t.Errorf("runtime %q handler %q", s.Runtime, s.Handler)
				}
				return
			}
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.field+":") {
				t.Errorf("error %v, want an invalid argument naming %s", err, tt.field)
			}
		})
	}
}
