package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/glob"
	"github.com/strata-hsm/strata/workers/interceptor"
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
	Scrub       ScrubConfig       `toml:"scrub"`
	Retention   RetentionConfig   `toml:"retention"`
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

// TierConfig is one cold tier. Which keys apply depends on Kind; a key of
// another kind is an error (it is surely a mistake).
type TierConfig struct {
	Name string `toml:"name"`
	Kind string `toml:"kind"` // directory, s3, rclone or tape
	Cost int    `toml:"cost"` // recall order: lower first (default by kind)

	// directory
	Path string `toml:"path"` // root of the tier

	// s3
	Endpoint  string `toml:"endpoint"` // host[:port]
	Region    string `toml:"region"`
	Bucket    string `toml:"bucket"`
	Prefix    string `toml:"prefix"`
	AccessKey string `toml:"access_key"` // default $AWS_ACCESS_KEY_ID
	SecretKey string `toml:"secret_key"` // default $AWS_SECRET_ACCESS_KEY
	TLS       *bool  `toml:"tls"`        // default true

	// rclone
	Remote string            `toml:"remote"` // "name:path"
	Binary string            `toml:"binary"` // default "rclone" on PATH
	Env    map[string]string `toml:"env"`    // e.g. RCLONE_CONFIG_<NAME>_TYPE

	// tape
	Device    string `toml:"device"`     // /dev/nstX or emulator:/path/dir
	Pool      string `toml:"pool"`       // media pool whose volumes this tier writes
	BlockSize size   `toml:"block_size"` // default 512 KiB
	// A bundle (one tape file) is closed and its objects reported stored
	// when it reaches BundleSize or its first object is BundleAge old.
	BundleSize size     `toml:"bundle_size"` // default 16 GiB
	BundleAge  duration `toml:"bundle_age"`  // default 5m

	// Which files this tier takes (replication policy); default: all.
	Include []string `toml:"include"` // globs relative to the hot tree
	Exclude []string `toml:"exclude"`
	MinSize size     `toml:"min_size"` // bytes, inclusive; 0: no minimum
	MaxSize size     `toml:"max_size"` // bytes, inclusive; 0: no maximum
}

// filtered reports whether the tier takes only some files.
func (t *TierConfig) filtered() bool {
	return len(t.Include) > 0 || len(t.Exclude) > 0 || t.MinSize > 0 || t.MaxSize > 0
}

// useTLS is the tls key with its default (true).
func (t *TierConfig) useTLS() bool { return t.TLS == nil || *t.TLS }

