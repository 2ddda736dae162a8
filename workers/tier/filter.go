package tier

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/strata-hsm/strata/pipeline"
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
// restricts the tier. Errors are *pipeline.ConfigError naming the key of
// the tier's table (include[i], exclude[i], min_size, max_size).
func NewFilter(include, exclude []string, minSize, maxSize int64) (*Filter, error) {
	for _, set := range []struct {
		key string
		ps  []string
	}{{"include", include}, {"exclude", exclude}} {
		for i, p := range set.ps {
			if err := glob.Check(p); err != nil {
				return nil, pipeline.NewConfigError(fmt.Sprintf("%s[%d]", set.key, i), nil, err)
			}
		}
	}
	switch {
	case minSize < 0:
		return nil, pipeline.BadConfig("min_size", minSize, "negative")
	case maxSize < 0:
		return nil, pipeline.BadConfig("max_size", maxSize, "negative")
	case maxSize > 0 && maxSize < minSize:
		return nil, pipeline.BadConfig("max_size", maxSize, "below min_size %d", minSize)
	case len(include) == 0 && len(exclude) == 0 && minSize == 0 && maxSize == 0:
		return nil, nil
	}
	inc, _ := glob.Compile(include) // checked above
	exc, _ := glob.Compile(exclude)
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
