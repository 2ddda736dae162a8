// Package glob matches Strata's include and exclude patterns: the scanner's
// policy (which files to archive) and each tier's replication filter
// (which files a tier takes) read them alike.
//
// A pattern without "/" matches a file's base name; a pattern with "/"
// matches the path relative to its hot tree, segment by segment, with
// path.Match inside a segment and "**" standing for any number of
// segments. A leading or trailing "/" is ignored. Matching never fails: a
// Set holds only patterns that Compile checked.
package glob

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

type pattern struct {
	base bool     // no "/": match the base name only
	segs []string // "/"-separated segments; "**" matches any number
}

// Set is a compiled list of patterns. The zero Set is empty.
type Set struct{ ps []pattern }

// Check reports whether p is a valid pattern.
func Check(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("pattern %q: contains NUL", p)
	}
	for _, s := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if s == "**" {
			continue
		}
		if _, err := path.Match(s, ""); err != nil {
			return fmt.Errorf("pattern %q: %w", p, err)
		}
	}
	return nil
}

// Compile checks and compiles patterns.
func Compile(ps []string) (Set, error) {
	s := Set{ps: make([]pattern, 0, len(ps))}
	for _, p := range ps {
		if err := Check(p); err != nil {
			return Set{}, err
		}
		if !strings.Contains(p, "/") {
			s.ps = append(s.ps, pattern{base: true, segs: []string{p}})
			continue
		}
		s.ps = append(s.ps, pattern{segs: strings.Split(strings.Trim(p, "/"), "/")})
	}
	return s, nil
}

// Empty reports whether the set has no pattern.
func (s Set) Empty() bool { return len(s.ps) == 0 }

// Match reports whether rel (a path relative to its hot tree,
// "/"-separated) matches one of the patterns.
func (s Set) Match(rel string) bool { return s.MatchName(rel, path.Base(rel)) }

// MatchName is Match for a caller that already has rel's base name.
func (s Set) MatchName(rel, name string) bool {
	for _, p := range s.ps {
		if p.base {
			if ok, _ := path.Match(p.segs[0], name); ok {
				return true
			}
			continue
		}
		if matchSegs(p.segs, strings.Split(rel, "/")) {
			return true
		}
	}
	return false
}

func matchSegs(pat, segs []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for len(pat) > 0 && pat[0] == "**" {
				pat = pat[1:]
			}
			if len(pat) == 0 {
				return true
			}
			for i := range len(segs) + 1 {
				if matchSegs(pat, segs[i:]) {
					return true
				}
			}
			return false
		}
		if len(segs) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], segs[0]); !ok {
			return false
		}
		pat, segs = pat[1:], segs[1:]
	}
	return len(segs) == 0
}