// envList returns Env as sorted KEY=VALUE strings.
func (t *TierConfig) envList() []string {
	out := make([]string, 0, len(t.Env))
	for k, v := range t.Env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ScrubConfig: scheduled re-reading of the copies.
type ScrubConfig struct {
	Interval duration `toml:"interval"` // 0 (default): no scheduled scrub
	Sample   percent  `toml:"sample"`   // percent of the copies re-read per run (default 100)
	Rate     size     `toml:"rate"`     // bytes per second read at most (default 100 MiB); per run
}

// RetentionConfig: how long objects that no live file needs are kept
// before strata prune may remove them.
type RetentionConfig struct {
	// KeepDeleted: objects of deleted files, and superseded versions, are
	// kept at least this long after the deletion or the new version
	// (default 30d).
	KeepDeleted duration `toml:"keep_deleted"`
	// KeepVersions: the newest N versions of every live file are kept
	// whatever their age (default 1: the current one).
	KeepVersions int `toml:"keep_versions"`
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
	// Holder runs a small holder process that keeps the fanotify group
	// (the marks, and programs blocked on stubs) alive when the daemon
	// crashes, and a journal so the restarted daemon answers the events
	// its predecessor had read. Without it, a crashed daemon lets stubs
	// read as zeros until it is back. Unset (nil): true; only an explicit
	// `holder = false` turns it off. Read it with HolderOn.
	Holder *bool `toml:"holder"`
	// WholeFileBelow: stubs smaller than this are recalled whole when
	// opened, in mode pre-access (guards them against programs that look
	// for data with SEEK_DATA/SEEK_HOLE). Default 64 MiB; 1 disables.
	WholeFileBelow size `toml:"whole_file_below"`
	// WholeFilePrograms: a stub of any size opened by one of these
	// programs (by name) is recalled whole before its open returns.
	// Unset: cp, mv, install, tar, bsdtar, rsync, qemu-img, ddrescue;
	// [] for none.
	WholeFilePrograms []string `toml:"whole_file_programs"`
}

// HolderOn reports whether the holder process is used (the default).
func (c InterceptorConfig) HolderOn() bool { return c.Holder == nil || *c.Holder }

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
		t := &c.Tiers[i]
		if t.Cost == 0 {
			t.Cost = defaultCost(t.Kind)
		}
		if t.Kind == events.TierTape && t.BlockSize == 0 {
			t.BlockSize = 512 << 10
		}
	}
	if c.Scrub.Sample == 0 {
		c.Scrub.Sample = 100
	}
	if c.Scrub.Rate == 0 {
		c.Scrub.Rate = 100 << 20
	}
	if c.Retention.KeepDeleted == 0 {
		c.Retention.KeepDeleted = duration(30 * 24 * time.Hour)
	}
	if c.Retention.KeepVersions == 0 {
		c.Retention.KeepVersions = 1
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
	if c.Interceptor.Holder == nil {
		on := true
		c.Interceptor.Holder = &on
	}
	if c.Interceptor.WholeFileBelow == 0 {
		c.Interceptor.WholeFileBelow = interceptor.DefaultWholeFileBelow
	}
	if c.Interceptor.WholeFilePrograms == nil {
		c.Interceptor.WholeFilePrograms = interceptor.DefaultWholeFilePrograms()
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
		if err := c.validateTier(key, &t); err != nil {
			return err
		}
	}
	for i, f := range c.Release.From {
		if !names[f] {
			return bad(fmt.Sprintf("release.from[%d]", i), "%q is not a configured tier", f)
		}
	}
	counting, takeAll := 0, 0
	for _, t := range c.Tiers {
		if len(c.Release.From) == 0 || slices.Contains(c.Release.From, t.Name) {
			counting++
			if !t.filtered() {
				takeAll++
			}
		}
	}
	if c.Release.Copies < 1 || c.Release.Copies > counting {
		return bad("release.copies", "%d: want 1 to %d (the tiers that count)", c.Release.Copies, counting)
	}
	if c.Release.Copies > takeAll {
		// A tier with include/exclude/min_size/max_size may refuse a file:
		// only tiers that take every file guarantee that each file can
		// reach the required copies (else it would never be released).
		return bad("release.copies", "%d: only %d of the tiers that count take every file (tiers with include, exclude, min_size or max_size may refuse one, which could then never be released)", c.Release.Copies, takeAll)
	}
	if c.Scrub.Interval < 0 || c.Scrub.Interval > 0 && c.Scrub.Interval < duration(time.Minute) {
		return bad("scrub.interval", "%s: want 0 (off) or at least 1m", time.Duration(c.Scrub.Interval))
	}
	if c.Scrub.Sample <= 0 || c.Scrub.Sample > 100 {
		return bad("scrub.sample", "%v: want a percentage in (0, 100]", float64(c.Scrub.Sample))
	}
	if c.Scrub.Rate < 1<<20 {
		return bad("scrub.rate", "%d: want at least 1 MiB (bytes per second)", c.Scrub.Rate)
	}
	if c.Retention.KeepDeleted < 0 {
		return bad("retention.keep_deleted", "negative")
	}
	if c.Retention.KeepVersions < 1 {
		return bad("retention.keep_versions", "%d: want at least 1 (the current version is always kept)", c.Retention.KeepVersions)
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
	if c.Interceptor.WholeFileBelow < 0 {
		return bad("interceptor.whole_file_below", "%d: want a size (1 disables)", c.Interceptor.WholeFileBelow)
	}
	for _, p := range c.Interceptor.WholeFilePrograms {
		if p == "" || strings.Contains(p, "/") {
			return bad("interceptor.whole_file_programs", "%q: want a program's name, without a directory", p)
		}
	}
	return nil
}

// validateTier checks one [[tier]] table; key is "tier[i]".
func (c *Config) validateTier(key string, t *TierConfig) error {
	bad := func(k string, format string, args ...any) error {
		return &ConfigError{key + "." + k, fmt.Errorf(format, args...)}
	}
	// Keys of other kinds: a typo or a copy-paste error, never ignored.
	set := map[string]bool{
		"path": t.Path != "", "endpoint": t.Endpoint != "", "region": t.Region != "", "bucket": t.Bucket != "",
		"prefix": t.Prefix != "", "access_key": t.AccessKey != "", "secret_key": t.SecretKey != "", "tls": t.TLS != nil,
		"remote": t.Remote != "", "binary": t.Binary != "", "env": len(t.Env) > 0,
		"device": t.Device != "", "pool": t.Pool != "", "block_size": t.BlockSize != 0 && t.Kind != events.TierTape,
		"bundle_size": t.BundleSize != 0, "bundle_age": t.BundleAge != 0,
	}
	allowed := map[string][]string{
		events.TierDirectory: {"path"},
		events.TierS3:        {"endpoint", "region", "bucket", "prefix", "access_key", "secret_key", "tls"},
		events.TierRclone:    {"remote", "binary", "env"},
		events.TierTape:      {"device", "pool", "block_size", "bundle_size", "bundle_age"},
	}
	own, ok := allowed[t.Kind]
	if !ok {
		return bad("kind", "%q: want directory, s3, rclone or tape", t.Kind)
	}
	for _, k := range []string{"path", "endpoint", "region", "bucket", "prefix", "access_key", "secret_key", "tls",
		"remote", "binary", "env", "device", "pool", "block_size", "bundle_size", "bundle_age"} {
		if set[k] && !slices.Contains(own, k) {
			return bad(k, "not a key of %s tiers", t.Kind)
		}
	}
	switch t.Kind {
	case events.TierDirectory:
		if !filepath.IsAbs(t.Path) {
			return bad("path", "%q: want an absolute path", t.Path)
		}
		for _, h := range c.Hot {
			if within(t.Path, h.Path) || within(h.Path, t.Path) {
				return bad("path", "%s overlaps hot tree %s: a cold tier must live elsewhere", t.Path, h.Path)
			}
		}
	case events.TierS3:
		if t.Endpoint == "" || strings.Contains(t.Endpoint, "/") {
			return bad("endpoint", "%q: want host[:port], no scheme or path (tls = false for plain HTTP)", t.Endpoint)
		}
		if t.Bucket == "" {
			return bad("bucket", "required")
		}
		if strings.HasPrefix(t.Prefix, "/") {
			return bad("prefix", "%q must not start with /", t.Prefix)
		}
		if (t.AccessKey == "") != (t.SecretKey == "") {
			return bad("secret_key", "access_key and secret_key go together")
		}
		if t.AccessKey == "" && (os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "") {
			return bad("access_key", "no credentials: set access_key and secret_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
	case events.TierRclone:
		name, _, ok := strings.Cut(t.Remote, ":")
		if !ok || name == "" {
			return bad("remote", "%q: want \"name:path\" (a configured rclone remote)", t.Remote)
		}
		for k := range t.Env {
			if k == "" || strings.ContainsAny(k, "= \t\n\x00") {
				return bad("env", "%q: not an environment variable name", k)
			}
		}
	case events.TierTape:
		dev, emu := strings.CutPrefix(t.Device, "emulator:")
		if !filepath.IsAbs(dev) || !emu && !strings.HasPrefix(filepath.Base(dev), "nst") {
			return bad("device", "%q: want a non-rewinding drive /dev/nstX or emulator:/abs/dir", t.Device)
		}
		if !events.ValidToken(t.Pool) {
			return bad("pool", "%q: want letters, digits, '-' or '_'", t.Pool)
		}
		if t.BlockSize < 16<<10 || t.BlockSize > 8<<20 || t.BlockSize%512 != 0 {
			return bad("block_size", "%d: want a multiple of 512 from 16 KiB to 8 MiB", t.BlockSize)
		}
		if t.BundleSize < 0 || t.BundleAge < 0 {
			return bad("bundle_size", "negative")
		}
	}
	if t.Cost < 0 {
		return bad("cost", "%d: want >= 0", t.Cost)
	}
	for i, g := range t.Include {
		if err := glob.Check(g); err != nil {
			return bad(fmt.Sprintf("include[%d]", i), "%v", err)
		}
	}
	for i, g := range t.Exclude {
		if err := glob.Check(g); err != nil {
			return bad(fmt.Sprintf("exclude[%d]", i), "%v", err)
		}
	}
	if t.MaxSize > 0 && t.MaxSize < t.MinSize {
		return bad("max_size", "%d is below min_size %d", t.MaxSize, t.MinSize)
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

// percent is a percentage written as 10, 2.5 or "10%" in TOML.
type percent float64

// UnmarshalTOML accepts a number or a string ending in "%".
func (p *percent) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		*p = percent(x)
		return nil
	case float64:
		*p = percent(x)
		return nil
	case string:
		f, err := parsePercent(x)
		*p = percent(f)
		return err
	}
	return fmt.Errorf("percentage %v: want e.g. 10 or \"10%%\"", v)
}

// parsePercent parses "10", "2.5" or "10%".
func parsePercent(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%")), 64)
	if err != nil || f <= 0 || f > 100 {
		return 0, fmt.Errorf("percentage %q: want more than 0 and at most 100, e.g. 10%%", s)
	}
	return f, nil
}

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
