package rootfs

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const goodRecipe = `
suite: bookworm
variant: extract
packages: [jq, dash, jq]
remove:
  - /var/log/*
  - /usr/share/doc/*
`

func TestParseRecipe(t *testing.T) {
	r, err := ParseRecipe("tiny", []byte(goodRecipe))
	if err != nil {
		t.Fatal(err)
	}
	want := &Recipe{
		Name: "tiny", Suite: "bookworm", Variant: "extract", Mirror: DefaultMirror,
		Packages: []string{"dash", "jq"},
		Remove:   []string{"/usr/share/doc/*", "/var/log/*"},
	}
	if !equalRecipes(r, want) {
		t.Errorf("ParseRecipe = %+v, want %+v", r, want)
	}
}

func TestParseRecipeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, runtime, data, want string
	}{
		{"unknown key", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq]\npackage: [sed]\n", `unknown key "package"`},
		{"repeated key", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq]\nsuite: trixie\n", `key "suite" repeated`},
		{"bad package name", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq, Foo_Bar]\n", `key "packages": "Foo_Bar"`},
		{"option as package", "tiny", "suite: bookworm\nvariant: extract\npackages: [--foo]\n", `key "packages": "--foo"`},
		{"one-letter package", "tiny", "suite: bookworm\nvariant: extract\npackages: [a]\n", `key "packages": "a"`},
		{"empty packages", "tiny", "suite: bookworm\nvariant: extract\npackages: []\n", `key "packages": empty`},
		{"missing packages", "tiny", "suite: bookworm\nvariant: extract\n", `key "packages" missing`},
		{"packages not a list", "tiny", "suite: bookworm\nvariant: extract\npackages: jq\n", `key "packages": want a list`},
		{"missing suite", "tiny", "variant: extract\npackages: [jq]\n", `key "suite" missing`},
		{"bad suite", "tiny", "suite: Book Worm\nvariant: extract\npackages: [jq]\n", `key "suite"`},
		{"bad variant", "tiny", "suite: bookworm\nvariant: tiny\npackages: [jq]\n", `key "variant": "tiny"`},
		{"bad mirror", "tiny", "suite: bookworm\nvariant: extract\nmirror: ftp://x/debian\npackages: [jq]\n", `key "mirror"`},
		{"relative glob", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq]\nremove: [usr/share/doc]\n", `key "remove"`},
		{"escaping glob", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq]\nremove: [/usr/../../etc]\n", `key "remove"`},
		{"root glob", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq]\nremove: [/]\n", `key "remove"`},
		{"bad pattern", "tiny", "suite: bookworm\nvariant: extract\npackages: [jq]\nremove: [\"/usr/[\"]\n", `key "remove"`},
		{"not a mapping", "tiny", "- jq\n", "want a mapping"},
		{"empty", "tiny", "", "want a mapping"},
		{"bad runtime name", "../x", "suite: bookworm\nvariant: extract\npackages: [jq]\n", "runtime name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecipe(tc.runtime, []byte(tc.data))
			if err == nil {
				t.Fatalf("ParseRecipe succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidRecipe) {
				t.Errorf("ParseRecipe error = %v, want ErrInvalidRecipe containing %q", err, tc.want)
			}
		})
	}
}

func TestHash(t *testing.T) {
	base, err := ParseRecipe("tiny", []byte(goodRecipe))
	if err != nil {
		t.Fatal(err)
	}
	h := base.Hash()
	if len(h) != 16 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("Hash = %q, want 16 hex digits", h)
	}
	same, err := ParseRecipe("tiny", []byte("packages: [dash, jq]\nremove: [/var/log/*, /usr/share/doc/*]\nvariant: extract\nsuite: bookworm\nmirror: "+DefaultMirror+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if same.Hash() != h {
		t.Errorf("the same recipe written differently hashes to %s, want %s", same.Hash(), h)
	}
	for _, tc := range []struct {
		name   string
		change func(*Recipe)
	}{
		{"name", func(r *Recipe) { r.Name = "other" }},
		{"suite", func(r *Recipe) { r.Suite = "trixie" }},
		{"variant", func(r *Recipe) { r.Variant = "custom" }},
		{"mirror", func(r *Recipe) { r.Mirror = "http://ftp.de.debian.org/debian" }},
		{"package added", func(r *Recipe) { r.Packages = append(r.Packages, "sed") }},
		{"package removed", func(r *Recipe) { r.Packages = r.Packages[:1] }},
		{"glob added", func(r *Recipe) { r.Remove = append(r.Remove, "/var/cache/*") }},
		{"globs gone", func(r *Recipe) { r.Remove = nil }},
		{"package moved to globs", func(r *Recipe) { r.Packages = []string{"dash"}; r.Remove = append(r.Remove, "jq") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *base
			c.Packages, c.Remove = slices.Clone(base.Packages), slices.Clone(base.Remove)
			tc.change(&c)
			if c.Hash() == h {
				t.Errorf("changing the %s keeps the hash %s", tc.name, h)
			}
		})
	}
}

func TestWith(t *testing.T) {
	base, err := ParseRecipe("tiny", []byte(goodRecipe))
	if err != nil {
		t.Fatal(err)
	}
	w, err := base.With([]string{"sed", "jq", "bc", "sed"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"bc", "dash", "jq", "sed"}; !slices.Equal(w.Packages, want) {
		t.Errorf("With: packages %v, want %v", w.Packages, want)
	}
	if w.Hash() == base.Hash() {
		t.Error("With extra packages keeps the hash")
	}
	if want := []string{"dash", "jq"}; !slices.Equal(base.Packages, want) {
		t.Errorf("With changed the receiver's packages to %v", base.Packages)
	}
	same, err := base.With([]string{"jq"})
	if err != nil {
		t.Fatal(err)
	}
	if same.Hash() != base.Hash() {
		t.Error("With a package the recipe has changes the hash")
	}
	if _, err := base.With([]string{"ok", "rm -rf"}); err == nil || !errors.Is(err, ErrInvalidRecipe) || !strings.Contains(err.Error(), `"rm -rf"`) {
		t.Errorf("With a bad name: error %v, want ErrInvalidRecipe naming it", err)
	}
}

func FuzzParseRecipe(f *testing.F) {
	f.Add([]byte(goodRecipe))
	f.Add([]byte("suite: bookworm\nvariant: extract\npackages: [jq]\nremove: [\"/a/*\"]\n"))
	f.Add([]byte("{suite: [1], packages: {a: b}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRecipe("fuzz", data)
		if err != nil {
			return
		}
		if err := r.validate(); err != nil {
			t.Fatalf("ParseRecipe returned an invalid recipe: %v", err)
		}
		if !slices.IsSorted(r.Packages) || len(slices.Compact(slices.Clone(r.Packages))) != len(r.Packages) {
			t.Fatalf("packages not a sorted set: %v", r.Packages)
		}
		again, err := r.With(nil)
		if err != nil || again.Hash() != r.Hash() {
			t.Fatalf("With(nil) = %v: hash %s, want %s", err, again.Hash(), r.Hash())
		}
	})
}

func equalRecipes(a, b *Recipe) bool {
	return a.Name == b.Name && a.Suite == b.Suite && a.Variant == b.Variant && a.Mirror == b.Mirror &&
		slices.Equal(a.Packages, b.Packages) && slices.Equal(a.Remove, b.Remove)
}
