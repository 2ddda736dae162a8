package scanner

import (
	"cmp"
	"time"

	"github.com/strata-hsm/strata/pipeline"
)

// Config is the policy as an administrator writes it ([policy] in
// strata.toml); Policy turns it into the Policy the scanner runs.
type Config struct {
	ScanInterval  time.Duration // rescan period (default 10m)
	MinAge        time.Duration // default 30 days
	AgeBy         string        // atime, mtime, both (default), either
	MinSize       int64         // smaller files stay hot (default 1)
	Include       []string
	Exclude       []string
	Pinned        []string // absolute paths never archived
	HighWatermark int      // percent used; above it, archive oldest first whatever the age (default 90)
	LowWatermark  int      // … until below this (default 80)
}

// Config defaults.
const (
	DefaultScanInterval  = 10 * time.Minute
	DefaultMinAge        = 30 * 24 * time.Hour
	DefaultHighWatermark = 90
	DefaultLowWatermark  = 80
)

// EnsureDefaults fills zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	c.ScanInterval = cmp.Or(c.ScanInterval, DefaultScanInterval)
	c.MinAge = cmp.Or(c.MinAge, DefaultMinAge)
	c.AgeBy = cmp.Or(c.AgeBy, "both")
	c.MinSize = cmp.Or(c.MinSize, 1)
	if c.HighWatermark == 0 && c.LowWatermark == 0 {
		c.HighWatermark, c.LowWatermark = DefaultHighWatermark, DefaultLowWatermark
	}
}

// Validate checks c; call EnsureDefaults first. Errors are
// *pipeline.ConfigError naming the key (scan_interval, min_age, …).
func (c *Config) Validate() error {
	bad := pipeline.BadConfig
	if c.ScanInterval < time.Second {
		return bad("scan_interval", c.ScanInterval.String(), "want at least 1s")
	}
	if c.MinAge < 0 {
		return bad("min_age", c.MinAge.String(), "negative")
	}
	switch c.AgeBy {
	case "atime", "mtime", "both", "either":
	default:
		return bad("age_by", c.AgeBy, "want atime, mtime, both or either")
	}
	if c.HighWatermark < 1 || c.HighWatermark > 100 {
		return bad("high_watermark", c.HighWatermark, "want 1-100 (percent)")
	}
	if c.LowWatermark < 0 || c.LowWatermark >= c.HighWatermark {
		return bad("low_watermark", c.LowWatermark, "want 0 to high_watermark-1 (%d)", c.HighWatermark-1)
	}
	// The rest as the Policy checks it (globs, pinned paths, sizes).
	p := c.Policy([]string{"/"}, "", false)
	return p.Validate()
}

// Policy is the scanner policy of c for the hot trees roots (and Strata's
// data directory, never scanned). crossFS lets walks descend into other
// filesystems mounted inside a root.
func (c Config) Policy(roots []string, dataDir string, crossFS bool) Policy {
	p := Policy{
		Roots: roots, DataDir: dataDir, MinSize: c.MinSize,
		Include: c.Include, Exclude: c.Exclude, PinnedPaths: c.Pinned,
		AgeMatch: AgeAll, CrossFilesystems: crossFS,
		HighWatermark: float64(c.HighWatermark), LowWatermark: float64(c.LowWatermark),
	}
	switch c.AgeBy {
	case "atime":
		p.MinAtimeAge = c.MinAge
	case "mtime":
		p.MinMtimeAge = c.MinAge
	case "either":
		p.MinAtimeAge, p.MinMtimeAge, p.AgeMatch = c.MinAge, c.MinAge, AgeAny
	default:
		p.MinAtimeAge, p.MinMtimeAge = c.MinAge, c.MinAge
	}
	p.EnsureDefaults()
	return p
}
