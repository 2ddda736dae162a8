package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/strata-hsm/strata/events"
)

// Config is the daemon's configuration file (TOML). Every key is documented
// in README.md ("Configuration") and in strata.example.toml; the two and
// this struct must stay in step (TestExampleConfig checks the example).
type Config struct {
	DataDir string `toml:"data_dir"`
	Host    string `toml:"host"`

	NATS        NATSConfig        `toml:"nats"`
	Hot         []HotConfig       `toml:"hot"`
	Tiers       []TierConfig      `toml:"tier"`
	Release     ReleaseConfig     `toml:"release"`
	Policy      PolicyConfig      `toml:"policy"`
	Compressor  CompressorConfig  `toml:"compressor"`
	Interceptor InterceptorConfig `toml:"interceptor"`
}

// NATSConfig: the embedded server's client listener.
type NATSConfig struct {
	Listen string `toml:"listen"` // address, default 127.0.0.1
	Port   int    `toml:"port"`   // default 4250; -1: no TCP listener (the CLI cannot connect)
}

// HotConfig is one hot tree.
type HotConfig struct {
	Path          string `toml:"path"`
	CrossMounts   bool   `toml:"cross_mounts"` // false (default): stay on the tree's filesystem
	HighWatermark int    `toml:"high_watermark"`
	LowWatermark  int    `toml:"low_watermark"`
}

// TierConfig is one cold tier.
type TierConfig struct {
	Name string `toml:"name"`
	Kind string `toml:"kind"` // directory (s3, rclone, tape: later)
	Path string `toml:"path"` // directory: root of the tier
	Cost int    `toml:"cost"` // recall order: lower first (default by kind)
}

// ReleaseConfig: when a hot file may become a stub.
type ReleaseConfig struct {
	Copies int      `toml:"copies"` // verified copies required before release (default 1)
	From   []string `toml:"from"`   // tiers that count (default: all)
}

// PolicyConfig: which files the scanner selects.
type PolicyConfig struct {
	ScanInterval duration `toml:"scan_interval"`
	MinAge       duration `toml:"min_age"`
	AgeBy        string   `toml:"age_by"` // atime, mtime, both (default), either
	MinSize      size     `toml:"min_size"`
	Include      []string `toml:"include"`
	Exclude      []string `toml:"exclude"`
	Pinned       []string `toml:"pinned"`
	// HighWatermark and LowWatermark: percent of a hot filesystem used;
	// above high, files are archived oldest first (whatever their age)
	// until usage would be below low. 0 and 0: off.
	HighWatermark int `toml:"high_watermark"`
	LowWatermark  int `toml:"low_watermark"`
}

// CompressorConfig: how objects are packed.
type CompressorConfig struct {
	Level       int  `toml:"level"`       // zstd level 1-19, default 3
	FrameSize   size `toml:"frame_size"`  // default 4 MiB
	Concurrency int  `toml:"concurrency"` // frames compressed at once, default: number of CPUs
}

// InterceptorConfig: how stubs are guarded.
type InterceptorConfig struct {
	Mode string `toml:"mode"` // auto (default), pre-access, open-perm
}

// Defaults.
const (
	defaultDataDir = "/var/lib/strata"
	defaultPort    = 4250
)

// NewConfig returns the embedded defaults: everything Strata needs to run
// with no configuration file at all.
func NewConfig() Config {
	var c Config
	c.EnsureDefaults()
	return c
}

// ConfigError names the configuration key that is wrong and why.
type ConfigError struct {
	Key string
	Err error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("config: %s: %v", e.Key, e.Err) }
func (e *ConfigError) Unwrap() error { return e.Err }

// LoadConfig reads a TOML file. Unknown keys are errors (a typo must not
// silently fall back to a default).
func LoadConfig(path string) (Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			if perr.LastKey != "" {
				return Config{}, fmt.Errorf("config %s: line %d: %w", path, perr.Position.Line, &ConfigError{perr.LastKey, errors.New(perr.Message)})
			}
			return Config{}, fmt.Errorf("config %s: line %d: %s", path, perr.Position.Line, perr.Message)
		}
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("config %s: %w", path, &ConfigError{keys[0], errors.New("unknown key")})
	}
	return c, nil
}

