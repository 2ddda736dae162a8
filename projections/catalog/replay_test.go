package catalog

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
)

func applyIn(t *testing.T, c *Catalog, envs []events.Envelope, size int) {
	t.Helper()
	for lo := 0; lo < len(envs); lo += size {
		if err := c.Apply(envs[lo:min(lo+size, len(envs))]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplayDeterministic applies the same 100k mixed events in different
// batchings, and with crashes and redeliveries, and requires byte-identical
// databases.
func TestReplayDeterministic(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 20_000
	}
	envs := catalogtest.Generate(n, 42, catalogtest.Options{Invalid: 0.01})

	ref := open(t, "")
	applyIn(t, ref, envs, 1000)
	checkStats(t, ref)
	st, _ := ref.Stats()
	t.Logf("stats: %+v", st)
	if st.ByState["released"].Files == 0 || st.ByState["dirty"].Files == 0 || st.ByState["deleted"].Files == 0 ||
		st.ByState["archived"].Files == 0 || st.ByState["resident"].Files == 0 || st.ByState["archiving"].Files == 0 ||
		st.CorruptCopies == 0 || st.Pins == 0 || st.Skipped == 0 || st.Versions <= st.Objects/2 {
		t.Fatalf("the generated stream does not exercise every state: %+v", st)
	}

	for _, size := range []int{1, 7} {
		c := open(t, "")
		if size == 7 {
			// A tiny key filter: rebuilt many times on the way.
			c.filterMin = 100
		}
		applyIn(t, c, envs, size)
		if size == 7 && c.filter.cap < 2*int(st.Files) {
			t.Fatalf("key filter of %d keys was never rebuilt", c.filter.cap)
		}
		if d, err := Diff(ref, c); err != nil || d != "" {
			t.Fatalf("batch size %d: %s %v", size, d, err)
		}
		c.Close()
	}

	// Crashes: close and reopen midway, redeliver overlapping ranges in
	// other batch sizes.
	dir := t.TempDir()
	c := open(t, dir)
	applyIn(t, c, envs[:n*2/5], 500)
	c.Close()
	c = open(t, dir)
	if c.LastSeq() != uint64(n*2/5) {
		t.Fatalf("LastSeq %d after reopen", c.LastSeq())
	}
	applyIn(t, c, envs[n*3/10:n*7/10], 333)
	c.Close()
	c = open(t, dir)
	applyIn(t, c, envs[:n/2], 999)
	applyIn(t, c, envs[n/2:], 4096)
	if d, err := Diff(ref, c); err != nil || d != "" {
		t.Fatalf("after crashes: %s %v", d, err)
	}
	checkStats(t, c)

	// A checkpoint opens as an identical catalog at the same sequence.
	cp := filepath.Join(t.TempDir(), "checkpoint")
	if err := c.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	copyCat := open(t, cp)
	if copyCat.LastSeq() != uint64(n) {
		t.Fatalf("checkpoint at seq %d", copyCat.LastSeq())
	}
	if d, err := Diff(c, copyCat); err != nil || d != "" {
		t.Fatalf("checkpoint differs: %s %v", d, err)
	}
	copyCat.Close()

	// Diff names an altered, a missing and an extra key.
	var fileKey []byte
	scan(c.mu.db, pfxFile, func(k, v []byte) error {
		if fileKey == nil {
			fileKey = append([]byte(nil), k...)
		}
		return nil
	})
	orig, err := get(c.mu.db, fileKey)
	if err != nil {
		t.Fatal(err)
	}
	altered := append([]byte(nil), orig...)
	altered[len(altered)-1] ^= 1
	for _, tc := range []struct {
		name   string
		change func() error
		want   string
	}{
		{"altered", func() error { return c.mu.db.Set(fileKey, altered, pebble.Sync) }, "key \"" + string(fileKey) + "\": values differ"},
		{"missing", func() error { return c.mu.db.Delete(fileKey, pebble.Sync) }, "key \"" + string(fileKey) + "\" only in the first"},
		{"extra", func() error { return c.mu.db.Set([]byte("file/zzz"), nil, pebble.Sync) }, "key \"file/zzz\" only in the second"},
	} {
		if err := tc.change(); err != nil {
			t.Fatal(err)
		}
		d, err := Diff(ref, c)
		if err != nil || !strings.HasPrefix(d, tc.want) {
			t.Fatalf("%s: Diff = %q, %v; want %q…", tc.name, d, err, tc.want)
		}
		// Restore.
		c.mu.db.Delete([]byte("file/zzz"), pebble.Sync)
		if err := c.mu.db.Set(fileKey, orig, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if d, _ := Diff(ref, c); d != "" {
			t.Fatalf("%s: not restored: %s", tc.name, d)
		}
	}
	if err := c.Apply(envs[:1]); err != nil {
		t.Fatal(err)
	}
	other := open(t, "")
	applyIn(t, other, envs[:n-1], 5000)
	if d, _ := Diff(ref, other); !strings.Contains(d, "sequence differs") {
		t.Fatalf("Diff at different sequences: %q", d)
	}
}
