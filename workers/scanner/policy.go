package scanner

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/strata-hsm/strata/workers/glob"
	"github.com/strata-hsm/strata/workers/stub"
)

// Age matching modes.
const (
	// AgeAll: every configured age must be reached ("and").
	AgeAll = "all"
	// AgeAny: one configured age is enough ("or").
	AgeAny = "any"
)

// Policy says which hot files to archive. Build it with NewPolicy (or a
// literal), then call EnsureDefaults and Validate.
type Policy struct {
	// Roots are the hot trees: absolute, clean, not nested in one another.
	Roots []string
	// DataDir is Strata's own data directory; it is never scanned, even
	// when it lies inside a root.
	DataDir string
	// MinSize: smaller files are never selected (bytes).
	MinSize int64
	// MinAtimeAge and MinMtimeAge: a file is old enough when now minus its
	// atime (mtime) is at least this. Zero turns that criterion off; with
	// both off every file is old enough.
	MinAtimeAge time.Duration
	MinMtimeAge time.Duration
	// AgeMatch combines the two ages: AgeAll (default; "and") or AgeAny
	// ("or"). Only the ages that are set take part.
	AgeMatch string
	// Include and Exclude are globs on the path relative to its root
	// ("/"-separated). A pattern without "/" matches the base name at any
	// depth ("*.log"); one with "/" matches the whole relative path, where
	// "**" matches any number of directories ("projects/**/raw/*.tif").
	// With Include set, a file must match one of them; a file or directory
	// matching an Exclude is skipped (a directory with its whole tree).
	Include []string
	Exclude []string
	// PinnedPaths are absolute paths never archived; a pinned directory
	// pins its tree. Pinned, if set, is asked too (e.g. the catalog's
	// pins), for directories and files; it must be safe for concurrent use.
	PinnedPaths []string
	Pinned      func(path string) bool
	// CrossFilesystems lets the walk descend into other filesystems
	// mounted inside a root. The default (false) stays on the root's
	// filesystem, like find -xdev.
	CrossFilesystems bool
	// HighWatermark and LowWatermark are percentages of the hot
	// filesystem's usage (statfs: used / (used + available), as df shows).
	// When usage is above HighWatermark, files that pass every filter but
	// age are selected too, least recently used first (by the later of
	// atime and mtime), until the projected usage after their release is
	// at or below LowWatermark. Both zero: off.
	HighWatermark float64
	LowWatermark  float64
	// OnStub, if set, is called for every stub the walk meets (files are
	// never selected, but the daemon reconciles the catalog with them:
	// a stub that is no longer anywhere was deleted). It is called from
	// several goroutines at once.
	OnStub func(path string, info stub.Info)
	// Workers is the number of directories read in parallel.
	Workers int
}

// NewPolicy returns a policy with Strata's defaults for roots: files of at
// least 1 MiB untouched (atime and mtime) for 30 days.
func NewPolicy(roots ...string) Policy {
	p := Policy{
		Roots:       roots,
		MinSize:     1 << 20,
		MinAtimeAge: 30 * 24 * time.Hour,
		MinMtimeAge: 30 * 24 * time.Hour,
	}
	p.EnsureDefaults()
	return p
}

