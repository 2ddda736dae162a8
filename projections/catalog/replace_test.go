package catalog

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRecoverReplace: a replay killed between its two renames left no
// catalog at dir and the old one at dir.old; Open puts it back and removes
// what the replay left (cmd/strata's crash matrix kills a real replay
// there: replay.after-move-aside).
func TestRecoverReplace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "catalog")
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir+".replay", 0o755); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir+".old", "marker")
	if err := os.WriteFile(marker, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := os.Stat(filepath.Join(dir, "marker")); err != nil {
		t.Fatalf("the old catalog was not put back at %s: %v", dir, err)
	}
	for _, p := range []string{dir + ".old", dir + ".replay"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}