// EnsureDefaults fills unset values.
func (c *Config) EnsureDefaults() {
	if c.DataDir == "" {
		c.DataDir = defaultDataDir
	}
	if c.Host == "" {
		name, _ := os.Hostname()
		c.Host = events.HostToken(name)
	}
	if c.NATS.Listen == "" {
		c.NATS.Listen = "127.0.0.1"
	}
	if c.NATS.Port == 0 {
		c.NATS.Port = defaultPort
	}
	if len(c.Tiers) == 0 {
		c.Tiers = []TierConfig{{Name: "cold", Kind: events.TierDirectory, Path: filepath.Join(c.DataDir, "cold")}}
	}
	for i := range c.Tiers {
		if c.Tiers[i].Cost == 0 {
			c.Tiers[i].Cost = defaultCost(c.Tiers[i].Kind)
		}
	}
	if c.Policy.HighWatermark == 0 && c.Policy.LowWatermark == 0 {
		c.Policy.HighWatermark, c.Policy.LowWatermark = 90, 80
	}
	if c.Release.Copies == 0 {
		c.Release.Copies = 1
	}
	if c.Policy.ScanInterval == 0 {
		c.Policy.ScanInterval = duration(10 * time.Minute)
	}
	if c.Policy.MinAge == 0 {
		c.Policy.MinAge = duration(30 * 24 * time.Hour)
	}
	if c.Policy.AgeBy == "" {
		c.Policy.AgeBy = "both"
	}
	if c.Policy.MinSize == 0 {
		c.Policy.MinSize = 1
	}
	if c.Compressor.Level == 0 {
		c.Compressor.Level = 3
	}
	if c.Compressor.FrameSize == 0 {
		c.Compressor.FrameSize = 4 << 20
	}
	if c.Interceptor.Mode == "" {
		c.Interceptor.Mode = "auto"
	}
}

func defaultCost(kind string) int {
	switch kind {
	case events.TierDirectory:
		return 10
	case events.TierS3, events.TierRclone:
		return 20
	case events.TierTape:
		return 30
	}
	return 50
}

