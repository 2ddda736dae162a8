package main

import (
	"bytes"
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

// TestStuckGivesUp: when the only tier that counts for release gives up on
// an object, archive --wait does not wait for ever: the file is skipped
// (it stays hot, its bytes untouched) saying which tier gave up and why,
// and strata status counts it against that tier.
func TestStuckGivesUp(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	tiny := stratatest.LoopMount(t, "ext4", 16<<20)
	data := t.TempDir()
	big := make([]byte, 24<<20)
	rand.Read(big)
	files := writeFiles(t, hot, map[string][]byte{"big.bin": big})
	yes := true
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{
		{Name: "main", Kind: events.TierDirectory, Path: filepath.Join(data, "main")},
		{Name: "tiny", Kind: events.TierDirectory, Path: tiny, RequireMount: &yes}},
		Release: ReleaseConfig{Copies: 1, From: []string{"tiny"}}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	bigPath := filepath.Join(hot, "big.bin")
	if sum.Released != 0 || len(sum.Skipped) != 1 || sum.Skipped[0].Path != bigPath ||
		!strings.Contains(sum.Skipped[0].Reason, "tier tiny gave up") || !strings.Contains(sum.Skipped[0].Reason, "larger than the whole tier") {
		t.Fatalf("archive --wait: want big.bin skipped because tiny gave up: %+v", sum)
	}
	if got, err := os.ReadFile(bigPath); err != nil || !bytes.Equal(got, files["big.bin"]) {
		t.Fatalf("big.bin after the skip: %v (bytes equal: %v)", err, bytes.Equal(got, files["big.bin"]))
	}
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	for _, ts := range st.TierState {
		switch {
		case ts.Name == "tiny" && (ts.GaveUp != 1 || !strings.Contains(ts.LastFailure, "larger than the whole tier")):
			t.Fatalf("status of tier tiny: %+v", ts)
		case ts.Name == "main" && ts.Failing+ts.GaveUp != 0:
			t.Fatalf("status of tier main: %+v", ts)
		}
	}
	out, _, _ := cli(t, "status", "--data", data)
	if !strings.Contains(out, "1 objects not stored (0 being retried, 1 given up)") {
		t.Fatalf("strata status does not say tiny is stuck:\n%s", out)
	}
}

// wantCondition checks that the daemon reports (or no longer reports) the
// condition key.
func wantCondition(t *testing.T, data, key string, want bool) error {
	t.Helper()
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	for _, c := range st.Conditions {
		if c.Key == key {
			if !want {
				return fmt.Errorf("condition %s still reported: %+v", key, c)
			}
			return nil
		}
	}
	if want {
		return fmt.Errorf("condition %s not reported (have %+v)", key, st.Conditions)
	}
	return nil
}

// TestTierFull: a directory tier whose filesystem fills up is a condition
// (status names the tier), its store stage holds the copy instead of
// spending its deliveries, the other tier goes on and the file is released
// from it; once there is room the held copy is made without a restart and
// nothing is dead-lettered.
func TestTierFull(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	small := stratatest.LoopMount(t, "ext4", 64<<20)
	data := t.TempDir()
	payload := make([]byte, 8<<20) // random: does not compress to fit
	rand.Read(payload)
	files := writeFiles(t, hot, map[string][]byte{"f.bin": payload})
	yes := true
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{
		{Name: "main", Kind: events.TierDirectory, Path: filepath.Join(data, "main")},
		{Name: "small", Kind: events.TierDirectory, Path: small, RequireMount: &yes}},
		Release: ReleaseConfig{Copies: 1, From: []string{"main"}}})
	filler := fillFS(t, small) // once the tier's directories exist
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	waitFor(t, 20*time.Second, func() error { return wantCondition(t, data, "space:tier:small", true) })
	out, _, _ := cli(t, "status", "--data", data)
	if !strings.Contains(out, "OUT OF SPACE") || !strings.Contains(out, "tier small "+small) {
		t.Fatalf("strata status does not name the full tier:\n%s", out)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(hot, "f.bin")
	waitFor(t, time.Minute, func() error {
		var ls scanner.LsReply
		cliJSON(t, &ls, "ls", "--json", "--data", data, path)
		if len(ls.Files) != 1 || len(ls.Files[0].Copies) != 2 {
			return fmt.Errorf("ls: %+v", ls.Files)
		}
		return nil
	})
	if err := wantCondition(t, data, "space:tier:small", false); err != nil {
		t.Fatal(err)
	}
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	if st.Stream.DeadLetters != 0 {
		t.Fatalf("dead letters: %d", st.Stream.DeadLetters)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read back: %v", err)
	}
}
