package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultMirror is the Debian mirror a recipe that names none is built from.
const DefaultMirror = "http://deb.debian.org/debian"

// ErrInvalidRecipe is wrapped by every error of ParseRecipe and With.
var ErrInvalidRecipe = errors.New("invalid recipe")

// Recipe says how a runtime's base root filesystem is built: which Debian
// suite, mmdebstrap variant, mirror and packages, and which paths are
// deleted from the tree afterwards. A Recipe from ParseRecipe or With is
// valid and canonical (packages and remove globs sorted, without
// duplicates); it is not modified afterwards, so it is safe to share.
type Recipe struct {
	// Name is the runtime's name: the first part of its builds' directory
	// names.
	Name string
	// Suite is the Debian suite or codename, such as bookworm.
	Suite string
	// Variant is an mmdebstrap variant: which package set is installed
	// besides Packages, and whether maintainer scripts run (not for
	// extract).
	Variant string
	// Mirror is the Debian mirror's URL.
	Mirror string
	// Packages are the Debian packages installed, with their dependencies.
	Packages []string
	// Remove are the globs (absolute paths inside the tree, path.Match
	// syntax) deleted after the build.
	Remove []string
}

// Variants are the mmdebstrap variants a recipe may name.
var Variants = []string{"extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap", "standard"}

var (
	// runtimeNameRE: a runtime's name, which is part of directory names.
	runtimeNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
	// packageNameRE is Debian policy 5.6.7: lower case letters, digits,
	// plus, minus and dots, at least two characters, starting with an
	// alphanumeric character.
	packageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	// suiteRE: a suite or codename (bookworm, stable, bookworm-backports).
	suiteRE = regexp.MustCompile(`^[a-z][a-z0-9.-]{0,63}$`)
)

// recipeKeys are the keys of recipe.yaml, in the order they are documented.
var recipeKeys = []string{"suite", "variant", "mirror", "packages", "remove"}

// ParseRecipe parses recipe.yaml of the runtime name. It is strict: an
// unknown or repeated key, a missing suite, variant or packages, an empty
// package list, a package name that is not Debian's syntax, a mirror that is
// not an http(s) or file URL and a remove glob that is not an absolute,
// clean path are errors naming the key; they wrap ErrInvalidRecipe. The
// mirror defaults to DefaultMirror.
func ParseRecipe(name string, data []byte) (*Recipe, error) {
	if !runtimeNameRE.MatchString(name) {
		return nil, fmt.Errorf("%w: runtime name %q: want lower case letters, digits, '_' and '-', at most 32", ErrInvalidRecipe, name)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: recipe %s: %s", ErrInvalidRecipe, name, fmt.Sprintf(format, args...))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fail("%v", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fail("want a mapping of %s", strings.Join(recipeKeys, ", "))
	}
	r := &Recipe{Name: name, Mirror: DefaultMirror}
	seen := map[string]bool{}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		key := k.Value
		if !slices.Contains(recipeKeys, key) {
			return nil, fail("line %d: unknown key %q (known: %s)", k.Line, key, strings.Join(recipeKeys, ", "))
		}
		if seen[key] {
			return nil, fail("line %d: key %q repeated", k.Line, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "suite":
			r.Suite, err = scalar(v)
		case "variant":
			r.Variant, err = scalar(v)
		case "mirror":
			r.Mirror, err = scalar(v)
		case "packages":
			r.Packages, err = list(v)
		case "remove":
			r.Remove, err = list(v)
		}
		if err != nil {
			return nil, fail("line %d: key %q: %v", v.Line, key, err)
		}
	}
	for _, key := range []string{"suite", "variant", "packages"} {
		if !seen[key] {
			return nil, fail("key %q missing", key)
		}
	}
	if err := r.validate(); err != nil {
		return nil, fail("%v", err)
	}
	r.Packages = sortedSet(r.Packages)
	r.Remove = sortedSet(r.Remove)
	return r, nil
}

// scalar returns the value of a scalar node.
func scalar(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", errors.New("want a single value")
	}
	return n.Value, nil
}

