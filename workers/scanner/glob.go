package scanner

import (
	"errors"
	"path"
	"strings"
)

// glob is a compiled Include/Exclude pattern (see Policy.Include).
type glob struct {
	base bool     // no "/": match the base name only
	segs []string // "/"-separated segments; "**" matches any number
}

func checkGlob(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	for _, s := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if s == "**" {
			continue
		}
		if _, err := path.Match(s, ""); err != nil {
			return err
		}
	}
	return nil
}

func compileGlobs(ps []string) []glob {
	gs := make([]glob, 0, len(ps))
	for _, p := range ps {
		if !strings.Contains(p, "/") {
			gs = append(gs, glob{base: true, segs: []string{p}})
			continue
		}
		gs = append(gs, glob{segs: strings.Split(strings.Trim(p, "/"), "/")})
	}
	return gs
}

// matchAny reports whether rel (relative to its root, "/"-separated) or, for
// base-name patterns, name matches one of gs.
func matchAny(gs []glob, rel, name string) bool {
	for _, g := range gs {
		if g.base {
			if ok, _ := path.Match(g.segs[0], name); ok {
				return true
			}
			continue
		}
		if matchSegs(g.segs, strings.Split(rel, "/")) {
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

// Globs is a compiled set of include/exclude patterns, as Policy.Include
// reads them, for other users of the same syntax (a tier's replication
// filter).
type Globs struct{ gs []glob }

// CompileGlobs checks and compiles patterns.
func CompileGlobs(ps []string) (Globs, error) {
	for _, p := range ps {
		if err := CheckGlob(p); err != nil {
			return Globs{}, err
		}
	}
	return Globs{compileGlobs(ps)}, nil
}

// CheckGlob reports whether p is a valid pattern.
func CheckGlob(p string) error { return checkGlob(p) }

// Empty reports whether there is no pattern.
func (g Globs) Empty() bool { return len(g.gs) == 0 }

// Match reports whether rel (a path relative to its hot tree,
// "/"-separated) matches one of the patterns.
func (g Globs) Match(rel string) bool { return matchAny(g.gs, rel, path.Base(rel)) }