// EnsureDefaults fills zero fields that have a default.
func (p *Policy) EnsureDefaults() {
	if p.AgeMatch == "" {
		p.AgeMatch = AgeAll
	}
	if p.Workers == 0 {
		p.Workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
}

// ValidationError names the policy field that is wrong and why.
type ValidationError struct {
	Field string
	Value any
	Err   error
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("policy: %s = %v: %v", e.Field, e.Value, e.Err)
}

func (e *ValidationError) Unwrap() error { return e.Err }

// Validate checks p without touching the filesystem. Every problem is
// reported, each as a *ValidationError, joined.
func (p *Policy) Validate() error {
	var errs []error
	bad := func(field string, v any, format string, args ...any) {
		errs = append(errs, &ValidationError{Field: field, Value: v, Err: fmt.Errorf(format, args...)})
	}
	if len(p.Roots) == 0 {
		bad("roots", p.Roots, "at least one hot tree is required")
	}
	for i, r := range p.Roots {
		f := fmt.Sprintf("roots[%d]", i)
		if err := cleanAbs(r); err != nil {
			bad(f, r, "%v", err)
			continue
		}
		for j, o := range p.Roots[:i] {
			if within(r, o) || within(o, r) {
				bad(f, r, "overlaps roots[%d] %s", j, o)
			}
		}
	}
	if p.DataDir != "" {
		if err := cleanAbs(p.DataDir); err != nil {
			bad("data_dir", p.DataDir, "%v", err)
		}
	}
	if p.MinSize < 0 {
		bad("min_size", p.MinSize, "must not be negative")
	}
	if p.MinAtimeAge < 0 {
		bad("min_atime_age", p.MinAtimeAge, "must not be negative")
	}
	if p.MinMtimeAge < 0 {
		bad("min_mtime_age", p.MinMtimeAge, "must not be negative")
	}
	if p.AgeMatch != AgeAll && p.AgeMatch != AgeAny {
		bad("age_match", p.AgeMatch, "want %q or %q", AgeAll, AgeAny)
	}
	for i, g := range p.Include {
		if err := glob.Check(g); err != nil {
			bad(fmt.Sprintf("include[%d]", i), g, "%v", err)
		}
	}
	for i, g := range p.Exclude {
		if err := glob.Check(g); err != nil {
			bad(fmt.Sprintf("exclude[%d]", i), g, "%v", err)
		}
	}
	for i, pp := range p.PinnedPaths {
		if err := cleanAbs(pp); err != nil {
			bad(fmt.Sprintf("pinned[%d]", i), pp, "%v", err)
		}
	}
	hi, lo := p.HighWatermark, p.LowWatermark
	switch {
	case hi == 0 && lo == 0:
	case hi <= 0 || hi > 100:
		bad("high_watermark", hi, "want a percentage in (0, 100]")
	case lo <= 0 || lo >= hi:
		bad("low_watermark", lo, "want a percentage in (0, high_watermark %v)", hi)
	}
	if p.Workers < 1 {
		bad("workers", p.Workers, "want at least 1")
	}
	return errors.Join(errs...)
}

func cleanAbs(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case !filepath.IsAbs(p):
		return errors.New("not an absolute path")
	case filepath.Clean(p) != p:
		return fmt.Errorf("not clean (want %s)", filepath.Clean(p))
	case strings.ContainsRune(p, 0):
		return errors.New("contains NUL")
	}
	return nil
}

// within reports whether path is dir or lies under it.
func within(path, dir string) bool {
	if path == dir || dir == "/" {
		return true
	}
	return strings.HasPrefix(path, dir) && path[len(dir)] == '/'
}

// ageOK reports whether a file with these times is old enough.
func (p *Policy) ageOK(now time.Time, atimeNS, mtimeNS int64) bool {
	n := now.UnixNano()
	aSet, mSet := p.MinAtimeAge > 0, p.MinMtimeAge > 0
	if !aSet && !mSet {
		return true
	}
	aOK := aSet && n-atimeNS >= int64(p.MinAtimeAge)
	mOK := mSet && n-mtimeNS >= int64(p.MinMtimeAge)
	if p.AgeMatch == AgeAny {
		return aOK || mOK
	}
	return (aOK || !aSet) && (mOK || !mSet)
}

func (p *Policy) pinned(path string) bool {
	for _, pp := range p.PinnedPaths {
		if within(path, pp) {
			return true
		}
	}
	return p.Pinned != nil && p.Pinned(path)
}

// RootOf returns the hot tree of p.Roots that holds path (absolute and
// clean), or "" if none does.
func (p *Policy) RootOf(path string) string {
	if cleanAbs(path) != nil {
		return ""
	}
	for _, r := range p.Roots {
		if within(path, r) {
			return r
		}
	}
	return ""
}

func (p *Policy) inRoots(path string) bool { return p.RootOf(path) != "" }
