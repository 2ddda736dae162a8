package main

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/interceptor"
)

// TestExampleConfig: the commented example parses with no unknown key and,
// with its example paths pointed at real directories, validates.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("../../strata.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hot, cold := filepath.Join(dir, "hot"), filepath.Join(dir, "cold")
	os.Mkdir(hot, 0o755)
	s := strings.NewReplacer(`"/srv/projects"`, `"`+hot+`"`, `"/mnt/archive"`, `"`+cold+`"`,
		`"/var/lib/strata"`, `"`+filepath.Join(dir, "data")+`"`).Replace(string(b))
	c := loadValid(t, s)
	if c.Hot[0].Path != hot || c.Tiers[0].Name != "hdd" || c.Compressor.FrameSize != 4<<20 ||
		time.Duration(c.Policy.MinAge) != 30*24*time.Hour || c.Release.Copies != 1 {
		t.Fatalf("parsed: %+v", c)
	}
}

// loadValid loads the TOML text as strata run would (file, defaults,
// validation) and fails the test on any error.
func loadValid(t *testing.T, toml string) Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c.EnsureDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// oneTier returns a one-tier config of kind with extra keys.
func oneTier(kind string, keys ...string) string {
	return "[[tier]]\nname = \"t\"\nkind = \"" + kind + "\"\n" + strings.Join(keys, "\n") + "\n"
}

// TestExampleTiers: the commented example tiers of strata.example.toml,
// uncommented, parse and validate — and "2 of: hdd, s3, offsite" holds.
func TestExampleTiers(t *testing.T) {
	b, err := os.ReadFile("../../strata.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "# BEGIN EXAMPLE TIERS\n"), strings.Index(s, "# END EXAMPLE TIERS")
	if i < 0 || j < i {
		t.Fatal("example tiers block not found")
	}
	var lines []string
	for _, l := range strings.Split(s[i+len("# BEGIN EXAMPLE TIERS\n"):j], "\n") {
		lines = append(lines, strings.TrimPrefix(strings.TrimPrefix(l, "#"), " "))
	}
	dir := t.TempDir()
	conf := "data_dir = \"" + dir + "\"\n" + oneTier("directory", `path = "`+filepath.Join(dir, "cold")+`"`) +
		strings.Join(lines, "\n") + "\n[release]\ncopies = 2\nfrom = [\"t\", \"offsite\", \"lto\"]\n"
	c := loadValid(t, conf)
	if len(c.Tiers) != 4 || c.Tiers[1].Kind != "s3" || c.Tiers[1].useTLS() != true || c.Tiers[1].MaxSize != 50<<30 ||
		c.Tiers[2].envList()[0] != "RCLONE_CONFIG_DAV_TYPE=webdav" || c.Tiers[2].Cost != 20 ||
		c.Tiers[3].BlockSize != 512<<10 || c.Tiers[3].Cost != 30 || c.Tiers[0].Cost != 10 {
		t.Fatalf("parsed: %+v", c.Tiers)
	}
	// copies = 3 of t, offsite, lto: fine; of s3 (max_size) too: not every
	// file can reach 3 when s3 is one of the three that must take it.
	c.Release.From = []string{"t", "s3", "lto"}
	c.Release.Copies = 3
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "release.copies") {
		t.Fatalf("3 of t, s3 (max_size), lto: %v", err)
	}
}

