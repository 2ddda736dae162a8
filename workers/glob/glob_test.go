package glob

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		pat, rel string
		want     bool
	}{
		{"*.log", "a.log", true},
		{"*.log", "x/y/a.log", true},
		{"*.log", "x/a.log.gz", false},
		{"cache/**", "cache", true},
		{"cache/**", "cache/a/b", true},
		{"cache/**", "x/cache/a", false},
		{"**/cache/**", "x/cache/a", true},
		{"projects/**/raw/*.tif", "projects/raw/a.tif", true},
		{"projects/**/raw/*.tif", "projects/p1/2024/raw/a.tif", true},
		{"projects/**/raw/*.tif", "projects/p1/raw/sub/a.tif", false},
		{"/top/*.bin", "top/a.bin", true},
		{"top/*.bin", "top/sub/a.bin", false},
		{"**", "anything/at/all", true},
	}
	for _, c := range cases {
		name := c.rel[strings.LastIndex(c.rel, "/")+1:]
		set, err := Compile([]string{c.pat})
		if err != nil {
			t.Fatal(err)
		}
		if got := set.MatchName(c.rel, name); got != c.want {
			t.Errorf("%q vs %q: got %v", c.pat, c.rel, got)
		}
	}
}

func TestCheck(t *testing.T) {
	for _, p := range []string{"", "a[", "x/[/y", "a\x00b"} {
		if _, err := Compile([]string{p}); err == nil {
			t.Errorf("%q: compiled, want an error", p)
		}
	}
	for _, p := range []string{"*.log", "/top/*.bin", "**", "a/**/b"} {
		if err := Check(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	if s, _ := Compile(nil); !s.Empty() || s.Match("a") {
		t.Error("an empty set must match nothing")
	}
}
