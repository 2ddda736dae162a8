//go:build linux

package interceptor_test

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestMtimeStillWhileFilling: a recall is not a modification, not even
// for a moment. While dd reads a 160 MiB stub from start to end (range
// first, background fills ahead of it), a loop of stat() calls compares
// the mtime with the archived one, and rclone (which stats the source
// before every read and gives up if its mtime moved) copies another stub
// of 272 MiB (above rclone's multi-thread cutoff).
//
// On XFS stores go through a fd with FMODE_NOCMTIME: no stat may ever see
// the mtime move. ext4 has no such fd: the kernel stamps mtime at the
// first write fault of every store, and the fill puts it back after it;
// stats in between see it (logged, see README.md); rclone is recalled
// whole at open there (Config.MtimeCheckPrograms), and succeeds too.
func TestMtimeStillWhileFilling(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	rclone := stratatest.NeedTool(t, "rclone")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			archived := time.Date(2021, 3, 4, 5, 6, 7, 891011121, time.UTC)
			stubAt := func(name string, seed uint64, n int) (string, []byte) {
				data := content(seed, n)
				path := filepath.Join(e.mnt, name)
				makeStub(t, e.it, e.src, path, data, 0o644)
				if err := os.Chtimes(path, archived, archived); err != nil {
					t.Fatal(err)
				}
				return path, data
			}

			t.Run("stat-loop", func(t *testing.T) {
				path, data := stubAt("seq.bin", 701, 160<<20)
				var stop atomic.Bool
				var stats, moved atomic.Int64
				var first atomic.Int64 // first moved mtime seen, ns
				looped := make(chan struct{})
				go func() {
					defer close(looped)
					var st unix.Stat_t
					for !stop.Load() {
						if err := unix.Stat(path, &st); err != nil {
							continue
						}
						stats.Add(1)
						if st.Mtim.Nano() != archived.UnixNano() {
							moved.Add(1)
							first.CompareAndSwap(0, st.Mtim.Nano())
						}
					}
				}()
				out := mustRun(t, "dd", "if="+path, "bs=1M", "status=none")
				e.comp.waitComplete(t, path)
				stop.Store(true)
				<-looped
				sameBytes(t, "dd", out, data)
				var st unix.Stat_t
				if err := unix.Stat(path, &st); err != nil {
					t.Fatal(err)
				}
				if st.Mtim.Nano() != archived.UnixNano() {
					t.Errorf("mtime %v after the recall, want %v", time.Unix(0, st.Mtim.Nano()).UTC(), archived)
				}
				if stats.Load() < 1000 {
					t.Fatalf("only %d stats during the recall", stats.Load())
				}
				switch {
				case fs == "ext4":
					t.Logf("ext4: %d of %d stats during the fill saw the mtime a store stamped (the kernel has no store that keeps it; see README.md)",
						moved.Load(), stats.Load())
				case moved.Load() != 0:
					t.Errorf("%d of %d stats during the fill saw mtime %v, not the archived %v", moved.Load(), stats.Load(),
						time.Unix(0, first.Load()).UTC(), archived)
				}
				if err := os.Remove(path); err != nil { // room for the next stub
					t.Fatal(err)
				}
			})

			t.Run("rclone", func(t *testing.T) {
				path, data := stubAt("rclone.bin", 702, 272<<20)
				dst := filepath.Join(t.TempDir(), "copy")
				t.Setenv("RCLONE_CONFIG", "/dev/null")
				if _, err := run(t, rclone, "copyto", path, dst); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(dst)
				if err != nil {
					t.Fatal(err)
				}
				sameBytes(t, "rclone copy", got, data)
				e.comp.waitComplete(t, path)
			})
		})
	}
}
