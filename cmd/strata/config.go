package main

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/strata-hsm/strata/cmd/internal/metrics"
	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/cluster"
	"github.com/strata-hsm/strata/workers/compressor"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/pruner"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/scrubber"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/rclone"
	"github.com/strata-hsm/strata/workers/tier/s3"
)

// Config is the daemon's configuration file (TOML). Every key is documented
// in README.md ("Configuration") and in strata.example.toml; the two and
// this struct must stay in step (TestExampleConfig checks the example).
type Config struct {
	DataDir string `toml:"data_dir"`
	Host    string `toml:"host"`

	NATS        NATSConfig        `toml:"nats"`
	Cluster     cluster.Config    `toml:"cluster"`
	Hot         []HotConfig       `toml:"hot"`
	Tiers       []TierConfig      `toml:"tier"`
	Release     ReleaseConfig     `toml:"release"`
	Policy      PolicyConfig      `toml:"policy"`
	Compressor  CompressorConfig  `toml:"compressor"`
	Interceptor InterceptorConfig `toml:"interceptor"`
	Scrub       ScrubConfig       `toml:"scrub"`
	Retention   RetentionConfig   `toml:"retention"`
	Metrics     MetricsConfig     `toml:"metrics"`
}

// MetricsConfig is the [metrics] section: where the Prometheus metrics,
// /healthz, /readyz and the status page are served (docs/METRICS.md).
type MetricsConfig struct {
	// Listen is host:port (default 127.0.0.1:9750); "off" (or an empty
	// string written in the file) serves nothing.
	Listen string `toml:"listen"`
	// Public must be true to listen on an address other than loopback:
	// the page and the metrics have no authentication, so serving them
	// on the network is an explicit choice.
	Public bool `toml:"public"`
}

// metricsOff is the metrics.listen value that serves nothing.
const metricsOff = "off"

// NATSConfig: the embedded server's client listener.
type NATSConfig struct {
	Listen string `toml:"listen"` // address, default 127.0.0.1
	Port   int    `toml:"port"`   // default 4250; -1: no TCP listener (the CLI cannot connect)
	// ReaderConsumers bounds the consumers outside subscribers may hold on
	// a stream at once (default 64); ReaderDurables names the durable
	// consumers they may keep (any other durable the daemon did not make
	// is removed at start and every 10 minutes).
	ReaderConsumers int      `toml:"reader_consumers"`
	ReaderDurables  []string `toml:"reader_durables"`
	// TLS makes the client listener TLS with client certificates from
	// the [cluster] bundle; required to listen off loopback.
	TLS bool `toml:"tls"`
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
	// RequireMount: the root must be a mount point, else the tier is
	// unavailable (nothing lands on the disk under an unmounted mount
	// point). Default: true when the root lies outside the data directory.
	RequireMount *bool `toml:"require_mount"`

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

	// s3, rclone: a request that moves no byte for this long fails, and
	// the tier counts as unavailable (store retries, recall falls over).
	// Default 2m (s3), 5m (rclone's own --timeout).
	Timeout duration `toml:"timeout"`

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
	// ResidentHead and ResidentTail: bytes at the start and at the end of
	// every released file that stay resident (rounded to whole blocks;
	// with either, the block at EOF stays too), so that `file`,
	// thumbnailers and media probes answer without a recall. Default 0:
	// the whole file is punched.
	ResidentHead size `toml:"resident_head"`
	ResidentTail size `toml:"resident_tail"`
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
	// StoppedGrace: once the daemon has stopped or died, programs touching
	// stubs wait this long for it to come back (a restart gives them their
	// bytes); then the holder denies them with EIO until it is back.
	// Unset: 30s; 0: deny at once.
	StoppedGrace *duration `toml:"stopped_grace"`
	// WholeFileBelow: stubs smaller than this are recalled whole when
	// opened, in mode pre-access (guards them against programs that look
	// for data with SEEK_DATA/SEEK_HOLE). Default 64 MiB; 1 disables.
	WholeFileBelow size `toml:"whole_file_below"`
	// WholeFilePrograms: a stub of any size opened by one of these
	// programs (by name) is recalled whole before its open returns.
	// Unset: cp, mv, install, tar, bsdtar, rsync, qemu-img, ddrescue;
	// [] for none.
	WholeFilePrograms []string `toml:"whole_file_programs"`
	// MtimeCheckPrograms: on ext4 (where a fill moves mtime for a moment)
	// a stub of any size opened by one of these programs is recalled whole
	// before its open returns. Unset: rclone; [] for none.
	MtimeCheckPrograms []string `toml:"mtime_check_programs"`
	// ReadAhead: after an access to a stub that is not filled whole, the
	// next read_ahead bytes are filled in the background (default 4 MiB).
	ReadAhead size `toml:"read_ahead"`
	// SequentialAfter: once this many bytes of a stub were read in
	// sequence, the rest of it is filled in the background (default 8 MiB).
	SequentialAfter size `toml:"sequential_after"`
	// FillWholeBelow: a stub smaller than this is filled whole in the
	// background after its first access (default 64 MiB). Larger stubs
	// stay partially resident unless read sequentially.
	FillWholeBelow size `toml:"fill_whole_below"`
	// ProbeGuard: what the probe guard (workers/kernelguard) does to a
	// program that asks a stub where its data is (SEEK_DATA, FIEMAP):
	// "kill" (default: SIGKILL before it acts on the answer, and the stub
	// is recalled whole for its retry), "log" (only logged and recalled),
	// "off" (not loaded: such a program copies a large stub as zeros).
	ProbeGuard string `toml:"probe_guard"`
	// Rules: what programs may do with stubs ([[interceptor.rule]]; see
	// workers/interceptor/rules.go). The first rule that matches a process
	// decides; a process none matches recalls.
	Rules []RuleConfig `toml:"rule"`
	// StormRecalls within StormWindow started by one process is a recall
	// storm: logged and published as recall.storm. Unset: 50 in 1s; a
	// negative storm_recalls turns detection off.
	StormRecalls int      `toml:"storm_recalls"`
	StormWindow  duration `toml:"storm_window"`
}

