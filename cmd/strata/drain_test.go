package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/store"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestTierDrain: tier "old" holds the only good copies of some objects
// (the other tier's were found corrupt). Removed from the configuration
// without a drain, the daemon says so (and what to do); `strata tier drain
// old` copies each such object to the other tier and says it is safe to
// remove; without it, every stub reads right from the remaining tier. A
// drain that would leave too few counting tiers is refused.
func TestTierDrain(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	hot, data := filepath.Join(mnt, "hot"), t.TempDir()
	oldDir, newDir := filepath.Join(data, "old"), filepath.Join(data, "new")
	if err := os.MkdirAll(hot, 0o755); err != nil {
		t.Fatal(err)
	}
	files := testFiles(t, hot, 7)
	both := Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{
		{Name: "old", Kind: events.TierDirectory, Path: oldDir}, {Name: "new", Kind: events.TierDirectory, Path: newDir}}}
	onlyNew := both
	onlyNew.Tiers = both.Tiers[1:]

	d, stop := testDaemon(t, both)
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	objects := map[string]bool{}
	for p := range files {
		info, err := stub.ReadPath(p)
		if err != nil {
			t.Fatal(err)
		}
		objects[info.ObjectID] = true
	}
	goodOn := func(d *daemon, tier string) error {
		for oid := range objects {
			cps, err := d.cat.Copies(oid)
			if err != nil {
				return err
			}
			ok := false
			for _, c := range cps {
				ok = ok || c.Tier == tier && c.State == catalog.CopyGood
			}
			if !ok {
				return fmt.Errorf("object %s: no good copy on %s: %+v", oid[:8], tier, cps)
			}
		}
		return nil
	}
	waitFor(t, time.Minute, func() error { return goodOn(d, "new") })
	// Lose "new"'s copies, as a scrub would find them.
	if err := os.RemoveAll(filepath.Join(newDir, "objects")); err != nil {
		t.Fatal(err)
	}
	em := pipeline.NewEmitter(d.js, "testhost", "test")
	for oid := range objects {
		if _, err := em.Emit(context.Background(), &events.ObjectCorrupt{ObjectID: oid, Tier: "new", Reason: "test: copy lost"}, oid, "new", "lost"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if goodOn(d, "new") == nil {
			return fmt.Errorf("new's copies still good in the catalog")
		}
		return nil
	})
	stop()

	// Removed without a drain: the daemon counts what depends on it.
	d, stop = testDaemon(t, onlyNew)
	if n := d.removedTiers["old"]; n != len(objects) {
		t.Fatalf("daemon without tier old: %d objects depend on it, want %d (%v)", n, len(objects), d.removedTiers)
	}
	stop()

	// Drained: every object gets its copy on "new" again.
	d, stop = testDaemon(t, both)
	out, errs, code := cli(t, "tier", "drain", "--data", data, "old")
	if code != 0 || !strings.Contains(out, "no object depends on old") {
		t.Fatalf("tier drain: exit %d\n%s%s", code, out, errs)
	}
	var st store.DrainStatus
	cliJSON(t, &st, "tier", "drain", "--json", "--data", data, "old")
	if st.Scanned != len(objects) || st.Needing != 0 {
		t.Fatalf("second drain: %+v (the first made every copy)", st)
	}
	if err := goodOn(d, "new"); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := cli(t, "tier", "drain", "--data", data, "nope"); code == 0 || !strings.Contains(errs, "not a tier") {
		t.Fatalf("drain of an unknown tier: exit %d %s", code, errs)
	}
	stop()

	// Without "old", nothing depends on it, and every stub reads right.
	d, _ = testDaemon(t, onlyNew)
	if len(d.removedTiers) != 0 {
		t.Fatalf("after the drain, objects still depend on removed tiers: %v", d.removedTiers)
	}
	if _, errs, code := cli(t, "tier", "drain", "--data", data, "new"); code == 0 || !strings.Contains(errs, "release.copies") {
		t.Fatalf("drain of the last tier: exit %d %s", code, errs)
	}
	for p, want := range files {
		if got, err := exec.Command("cat", p).Output(); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat %s from the remaining tier: %v", p, err)
		}
	}
}