// TestConfigErrors: each bad value is refused with the key named.
func TestConfigErrors(t *testing.T) {
	hot := t.TempDir()
	for _, tc := range []struct {
		toml, key string
	}{
		{"data_dir = \"rel\"", "data_dir"},
		{"host = \"a.b\"", "host"},
		{"bogus = 1", "bogus"},
		{"[policy]\nmin_age = \"soon\"", "min_age"},
		{"[policy]\nage_by = \"ctime\"", "policy.age_by"},
		{"[compressor]\nlevel = 40", "compressor.level"},
		{"[compressor]\nframe_size = \"1KiB\"", "compressor.frame_size"},
		{"[[hot]]\npath = \"/does/not/exist\"", "hot[0].path"},
		{"[policy]\nhigh_watermark = 50\nlow_watermark = 60", "policy.low_watermark"},
		{"[[hot]]\npath = \"" + hot + "\"\n[[tier]]\nname = \"x\"\nkind = \"directory\"\npath = \"" + hot + "/cold\"", "tier[0].path"},
		{"[[tier]]\nname = \"x\"\nkind = \"floppy\"\npath = \"/x\"", "tier[0].kind"},
		{"[release]\ncopies = 2", "release.copies"},
		{"[release]\nfrom = [\"nope\"]", "release.from[0]"},
		{"[interceptor]\nmode = \"fast\"", "interceptor.mode"},
		{"[interceptor]\nwhole_file_programs = [\"/usr/bin/cp\"]", "interceptor.whole_file_programs"},
		{"[interceptor]\nwhole_file_programs = [\"\"]", "interceptor.whole_file_programs"},
		{"[interceptor]\nwhole_file_below = \"big\"", "whole_file_below"},
		{"[[interceptor.rule]]\naction = \"deny\"", "interceptor.rule[0].exe"},
		{"[[interceptor.rule]]\nexe = [\"tar\"]\naction = \"block\"", "interceptor.rule[0].action"},
		{"[[interceptor.rule]]\nexe = [\"tar\"]\n[[interceptor.rule]]\ncomm = [\"rsync\"]\naction = \"deny\"\nerrno = \"EACCES\"", "interceptor.rule[1].errno"},
		{"[[interceptor.rule]]\nexe = [\"tar\"]\naction = \"throttle\"", "interceptor.rule[0].bytes_per_sec"},
		{"[[interceptor.rule]]\nexe = [\"tar\"]\naction = \"throttle\"\nbytes_per_sec = \"fast\"", "bytes_per_sec"},
		{"[[interceptor.rule]]\nexe = [\"tar\"]\nuid = [-3]", "interceptor.rule[0].uid[0]"},
		{"[[interceptor.rule]]\ncgroup = [\"backup.service\"]", "interceptor.rule[0].cgroup[0]"},
		{"[[interceptor.rule]]\nexec = [\"tar\"]", "interceptor.rule.exec"},
		{"[interceptor]\nstorm_window = \"-1s\"", "interceptor.storm_window"},
		{"[interceptor]\nstorm_recalls = 1000000", "interceptor.storm_recalls"},
		{"[nats]\nport = 70000", "nats.port"},
		{"[nats]\nlisten = \"0.0.0.0\"", "nats.listen"}, // credentials in clear off loopback
		{oneTier("s3", `endpoint = "http://h:9000"`, `bucket = "b"`, `access_key = "a"`, `secret_key = "s"`), "tier[0].endpoint"},
		{oneTier("s3", `endpoint = "h:9000"`, `access_key = "a"`, `secret_key = "s"`), "tier[0].bucket"},
		{oneTier("s3", `endpoint = "h:9000"`, `bucket = "b"`, `access_key = "a"`), "tier[0].secret_key"},
		{oneTier("s3", `endpoint = "h:9000"`, `bucket = "b"`, `prefix = "/x"`, `access_key = "a"`, `secret_key = "s"`), "tier[0].prefix"},
		{oneTier("s3", `endpoint = "h:9000"`, `bucket = "b"`, `access_key = "a"`, `secret_key = "s"`, `path = "/x"`), "tier[0].path"},
		{oneTier("s3", `endpoint = "h"`, `bucket = "b"`, `access_key = "a"`, `secret_key = "s"`, `tls = "yes"`), "tls"},
		{oneTier("s3", `endpoint = "h"`, `bucket = "b"`, `access_key = "a"`, `secret_key = "s"`, `timeout = "10ms"`), "tier[0].timeout"},
		{oneTier("rclone", `remote = "r:x"`, `timeout = "-1s"`), "tier[0].timeout"},
		{oneTier("directory", `path = "/x"`, `timeout = "1m"`), "tier[0].timeout"},
		{oneTier("rclone", `remote = "nocolon"`), "tier[0].remote"},
		{oneTier("rclone", `remote = "r:p"`, `env = { "A=B" = "c" }`), "tier[0].env"},
		{oneTier("rclone", `remote = "r:p"`, `bucket = "b"`), "tier[0].bucket"},
		{oneTier("tape", `device = "/dev/st0"`, `pool = "p"`), "tier[0].device"},
		{oneTier("tape", `device = "emulator:rel"`, `pool = "p"`), "tier[0].device"},
		{oneTier("tape", `device = "/dev/nst0"`, `pool = "a.b"`), "tier[0].pool"},
		{oneTier("tape", `device = "/dev/nst0"`, `pool = "p"`, `block_size = 1000`), "tier[0].block_size"},
		// Found by FuzzConfig: accepted here, refused by the tape tier at start.
		{oneTier("tape", `device = "/dev/nst0"`, `pool = "p"`, `block_size = "64KiB"`), "tier[0].block_size"},
		{oneTier("tape", `device = "/dev/nst0"`, `pool = "p"`, `bundle_size = 1`), "tier[0].bundle_size"},
		// A day count past what a duration holds overflowed to a negative duration.
		{"[retention]\nkeep_deleted = \"1e6d\"", "keep_deleted"},
		{"[policy]\nmin_age = \"NaNd\"", "min_age"},
		{oneTier("directory", `path = "/x"`, `include = ["[bad"]`), "tier[0].include[0]"},
		{oneTier("directory", `path = "/x"`, `exclude = [""]`), "tier[0].exclude[0]"},
		{oneTier("directory", `path = "/x"`, `min_size = "2MiB"`, `max_size = "1MiB"`), "tier[0].max_size"},
		{oneTier("directory", `path = "/x"`, `cost = -1`), "tier[0].cost"},
		// copies = 1, but the only tier takes some files: one could never be released.
		{oneTier("directory", `path = "/x"`, `min_size = "1MiB"`), "release.copies"},
		{oneTier("directory", `path = "/x"`) + "\n[release]\ncopies = 2", "release.copies"},
		{"[scrub]\ninterval = \"10s\"", "scrub.interval"},
		{"[scrub]\nsample = -5", "scrub.sample"},
		{"[scrub]\nsample = 101", "scrub.sample"},
		{"[scrub]\nsample = \"half\"", "sample"},
		{"[scrub]\nrate = \"1KiB\"", "scrub.rate"},
		{"[retention]\nkeep_versions = -1", "retention.keep_versions"},
		{"[retention]\nkeep_deleted = \"forever\"", "keep_deleted"},
	} {
		p := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(p, []byte(tc.toml), 0o644)
		c, err := LoadConfig(p)
		if err == nil {
			c.EnsureDefaults()
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: error %v, want one naming %s", tc.toml, err, tc.key)
		}
		var ce *pipeline.ConfigError
		if err != nil && !errors.As(err, &ce) && !strings.Contains(err.Error(), "line") && !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: %v is not a ConfigError", tc.toml, err)
		}
	}
}

