package tier_test

import (
	"testing"

	"github.com/strata-hsm/strata/workers/tier"
)

// TestTierFilter: include/exclude globs and sizes decide which files a
// tier takes.
func TestFilter(t *testing.T) {
	f, err := tier.NewFilter([]string{"projects/**", "*.iso"}, []string{"**/tmp/**", "*.part"}, 10, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rel  string
		size int64
		want bool
	}{
		{"projects/a/b.dat", 100, true},
		{"projects/b.dat", 9, false},      // too small
		{"projects/b.dat", 1001, false},   // too large
		{"other/b.dat", 100, false},       // not included
		{"deep/dir/x.iso", 100, true},     // base-name include
		{"projects/tmp/x", 100, false},    // excluded directory
		{"projects/a/x.part", 100, false}, // excluded base name
	} {
		if got := f.Wants(tc.rel, tc.size); got != tc.want {
			t.Errorf("Wants(%q, %d) = %v, want %v", tc.rel, tc.size, got, tc.want)
		}
	}
	if f, err := tier.NewFilter(nil, nil, 0, 0); f != nil || err != nil || !f.Wants("x", 0) {
		t.Fatal("a tier without filters must take every file")
	}
}

func TestRelPath(t *testing.T) {
	roots := []string{"/srv/a", "/srv/ab"}
	for p, want := range map[string]string{
		"/srv/a/x/y": "x/y", "/srv/ab/z": "z", "/srv/a": "", "/other/f": "other/f", "rel/f": "rel/f",
	} {
		if got := tier.RelPath(roots, p); got != want {
			t.Errorf("RelPath(%q) = %q, want %q", p, got, want)
		}
	}
}
