package tier

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/strata-hsm/strata/workers/glob"
)

// Filter is a tier's replication policy: which files it takes. Its
// patterns read like the scanner's (package glob). A nil *Filter takes
// every file.
type Filter struct {
	include, exclude glob.Set
	min, max         int64 // inclusive; max 0: no maximum
}

// NewFilter compiles a filter. It returns nil (every file) when nothing
// restricts the tier.
func NewFilter(include, exclude []string, minSize, maxSize int64) (*Filter, error) {
	if len(include) == 0 && len(exclude) == 0 && minSize <= 0 && maxSize <= 0 {
		return nil, nil
	}
	inc, err := glob.Compile(include)
	if err != nil {
		return nil, fmt.Errorf("include: %w", err)
	}
	exc, err := glob.Compile(exclude)
	if err != nil {
		return nil, fmt.Errorf("exclude: %w", err)
	}
	return &Filter{include: inc, exclude: exc, min: minSize, max: maxSize}, nil
}

// Wants reports whether the tier takes a file of size bytes at rel (its
// path relative to its hot tree, "/"-separated; see RelPath).
func (f *Filter) Wants(rel string, size int64) bool {
	if f == nil {
		return true
	}
	if size < f.min || f.max > 0 && size > f.max {
		return false
	}
	if !f.include.Empty() && !f.include.Match(rel) {
		return false
	}
	return !f.exclude.Match(rel)
}

// RelPath is p relative to the hot tree of roots that holds it
// ("/"-separated), as filter patterns see it; a path outside every root is
// taken without its leading "/".
func RelPath(roots []string, p string) string {
	if filepath.IsAbs(p) && filepath.Clean(p) == p {
		for _, r := range roots {
			if p == r || strings.HasPrefix(p, r+"/") {
				return strings.TrimPrefix(strings.TrimPrefix(p, r), "/")
			}
		}
	}
	return strings.TrimPrefix(p, "/")
}