// TestWholeFilePrograms: unset gives the default list, [] gives none (not
// the default), and a list is taken as written.
func TestWholeFilePrograms(t *testing.T) {
	for _, tc := range []struct {
		toml string
		want []string
	}{
		{"", interceptor.DefaultWholeFilePrograms()},
		{"[interceptor]\nwhole_file_programs = []", []string{}},
		{"[interceptor]\nwhole_file_programs = [\"cp\", \"borg\"]", []string{"cp", "borg"}},
	} {
		c := loadValid(t, tc.toml)
		got := c.Interceptor.WholeFilePrograms
		if got == nil || !slices.Equal(got, tc.want) || c.Interceptor.WholeFileBelow != interceptor.DefaultWholeFileBelow {
			t.Errorf("%q: programs %q (nil: %v), below %d; want %q", tc.toml, got, got == nil, c.Interceptor.WholeFileBelow, tc.want)
		}
	}
}

// TestRuleConfig: [[interceptor.rule]] tables reach the interceptor as
// written, in order, and the storm detector has its defaults.
func TestRuleConfig(t *testing.T) {
	c := loadValid(t, `
[interceptor]
storm_recalls = 200

[[interceptor.rule]]
name = "backup"
exe = ["/usr/bin/tar", "restic"]
cgroup = ["/system.slice/backup.service"]
action = "deny"

[[interceptor.rule]]
comm = ["updatedb*"]
uid = [0, 34]
action = "throttle"
bytes_per_sec = "10MiB"
recalls_per_min = 600

[[interceptor.rule]]
name = "thumbnails"
comm = ["tumblerd"]
action = "head-only"
errno = "EAGAIN"
`)
	ic := c.interceptorConfig()
	want := []interceptor.Rule{
		{Name: "backup", Exe: []string{"/usr/bin/tar", "restic"}, Cgroup: []string{"/system.slice/backup.service"}, Action: interceptor.ActionDeny},
		{Comm: []string{"updatedb*"}, UID: []int64{0, 34}, Action: interceptor.ActionThrottle, BytesPerSec: 10 << 20, RecallsPerMin: 600},
		{Name: "thumbnails", Comm: []string{"tumblerd"}, Action: interceptor.ActionHeadOnly, Errno: "EAGAIN"},
	}
	if !reflect.DeepEqual(ic.Rules, want) {
		t.Fatalf("rules %+v\nwant %+v", ic.Rules, want)
	}
	if ic.StormRecalls != 200 || ic.StormWindow != interceptor.DefaultStormWindow {
		t.Fatalf("storm %d in %v", ic.StormRecalls, ic.StormWindow)
	}
	dc := loadValid(t, "")
	if d := dc.interceptorConfig(); len(d.Rules) != 0 || d.StormRecalls != interceptor.DefaultStormRecalls {
		t.Fatalf("defaults: rules %+v, storm %d", d.Rules, d.StormRecalls)
	}
}
