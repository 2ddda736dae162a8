package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	p := filepath.Join(dir, "strata.toml")
	os.WriteFile(p, []byte(s), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c.EnsureDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Hot[0].Path != hot || c.Tiers[0].Name != "hdd" || c.Compressor.FrameSize != 4<<20 ||
		time.Duration(c.Policy.MinAge) != 30*24*time.Hour || c.Release.Copies != 1 {
		t.Fatalf("parsed: %+v", c)
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
		{"[nats]\nport = 70000", "nats.port"},
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
		var ce *ConfigError
		if err != nil && !errors.As(err, &ce) && !strings.Contains(err.Error(), "line") && !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: %v is not a ConfigError", tc.toml, err)
		}
	}
}