// Validate checks every value and names the first bad key.
func (c *Config) Validate() error {
	bad := func(key string, format string, args ...any) error {
		return &ConfigError{key, fmt.Errorf(format, args...)}
	}
	if !filepath.IsAbs(c.DataDir) {
		return bad("data_dir", "%q is not an absolute path", c.DataDir)
	}
	if !events.ValidToken(c.Host) {
		return bad("host", "%q: want letters, digits, '-' or '_' (at most 64)", c.Host)
	}
	if c.NATS.Port < -2 || c.NATS.Port > 65535 {
		return bad("nats.port", "%d: want 1-65535, -1 for no TCP listener (-2: a random port, for tests)", c.NATS.Port)
	}
	seen := map[string]bool{}
	for i, h := range c.Hot {
		key := fmt.Sprintf("hot[%d].path", i)
		if !filepath.IsAbs(h.Path) || filepath.Clean(h.Path) != h.Path {
			return bad(key, "%q: want a clean absolute path", h.Path)
		}
		if fi, err := os.Stat(h.Path); err != nil {
			return bad(key, "%v", err)
		} else if !fi.IsDir() {
			return bad(key, "%s is not a directory", h.Path)
		}
		for p := range seen {
			if within(h.Path, p) || within(p, h.Path) {
				return bad(key, "%s overlaps hot tree %s", h.Path, p)
			}
		}
		seen[h.Path] = true
		if within(c.DataDir, h.Path) || within(h.Path, c.DataDir) {
			return bad(key, "%s overlaps the data directory %s", h.Path, c.DataDir)
		}
	}
	names := map[string]bool{}
	for i, t := range c.Tiers {
		key := fmt.Sprintf("tier[%d]", i)
		if !events.ValidToken(t.Name) {
			return bad(key+".name", "%q: want letters, digits, '-' or '_'", t.Name)
		}
		if names[t.Name] {
			return bad(key+".name", "%q is used twice", t.Name)
		}
		names[t.Name] = true
		switch t.Kind {
		case events.TierDirectory:
			if !filepath.IsAbs(t.Path) {
				return bad(key+".path", "%q: want an absolute path", t.Path)
			}
			for _, h := range c.Hot {
				if within(t.Path, h.Path) || within(h.Path, t.Path) {
					return bad(key+".path", "%s overlaps hot tree %s: a cold tier must live elsewhere", t.Path, h.Path)
				}
			}
		case events.TierS3, events.TierRclone, events.TierTape:
			return bad(key+".kind", "%q tiers are not available in this version yet", t.Kind)
		default:
			return bad(key+".kind", "%q: want directory", t.Kind)
		}
		if t.Cost < 0 {
			return bad(key+".cost", "%d: want >= 0", t.Cost)
		}
	}
	for i, f := range c.Release.From {
		if !names[f] {
			return bad(fmt.Sprintf("release.from[%d]", i), "%q is not a configured tier", f)
		}
	}
	counting := len(c.Release.From)
	if counting == 0 {
		counting = len(c.Tiers)
	}
	if c.Release.Copies < 1 || c.Release.Copies > counting {
		return bad("release.copies", "%d: want 1 to %d (the tiers that count)", c.Release.Copies, counting)
	}
	if c.Policy.ScanInterval < duration(time.Second) {
		return bad("policy.scan_interval", "%s: want at least 1s", time.Duration(c.Policy.ScanInterval))
	}
	if c.Policy.MinAge < 0 {
		return bad("policy.min_age", "negative")
	}
	switch c.Policy.AgeBy {
	case "atime", "mtime", "both", "either":
	default:
		return bad("policy.age_by", "%q: want atime, mtime, both or either", c.Policy.AgeBy)
	}
	for i, g := range append(append([]string{}, c.Policy.Include...), c.Policy.Exclude...) {
		if strings.ContainsRune(g, 0) || g == "" {
			return bad(fmt.Sprintf("policy.include/exclude[%d]", i), "empty or invalid glob %q", g)
		}
		if _, err := filepath.Match(strings.ReplaceAll(g, "**", "*"), ""); err != nil {
			return bad(fmt.Sprintf("policy.include/exclude[%d]", i), "glob %q: %v", g, err)
		}
	}
	if c.Policy.HighWatermark < 1 || c.Policy.HighWatermark > 100 {
		return bad("policy.high_watermark", "%d: want 1-100 (percent)", c.Policy.HighWatermark)
	}
	if c.Policy.LowWatermark < 0 || c.Policy.LowWatermark >= c.Policy.HighWatermark {
		return bad("policy.low_watermark", "%d: want 0 to high_watermark-1 (%d)", c.Policy.LowWatermark, c.Policy.HighWatermark-1)
	}
	for i, p := range c.Policy.Pinned {
		if !filepath.IsAbs(p) {
			return bad(fmt.Sprintf("policy.pinned[%d]", i), "%q: want an absolute path", p)
		}
	}
	if c.Compressor.Level < 1 || c.Compressor.Level > 19 {
		return bad("compressor.level", "%d: want 1-19", c.Compressor.Level)
	}
	if c.Compressor.FrameSize < 64<<10 || c.Compressor.FrameSize > 64<<20 {
		return bad("compressor.frame_size", "%d: want 64 KiB to 64 MiB", c.Compressor.FrameSize)
	}
	if c.Compressor.Concurrency < 0 {
		return bad("compressor.concurrency", "%d: want >= 0 (0: one per CPU)", c.Compressor.Concurrency)
	}
	switch c.Interceptor.Mode {
	case "auto", "pre-access", "open-perm":
	default:
		return bad("interceptor.mode", "%q: want auto, pre-access or open-perm", c.Interceptor.Mode)
	}
	return nil
}

// within reports whether p is dir or inside it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// tierNames returns the configured tier names, sorted.
func (c *Config) tierNames() []string {
	var out []string
	for _, t := range c.Tiers {
		out = append(out, t.Name)
	}
	sort.Strings(out)
	return out
}

// duration is a time.Duration written as "10m", "36h" or "30d" in TOML.
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		if err != nil || days < 0 {
			return fmt.Errorf("duration %q: want e.g. 30d, 12h, 10m", s)
		}
		*d = duration(days * float64(24*time.Hour))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: want e.g. 30d, 12h, 10m", s)
	}
	*d = duration(v)
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// size is a byte count written as 4096, "64KiB", "4MiB" or "1GiB" in TOML.
type size int64

// UnmarshalTOML accepts an integer or a string with a unit.
func (s *size) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("size %d: negative", x)
		}
		*s = size(x)
		return nil
	case string:
		n, err := parseSize(x)
		if err != nil {
			return err
		}
		*s = size(n)
		return nil
	}
	return fmt.Errorf("size %v: want e.g. 4096 or \"4MiB\"", v)
}

func parseSize(str string) (int64, error) {
	s := strings.TrimSpace(str)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want e.g. 4096, 64KiB, 4MiB, 1GiB", str)
	}
	return v * mult, nil
}
