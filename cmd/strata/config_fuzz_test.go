package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

// fuzzConfigRoot holds the directories that the fuzzer's configurations
// name, so that validation gets past the hot trees' existence checks: the
// same fixed path in every fuzz worker process, created if missing.
var fuzzConfigRoot = filepath.Join(os.TempDir(), "strata-fuzz-config")

// FuzzConfig feeds arbitrary TOML to the configuration loader as `strata
// run --config` does (parse, defaults, validation): it never panics; an
// error is either a parse error naming the file and line or a
// *pipeline.ConfigError naming the key; and whatever it accepts, every
// component the daemon builds from it accepts too (a configuration that
// validates and then fails at start, or runs with a negative interval, is a
// bug here).
func FuzzConfig(f *testing.F) {
	for _, d := range []string{"hot0", "hot1", "cold", "lib"} {
		if err := os.MkdirAll(filepath.Join(fuzzConfigRoot, d), 0o755); err != nil {
			f.Fatal(err)
		}
	}
	r := fuzzConfigRoot
	example, err := os.ReadFile("../../strata.example.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	f.Add(strings.NewReplacer(`"/srv/projects"`, `"`+r+`/hot0"`, `"/mnt/archive"`, `"`+r+`/cold"`,
		`"/var/lib/strata"`, `"`+r+`/data"`).Replace(string(example)))
	hot := "[[hot]]\npath = \"" + r + "/hot0\"\n"
	for _, s := range []string{
		"",
		hot,
		hot + "[[hot]]\npath = \"" + r + "/hot1\"\ncross_mounts = true\n",
		hot + oneTier("directory", `path = "`+r+`/cold"`, `require_mount = false`, `min_size = "1KiB"`) + oneTier("s3", `endpoint = "127.0.0.1:9000"`, `bucket = "b"`, `access_key = "a"`, `secret_key = "s"`, `tls = false`),
		hot + strings.Replace(oneTier("tape", `device = "emulator:`+r+`/lib"`, `pool = "main"`, `block_size = "256KiB"`, `bundle_size = "1GiB"`, `bundle_age = "5m"`), `name = "t"`, `name = "lto"`, 1),
		hot + oneTier("rclone", `remote = "dav:strata"`, `env = { RCLONE_CONFIG_DAV_TYPE = "webdav" }`) + "[release]\ncopies = 1\nfrom = [\"t\"]\n",
		hot + "[policy]\nscan_interval = \"1m\"\nmin_age = \"2.5d\"\nage_by = \"either\"\nmin_size = \"4KiB\"\ninclude = [\"**/*.bin\"]\nexclude = [\"tmp/**\"]\nhigh_watermark = \"90%\"\nlow_watermark = 80.5\n",
		"[compressor]\nlevel = 19\nframe_size = \"1MiB\"\nconcurrency = 2\n[interceptor]\nmode = \"open-perm\"\nwhole_file_below = \"1GiB\"\nstopped_grace = \"0s\"\nprobe_guard = \"log\"\n",
		"[scrub]\ninterval = \"24h\"\nsample = \"10%\"\nrate = \"1GiB\"\n[retention]\nkeep_deleted = \"7d\"\nkeep_versions = 3\n",
		"[nats]\nlisten = \"::1\"\nport = -1\nreader_consumers = 8\nreader_durables = [\"grafana\"]\n",
		"data_dir = \"" + r + "/data\"\nhost = \"nas-1\"\n",
		"[policy]\nmin_age = \"-1h\"\n",
		"a = [",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		c, err := parseConfig("fuzz.toml", []byte(text))
		if err != nil {
			var ce *pipeline.ConfigError
			if !strings.HasPrefix(err.Error(), "config fuzz.toml: ") || !errors.As(err, &ce) && !strings.Contains(err.Error(), "line ") {
				t.Fatalf("unclear parse error: %v", err)
			}
			return
		}
		c.EnsureDefaults()
		if err := c.Validate(); err != nil {
			var ce *pipeline.ConfigError
			if !errors.As(err, &ce) || ce.Key == "" {
				t.Fatalf("validation error names no key: %v", err)
			}
			return
		}
		checkAccepted(t, c)
	})
}

// checkAccepted fails t when a component the daemon builds from c refuses
// its part, or when c holds a value no component should run with.
func checkAccepted(t *testing.T, c Config) {
	t.Helper()
	for name, d := range map[string]duration{
		"policy.scan_interval": c.Policy.ScanInterval, "policy.min_age": c.Policy.MinAge,
		"retention.keep_deleted": c.Retention.KeepDeleted, "scrub.interval": c.Scrub.Interval,
	} {
		if d < 0 {
			t.Fatalf("accepted %s = %s", name, time.Duration(d))
		}
	}
	if g := c.Interceptor.StoppedGrace; g != nil && *g < 0 {
		t.Fatalf("accepted interceptor.stopped_grace = %s", time.Duration(*g))
	}
	for _, tc := range c.Tiers {
		if tc.BundleAge < 0 || tc.MinSize < 0 || tc.MaxSize < 0 || tc.Cost < 0 {
			t.Fatalf("tier %s: accepted a negative value: %+v", tc.Name, tc)
		}
		switch tc.Kind {
		case events.TierTape:
			tt := tapeTierConfig(c, tc)
			tt.EnsureDefaults()
			if err := tt.Validate(); err != nil {
				t.Fatalf("tier %s: config accepted, tape tier refuses it: %v", tc.Name, err)
			}
		case events.TierDirectory:
			dc := dirConfig(&tc)
			if err := dc.Validate(); err != nil {
				t.Fatalf("tier %s: config accepted, directory tier refuses it: %v", tc.Name, err)
			}
		case events.TierS3:
			sc := s3Config(&tc)
			sc.EnsureDefaults()
			if err := sc.Validate(); err != nil {
				t.Fatalf("tier %s: config accepted, s3 tier refuses it: %v", tc.Name, err)
			}
		case events.TierRclone:
			rc := rcloneConfig(&tc)
			rc.EnsureDefaults()
			if err := rc.Validate(); err != nil {
				t.Fatalf("tier %s: config accepted, rclone tier refuses it: %v", tc.Name, err)
			}
		default:
			t.Fatalf("tier %s: accepted kind %q", tc.Name, tc.Kind)
		}
	}
	pc := c.pipelineConfig()
	pc.EnsureDefaults()
	if err := pc.Validate(); err != nil {
		t.Fatalf("config accepted, pipeline refuses it: %v", err)
	}
}
