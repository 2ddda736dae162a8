package rclone_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/rclone"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

func damage(t *testing.T, path string, how tiertest.Damage) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	switch how {
	case tiertest.Truncate:
		b = b[:len(b)/2]
	case tiertest.FlipByte:
		b[len(b)/2] ^= 0x40
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

var testFlags = []string{"--contimeout=5s", "--low-level-retries=2"}

func TestConformance(t *testing.T) {
	for _, proto := range []string{"webdav", "sftp"} {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			srv := tiertest.StartRclone(t, proto)
			var n atomic.Int64
			tiertest.Run(t, tiertest.Suite{
				New: func(t *testing.T) tier.Target {
					tgt, err := rclone.Open(rclone.Config{
						Name: "remote", Remote: fmt.Sprintf("%s:t%d/strata", srv.Remote, n.Add(1)), Env: srv.Env, Flags: testFlags,
					}, slog.New(slog.DiscardHandler))
					if err != nil {
						t.Fatal(err)
					}
					return tgt
				},
				Damage: func(t *testing.T, tgt tier.Target, id string, how tiertest.Damage) {
					p := tgt.(*rclone.Target).Path(tier.ObjectKey(id))
					damage(t, filepath.Join(srv.Dir, p[len(srv.Remote)+1:]), how)
				},
			})
		})
	}
}

func TestUnavailable(t *testing.T) {
	stratatest.NeedTool(t, "rclone")
	addr := fmt.Sprintf("127.0.0.1:%d", tiertest.FreePort(t))
	tgt, err := rclone.Open(rclone.Config{
		Name: "remote", Remote: "dead:strata",
		Env:   []string{"RCLONE_CONFIG=/dev/null", "RCLONE_CONFIG_DEAD_TYPE=webdav", "RCLONE_CONFIG_DEAD_URL=http://" + addr},
		Flags: []string{"--contimeout=2s", "--low-level-retries=1", "--retries=1"},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tiertest.CheckUnavailable(t, tgt)
}

func TestConfig(t *testing.T) {
	for _, c := range []rclone.Config{
		{Name: "", Remote: "r:p"},
		{Name: "a b", Remote: "r:p"},
		{Name: "r", Remote: "nocolon"},
		{Name: "r", Remote: "r:p", Env: []string{"NOEQUALS"}},
		{Name: "r", Remote: "r:p", Binary: "/nonexistent/rclone"},
	} {
		if _, err := rclone.Open(c, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("open %+v: no error", c)
		}
	}
}