// RuleConfig is one [[interceptor.rule]]: which processes (every key
// given must match; a list matches if one item does) and what they may do.
type RuleConfig struct {
	Name   string   `toml:"name"`
	Exe    []string `toml:"exe"`    // executable paths ("/usr/bin/tar", "/opt/backup/**") or base names ("tar")
	Comm   []string `toml:"comm"`   // process names (/proc/PID/comm), path.Match patterns
	UID    []int64  `toml:"uid"`    // effective uids
	Cgroup []string `toml:"cgroup"` // cgroup v2 paths, each with the cgroups below it
	Action string   `toml:"action"` // recall (default), deny, throttle, head-only
	Errno  string   `toml:"errno"`  // deny, head-only: default EPERM
	// BytesPerSec, RecallsPerMin: the budget of a throttle rule.
	BytesPerSec   size  `toml:"bytes_per_sec"`
	RecallsPerMin int64 `toml:"recalls_per_min"`
}

// interceptor.probe_guard values.
const (
	probeGuardKill = "kill"
	probeGuardLog  = "log"
	probeGuardOff  = "off"
)

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

// LoadConfig reads a TOML file. Unknown keys are errors (a typo must not
// silently fall back to a default).
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return parseConfig(path, data)
}

// parseConfig decodes the TOML text of the file named path.
func parseConfig(path string, data []byte) (Config, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			if perr.LastKey != "" {
				return Config{}, fmt.Errorf("config %s: line %d: %w", path, perr.Position.Line, pipeline.NewConfigError(perr.LastKey, nil, errors.New(perr.Message)))
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
		return Config{}, fmt.Errorf("config %s: %w", path, pipeline.NewConfigError(keys[0], nil, errors.New("unknown key")))
	}
	if md.IsDefined("metrics", "listen") && c.Metrics.Listen == "" {
		c.Metrics.Listen = metricsOff // written empty: none, not the default
	}
	return c, nil
}

