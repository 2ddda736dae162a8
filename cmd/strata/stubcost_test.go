package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestReleasedTreeCostsOnlyDirectories archives a tree of small files
// through the daemon and checks what `du` would see: every released stub
// allocates no block (its record lives in the inode: ext4 with 256-byte
// inodes, XFS with 512), and every stub still reads back its bytes.
func TestReleasedTreeCostsOnlyDirectories(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, fs := range []struct {
		name string
		mkfs []string
	}{
		{"ext4", []string{"-b", "4096", "-I", "256"}},
		{"xfs", []string{"-b", "size=4096", "-i", "size=512"}},
	} {
		t.Run(fs.name, func(t *testing.T) {
			hot := stratatest.LoopMount(t, fs.name, 300<<20, fs.mkfs...)
			want := map[string][]byte{}
			for d := range 4 {
				dir := filepath.Join(hot, fmt.Sprintf("d%d", d))
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				for f := range 25 {
					p := filepath.Join(dir, fmt.Sprintf("f%02d.txt", f))
					b := bytes.Repeat([]byte(p+"\n"), 4096/len(p)+1)[:4096]
					if err := os.WriteFile(p, b, 0o644); err != nil {
						t.Fatal(err)
					}
					want[p] = b
				}
			}
			data, cold := t.TempDir(), t.TempDir()
			cfg := Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
				Tiers: []TierConfig{{Name: "hdd", Kind: "directory", Path: cold}}}
			_, stop := testDaemon(t, cfg)
			defer stop()
			var sum archiveSummary
			cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
			if sum.Released != len(want) {
				t.Fatalf("archive released %d of %d: %+v", sum.Released, len(want), sum.Skipped)
			}
			var blocks int64
			for p := range want {
				var st syscall.Stat_t
				if err := syscall.Stat(p, &st); err != nil {
					t.Fatal(err)
				}
				if st.Size != 4096 {
					t.Errorf("%s: size %d after release, want 4096", p, st.Size)
				}
				blocks += st.Blocks
			}
			if blocks != 0 {
				t.Errorf("%d released 4 KiB stubs still allocate %d KiB (want 0: the stub's record must fit in the inode)", len(want), blocks/2)
			}
			for p, b := range want {
				got, err := exec.Command("cat", p).Output() // another process: the daemon's own reads are not intercepted
				if err != nil || !bytes.Equal(got, b) {
					t.Fatalf("%s read back %d bytes (err %v), want its original 4096", p, len(got), err)
				}
			}
		})
	}
}
