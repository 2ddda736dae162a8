package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestRearchiveTwins: two files with the same content (one object),
// released, read back whole, then archived again together, are both
// released again. Found by the soak: the releaser, woken by the first
// file's object.packed, also took the second — selected, not packed yet —
// and held it to the stat of its old packing, which the recall had moved
// (ctime): "changed since it was read", although nobody had touched it.
func TestRearchiveTwins(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data := t.TempDir()
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: filepath.Join(data, "cold")}}})
	random, _ := contentGen(77, 1)
	twin := random(200 << 10)
	var paths []string
	for i := range 4 {
		p := filepath.Join(hot, fmt.Sprintf("twin%d.bin", i))
		if err := os.WriteFile(p, twin, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	for round := 1; round <= 3; round++ {
		var sum archiveSummary
		cliJSON(t, &sum, append([]string{"archive", "--wait", "--timeout", "1m", "--json", "--data", data}, paths...)...)
		if sum.Released != len(paths) || len(sum.Skipped) != 0 {
			t.Fatalf("round %d: archive --wait of %d files with one content: %+v", round, len(paths), sum)
		}
		for _, p := range paths {
			got, err := exec.Command("cat", p).Output()
			if err != nil || !bytes.Equal(got, twin) {
				t.Fatalf("round %d: cat %s: %v (%d bytes)", round, p, err, len(got))
			}
		}
		// Whole again: the interceptor says archived once it has proven it.
		waitFor(t, 10*time.Second, func() error {
			for _, p := range paths {
				if info, err := stub.ReadPath(p); err != nil || info.State != stub.Archived {
					return fmt.Errorf("%s: %+v %v", p, info, err)
				}
			}
			return nil
		})
	}
}