// EnsureDefaults fills unset values.
func (c *Config) EnsureDefaults() {
	c.DataDir = cmp.Or(c.DataDir, defaultDataDir)
	if c.Host == "" {
		name, _ := os.Hostname()
		c.Host = events.HostToken(name)
	}
	c.NATS.Listen = cmp.Or(c.NATS.Listen, "127.0.0.1")
	c.NATS.Port = cmp.Or(c.NATS.Port, defaultPort)
	c.Metrics.Listen = cmp.Or(c.Metrics.Listen, metrics.DefaultListen)
	if len(c.Tiers) == 0 {
		c.Tiers = []TierConfig{{Name: "cold", Kind: events.TierDirectory, Path: filepath.Join(c.DataDir, "cold")}}
	}
	for i := range c.Tiers {
		t := &c.Tiers[i]
		t.Cost = cmp.Or(t.Cost, defaultCost(t.Kind))
		if t.Kind == events.TierDirectory && t.RequireMount == nil {
			outside := !within(t.Path, c.DataDir)
			t.RequireMount = &outside
		}
		if t.Kind == events.TierTape {
			t.BlockSize = cmp.Or(t.BlockSize, 512<<10)
		}
	}
	sched := c.scrubSchedule()
	sched.EnsureDefaults()
	c.Scrub.Sample, c.Scrub.Rate = percent(sched.Sample), size(sched.Rate)
	c.Retention.KeepDeleted = cmp.Or(c.Retention.KeepDeleted, duration(30*24*time.Hour))
	c.Retention.KeepVersions = cmp.Or(c.Retention.KeepVersions, 1)
	c.Release.Copies = cmp.Or(c.Release.Copies, 1)
	pol := c.scannerConfig()
	pol.EnsureDefaults()
	c.Policy.ScanInterval, c.Policy.MinAge, c.Policy.AgeBy = duration(pol.ScanInterval), duration(pol.MinAge), pol.AgeBy
	c.Policy.MinSize, c.Policy.HighWatermark, c.Policy.LowWatermark = size(pol.MinSize), pol.HighWatermark, pol.LowWatermark
	c.Compressor.Level = cmp.Or(c.Compressor.Level, object.DefaultLevel)
	c.Compressor.FrameSize = cmp.Or(c.Compressor.FrameSize, size(object.DefaultFrameSize))
	c.Interceptor.Mode = cmp.Or(c.Interceptor.Mode, string(interceptor.ModeAuto))
	c.Interceptor.ProbeGuard = cmp.Or(c.Interceptor.ProbeGuard, probeGuardKill)
	if c.Interceptor.Holder == nil {
		on := true
		c.Interceptor.Holder = &on
	}
	c.Interceptor.WholeFileBelow = cmp.Or(c.Interceptor.WholeFileBelow, size(interceptor.DefaultWholeFileBelow))
	c.Interceptor.ReadAhead = cmp.Or(c.Interceptor.ReadAhead, size(interceptor.DefaultReadAhead))
	c.Interceptor.SequentialAfter = cmp.Or(c.Interceptor.SequentialAfter, size(interceptor.DefaultSequentialAfter))
	c.Interceptor.FillWholeBelow = cmp.Or(c.Interceptor.FillWholeBelow, size(interceptor.DefaultFillWholeBelow))
	if c.Interceptor.MtimeCheckPrograms == nil {
		c.Interceptor.MtimeCheckPrograms = interceptor.DefaultMtimeCheckPrograms()
	}
	if c.Interceptor.WholeFilePrograms == nil {
		c.Interceptor.WholeFilePrograms = interceptor.DefaultWholeFilePrograms()
	}
	c.Interceptor.StormRecalls = cmp.Or(c.Interceptor.StormRecalls, interceptor.DefaultStormRecalls)
	c.Interceptor.StormWindow = cmp.Or(c.Interceptor.StormWindow, duration(interceptor.DefaultStormWindow))
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

// Validate checks every value and names the first bad key. Each section
// is checked by the package whose configuration it is (pipeline, scanner,
// compressor, interceptor, the tiers, scrubber, pruner), which names the
// key; what spans sections (overlapping trees, release.copies against the
// tiers) is checked here. Every error is a *pipeline.ConfigError.
func (c *Config) Validate() error {
	bad := pipeline.BadConfig
	pc := c.pipelineConfig()
	pc.EnsureDefaults()
	if err := pc.Validate(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, h := range c.Hot {
		key := fmt.Sprintf("hot[%d].path", i)
		if !filepath.IsAbs(h.Path) || filepath.Clean(h.Path) != h.Path {
			return bad(key, h.Path, "want a clean absolute path")
		}
		if fi, err := os.Stat(h.Path); err != nil {
			return pipeline.NewConfigError(key, nil, err)
		} else if !fi.IsDir() {
			return bad(key, h.Path, "not a directory")
		}
		for p := range seen {
			if within(h.Path, p) || within(p, h.Path) {
				return bad(key, h.Path, "overlaps hot tree %s", p)
			}
		}
		seen[h.Path] = true
		if within(c.DataDir, h.Path) || within(h.Path, c.DataDir) {
			return bad(key, h.Path, "overlaps the data directory %s", c.DataDir)
		}
	}
	names := map[string]bool{}
	for i, t := range c.Tiers {
		key := fmt.Sprintf("tier[%d]", i)
		if !events.ValidToken(t.Name) {
			return bad(key+".name", t.Name, "want letters, digits, '-' or '_'")
		}
		if names[t.Name] {
			return bad(key+".name", t.Name, "used twice")
		}
		names[t.Name] = true
		if err := c.validateTier(&t); err != nil {
			return pipeline.Within(key, err)
		}
	}
	for i, f := range c.Release.From {
		if !names[f] {
			return bad(fmt.Sprintf("release.from[%d]", i), f, "not a configured tier")
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
		return bad("release.copies", c.Release.Copies, "want 1 to %d (the tiers that count)", counting)
	}
	if c.Release.Copies > takeAll {
		// A tier with include/exclude/min_size/max_size may refuse a file:
		// only tiers that take every file guarantee that each file can
		// reach the required copies (else it would never be released).
		return bad("release.copies", c.Release.Copies, "only %d of the tiers that count take every file (tiers with include, exclude, min_size or max_size may refuse one, which could then never be released)", takeAll)
	}
	sched := c.scrubSchedule()
	if err := sched.Validate(); err != nil {
		return pipeline.Within("scrub", err)
	}
	if err := c.retention().Validate(); err != nil {
		return pipeline.Within("retention", err)
	}
	pol := c.scannerConfig()
	if err := pol.Validate(); err != nil {
		return pipeline.Within("policy", err)
	}
	comp := c.compressorConfig("/staging")
	comp.EnsureDefaults()
	if err := comp.Validate(); err != nil {
		return pipeline.Within("compressor", err)
	}
	if c.Compressor.Concurrency < 0 {
		return bad("compressor.concurrency", c.Compressor.Concurrency, "want >= 0 (0: one per CPU)")
	}
	ic := c.interceptorConfig()
	ic.EnsureDefaults()
	if err := ic.Validate(); err != nil {
		return pipeline.Within("interceptor", err)
	}
	for key, v := range map[string]size{"release.resident_head": c.Release.ResidentHead, "release.resident_tail": c.Release.ResidentTail} {
		if v < 0 || v > 1<<30 {
			return bad(key, v, "want a size from 0 (none) to 1GiB")
		}
	}
	if c.Interceptor.WholeFileBelow < 0 {
		return bad("interceptor.whole_file_below", c.Interceptor.WholeFileBelow, "want a size (1 disables)")
	}
	switch c.Interceptor.ProbeGuard {
	case probeGuardKill, probeGuardLog, probeGuardOff:
	default:
		return bad("interceptor.probe_guard", c.Interceptor.ProbeGuard, `want "kill", "log" or "off"`)
	}
	if l := c.Metrics.Listen; l != metricsOff {
		host, port, err := net.SplitHostPort(l)
		if err != nil {
			return bad("metrics.listen", l, `want host:port (e.g. "127.0.0.1:9750") or "off"`)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return bad("metrics.listen", l, "want a port 0-65535")
		}
		if !metrics.IsLoopback(l) && !c.Metrics.Public {
			return bad("metrics.listen", l, "%q is not a loopback address: metrics and the status page have no authentication; set metrics.public = true to serve them on the network, or listen on 127.0.0.1", host)
		}
	}
	if g := c.Interceptor.StoppedGrace; g != nil && *g < 0 {
		return bad("interceptor.stopped_grace", *g, "want a duration >= 0 (0: deny at once)")
	}
	return nil
}

// tierKeys are the keys of each kind of tier: a key of another kind is a
// typo or a copy-paste error, never ignored.
var tierKeys = map[string][]string{
	events.TierDirectory: {"path", "require_mount"},
	events.TierS3:        {"endpoint", "region", "bucket", "prefix", "access_key", "secret_key", "tls", "timeout"},
	events.TierRclone:    {"remote", "binary", "env", "timeout"},
	events.TierTape:      {"device", "pool", "block_size", "bundle_size", "bundle_age"},
}

// validateTier checks one [[tier]] table; errors name keys of the table.
func (c *Config) validateTier(t *TierConfig) error {
	bad := pipeline.BadConfig
	set := map[string]bool{
		"path": t.Path != "", "require_mount": t.RequireMount != nil, "endpoint": t.Endpoint != "", "region": t.Region != "", "bucket": t.Bucket != "",
		"prefix": t.Prefix != "", "access_key": t.AccessKey != "", "secret_key": t.SecretKey != "", "tls": t.TLS != nil,
		"remote": t.Remote != "", "binary": t.Binary != "", "env": len(t.Env) > 0,
		"device": t.Device != "", "pool": t.Pool != "", "block_size": t.BlockSize != 0 && t.Kind != events.TierTape,
		"bundle_size": t.BundleSize != 0, "bundle_age": t.BundleAge != 0, "timeout": t.Timeout != 0,
	}
	own, ok := tierKeys[t.Kind]
	if !ok {
		return bad("kind", t.Kind, "want directory, s3, rclone or tape")
	}
	for k, isSet := range set {
		if isSet && !slices.Contains(own, k) {
			return bad(k, nil, "not a key of %s tiers", t.Kind)
		}
	}
	switch t.Kind {
	case events.TierDirectory:
		dc := dirConfig(t)
		if err := dc.Validate(); err != nil {
			return err
		}
		for _, h := range c.Hot {
			if within(t.Path, h.Path) || within(h.Path, t.Path) {
				return bad("path", t.Path, "overlaps hot tree %s: a cold tier must live elsewhere", h.Path)
			}
		}
	case events.TierS3:
		if (t.AccessKey == "") != (t.SecretKey == "") {
			return bad("secret_key", nil, "access_key and secret_key go together")
		}
		sc := s3Config(t)
		sc.EnsureDefaults()
		if err := sc.Validate(); err != nil {
			return err
		}
	case events.TierRclone:
		for k := range t.Env {
			if k == "" || strings.ContainsAny(k, "= \t\n\x00") {
				return bad("env", k, "not an environment variable name")
			}
		}
		rc := rcloneConfig(t)
		rc.EnsureDefaults()
		if err := rc.Validate(); err != nil {
			return err
		}
	case events.TierTape:
		dev, emu := strings.CutPrefix(t.Device, "emulator:")
		if !filepath.IsAbs(dev) || !emu && !strings.HasPrefix(filepath.Base(dev), "nst") {
			return bad("device", t.Device, "want a non-rewinding drive /dev/nstX or emulator:/abs/dir")
		}
		if !events.ValidToken(t.Pool) {
			return bad("pool", t.Pool, "want letters, digits, '-' or '_'")
		}
		// The tape format's limits (bundle): a block size the tier would
		// refuse at start must be refused here, naming the key.
		if t.BlockSize < bundle.MinBlockSize || t.BlockSize > bundle.MaxBlockSize || t.BlockSize%512 != 0 {
			return bad("block_size", int64(t.BlockSize), "want a multiple of 512 from 256 KiB to 1 MiB")
		}
		if t.BundleSize != 0 && t.BundleSize < bundle.MaxBlockSize {
			return bad("bundle_size", int64(t.BundleSize), "want at least 1 MiB (0: the default)")
		}
		if t.BundleAge < 0 {
			return bad("bundle_age", time.Duration(t.BundleAge), "negative")
		}
	}
	if t.Cost < 0 {
		return bad("cost", t.Cost, "want >= 0")
	}
	if t.Timeout != 0 && time.Duration(t.Timeout) < time.Second {
		return bad("timeout", time.Duration(t.Timeout), "want at least 1s (unset: the tier's default)")
	}
	_, err := tier.NewFilter(t.Include, t.Exclude, int64(t.MinSize), int64(t.MaxSize))
	return err
}

// ---- each section as its package's configuration ----

// pipelineConfig is the event log's configuration.
func (c *Config) pipelineConfig() pipeline.Config {
	pc := pipeline.Config{DataDir: c.DataDir, Host: c.Host, ListenHost: c.NATS.Listen, Port: c.NATS.Port,
		Durables: stageNamesFor(*c), ReaderConsumers: c.NATS.ReaderConsumers, ReaderDurables: c.NATS.ReaderDurables,
		ClientTLS: c.NATS.TLS}
	if c.Cluster.Listen != "" || c.Cluster.Bundle != "" || len(c.Cluster.Routes) > 0 || c.Cluster.Name != "" {
		cl := c.Cluster
		pc.Cluster = &cl
	}
	return pc
}

func dirConfig(t *TierConfig) dir.Config {
	return dir.Config{Name: t.Name, Root: t.Path, RequireMount: t.RequireMount != nil && *t.RequireMount}
}

func s3Config(t *TierConfig) s3.Config {
	return s3.Config{Name: t.Name, Endpoint: t.Endpoint, Region: t.Region, Bucket: t.Bucket,
		Prefix: t.Prefix, AccessKey: t.AccessKey, SecretKey: t.SecretKey, NoTLS: !t.useTLS(),
		IdleTimeout: time.Duration(t.Timeout)}
}

func rcloneConfig(t *TierConfig) rclone.Config {
	c := rclone.Config{Name: t.Name, Remote: t.Remote, Binary: t.Binary, Env: t.envList()}
	if t.Timeout > 0 {
		// rclone's I/O idle timeout, and its connect timeout no longer.
		d := time.Duration(t.Timeout)
		c.Flags = []string{"--timeout=" + d.String(), "--contimeout=" + min(d, time.Minute).String()}
	}
	return c
}

// scrubSchedule is the [scrub] section.
func (c *Config) scrubSchedule() scrubber.Schedule {
	return scrubber.Schedule{Interval: time.Duration(c.Scrub.Interval), Sample: float64(c.Scrub.Sample), Rate: int64(c.Scrub.Rate)}
}

// retention is the [retention] section (Now set for validation only).
func (c *Config) retention() pruner.Policy {
	return pruner.Policy{KeepDeleted: time.Duration(c.Retention.KeepDeleted), KeepVersions: c.Retention.KeepVersions, Now: time.Now()}
}

// scannerConfig is the [policy] section.
func (c *Config) scannerConfig() scanner.Config {
	p := c.Policy
	return scanner.Config{ScanInterval: time.Duration(p.ScanInterval), MinAge: time.Duration(p.MinAge), AgeBy: p.AgeBy,
		MinSize: int64(p.MinSize), Include: p.Include, Exclude: p.Exclude, Pinned: p.Pinned,
		HighWatermark: p.HighWatermark, LowWatermark: p.LowWatermark}
}

// compressorConfig is the [compressor] section, staging into stagingDir.
func (c *Config) compressorConfig(stagingDir string) compressor.Config {
	return compressor.Config{StagingDir: stagingDir, Object: object.Options{
		FrameSize: int(c.Compressor.FrameSize), Level: c.Compressor.Level, Concurrency: c.Compressor.Concurrency}}
}

// interceptorConfig is the [interceptor] section (the holder wiring is the
// daemon's: see buildStages).
func (c *Config) interceptorConfig() interceptor.Config {
	ic := interceptor.Config{Mode: interceptor.Mode(c.Interceptor.Mode), WholeFileBelow: int64(c.Interceptor.WholeFileBelow),
		WholeFilePrograms: c.Interceptor.WholeFilePrograms, MtimeCheckPrograms: c.Interceptor.MtimeCheckPrograms,
		ReadAhead: int64(c.Interceptor.ReadAhead), SequentialAfter: int64(c.Interceptor.SequentialAfter),
		FillWholeBelow: int64(c.Interceptor.FillWholeBelow),
		ResidentHead:   int64(c.Release.ResidentHead), ResidentTail: int64(c.Release.ResidentTail)}
	if g := c.Interceptor.StoppedGrace; g != nil {
		ic.HolderGrace = cmp.Or(time.Duration(*g), -1) // 0: deny at once
	}
	ic.StormRecalls, ic.StormWindow = c.Interceptor.StormRecalls, time.Duration(c.Interceptor.StormWindow)
	for _, r := range c.Interceptor.Rules {
		ic.Rules = append(ic.Rules, interceptor.Rule{Name: r.Name, Exe: r.Exe, Comm: r.Comm, UID: r.UID, Cgroup: r.Cgroup,
			Action: interceptor.Action(r.Action), Errno: r.Errno, BytesPerSec: int64(r.BytesPerSec), RecallsPerMin: r.RecallsPerMin})
	}
	return ic
}

// hotRoots lists the configured hot trees.
func (c *Config) hotRoots() []string {
	var out []string
	for _, h := range c.Hot {
		out = append(out, h.Path)
	}
	return out
}

// scanPolicy is the scanner's policy over the hot trees.
func (c *Config) scanPolicy() scanner.Policy {
	cross := false
	for _, h := range c.Hot {
		cross = cross || h.CrossMounts
	}
	return c.scannerConfig().Policy(c.hotRoots(), c.DataDir, cross)
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

// maxDays is the longest duration in days that a time.Duration holds
// (about 292 years), rounded down.
const maxDays = float64(math.MaxInt64/int64(24*time.Hour)) - 1

func (d *duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		// !(days >= 0) also refuses NaN; past maxDays the nanoseconds
		// overflow (they became a negative duration).
		if err != nil || !(days >= 0) || days > maxDays {
			return fmt.Errorf("duration %q: want e.g. 30d, 12h, 10m (at most %.0fd)", s, maxDays)
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
