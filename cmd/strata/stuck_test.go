package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestStuckSaysWhy: a tier that can never hold an object (larger than its
// whole filesystem) gives up on it at once instead of retrying for two
// weeks, publishes object.store_failed saying why (permanent), and strata
// ls shows it beside the file; a small file still gets its copy there.
func TestStuckSaysWhy(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	tiny := stratatest.LoopMount(t, "ext4", 16<<20)
	data := t.TempDir()
	big := make([]byte, 24<<20) // random: does not compress below the tiny tier's size
	rand.Read(big)
	files := writeFiles(t, hot, map[string][]byte{"big.bin": big, "small.txt": []byte(strings.Repeat("small and fine\n", 1000))})
	yes := true
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{
		{Name: "main", Kind: events.TierDirectory, Path: filepath.Join(data, "main")},
		{Name: "tiny", Kind: events.TierDirectory, Path: tiny, RequireMount: &yes}}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	bigPath := filepath.Join(hot, "big.bin")
	var ls scanner.LsReply
	waitFor(t, 30*time.Second, func() error {
		cliJSON(t, &ls, "ls", "--json", "--data", data, hot)
		for _, f := range ls.Files {
			switch {
			case f.Path == bigPath && (len(f.Failures) != 1 || !strings.Contains(f.Failures[0], "tiny: tier: object larger than the whole tier") || !strings.Contains(f.Failures[0], "given up")):
				return fmt.Errorf("ls of the big file: %+v", f)
			case f.Path != bigPath && (len(f.Failures) != 0 || len(f.Copies) != 2):
				return fmt.Errorf("ls of the small file: %+v", f)
			}
		}
		return nil
	})
	out, errs, code := cli(t, "events", "--data", data)
	if code != 0 || strings.Count(out, "object.store_failed") != 1 {
		t.Fatalf("events: one object.store_failed wanted (exit %d):\n%s%s", code, out, errs)
	}
	out, _, _ = cli(t, "ls", "--data", data, bigPath)
	if !strings.Contains(out, "no copy on tiny: tier: object larger than the whole tier") {
		t.Fatalf("strata ls does not say why:\n%s", out)
	}
	if _, err := os.Stat(tiny); err != nil {
		t.Fatal(err)
	}
}