// list returns the values of a sequence of scalars.
func list(n *yaml.Node) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errors.New("want a list")
	}
	out := make([]string, 0, len(n.Content))
	for _, e := range n.Content {
		if e.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: want a single value", e.Line)
		}
		out = append(out, e.Value)
	}
	return out, nil
}

// validate checks every field but Name; its errors name the key.
func (r *Recipe) validate() error {
	if !suiteRE.MatchString(r.Suite) {
		return fmt.Errorf("key \"suite\": %q is not a Debian suite name", r.Suite)
	}
	if !slices.Contains(Variants, r.Variant) {
		return fmt.Errorf("key \"variant\": %q is not one of %s", r.Variant, strings.Join(Variants, ", "))
	}
	if err := checkMirror(r.Mirror); err != nil {
		return fmt.Errorf("key \"mirror\": %v", err)
	}
	if len(r.Packages) == 0 {
		return errors.New("key \"packages\": empty")
	}
	if err := checkPackages(r.Packages); err != nil {
		return fmt.Errorf("key \"packages\": %v", err)
	}
	for _, g := range r.Remove {
		if err := checkGlob(g); err != nil {
			return fmt.Errorf("key \"remove\": %v", err)
		}
	}
	return nil
}

// checkMirror accepts an http, https or file URL with no query, fragment
// or blanks (mmdebstrap puts it on a sources.list line).
func checkMirror(mirror string) error {
	u, err := url.Parse(mirror)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file":
		return fmt.Errorf("%q: want an http, https or file URL", mirror)
	case u.Scheme != "file" && u.Host == "":
		return fmt.Errorf("%q: no host", mirror)
	case u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(mirror, " \t\n"):
		return fmt.Errorf("%q: no query, fragment or blanks allowed", mirror)
	}
	return nil
}

// checkPackages checks each name against Debian's package name syntax.
func checkPackages(pkgs []string) error {
	for _, p := range pkgs {
		if !packageNameRE.MatchString(p) {
			return fmt.Errorf("%q is not a Debian package name (lower case letters, digits, '+', '-', '.', at least two characters)", p)
		}
	}
	return nil
}

// checkGlob accepts an absolute, clean path.Match pattern that is not the
// root itself.
func checkGlob(g string) error {
	if !strings.HasPrefix(g, "/") || path.Clean(g) != g || g == "/" {
		return fmt.Errorf("%q: want an absolute, clean path below /", g)
	}
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Errorf("%q: %v", g, err)
	}
	return nil
}

// With returns the recipe with extra packages added (a function's
// `packages:` in kiln.yaml), validated, sorted and without duplicates. The
// receiver is not modified; with no extra packages With returns a copy.
// Its errors wrap ErrInvalidRecipe.
func (r *Recipe) With(extra []string) (*Recipe, error) {
	if err := checkPackages(extra); err != nil {
		return nil, fmt.Errorf("%w: recipe %s: extra packages: %v", ErrInvalidRecipe, r.Name, err)
	}
	w := *r
	w.Packages = sortedSet(append(slices.Clone(r.Packages), extra...))
	w.Remove = slices.Clone(r.Remove)
	return &w, nil
}

// buildFormat names how Store builds a tree from a recipe (the mmdebstrap
// options it adds, the cleaning afterwards); it is part of the hash, so a
// change to it gives every recipe a new build.
const buildFormat = "kiln-rootfs/1"

// Hash returns a hex digest (16 characters) of the recipe's canonical form:
// the same recipe gives the same hash, any change to a field (or to how
// Store builds) a new one. Order and duplicates of Packages and Remove do
// not count.
func (r *Recipe) Hash() string {
	canonical, _ := json.Marshal(struct {
		Format, Name, Suite, Variant, Mirror string
		Packages, Remove                     []string
	}{buildFormat, r.Name, r.Suite, r.Variant, r.Mirror, sortedSet(r.Packages), sortedSet(r.Remove)})
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:8])
}

// sortedSet returns the strings sorted and without duplicates, in a new
// slice.
func sortedSet(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}
