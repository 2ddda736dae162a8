package catalog

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Diff compares every key and value of a and b in key order and describes
// the first difference, or returns "" if the two are identical. It is what
// `strata replay --verify` runs between the live catalog and a fresh replay;
// both must have applied the same sequence for the answer to mean anything,
// so a difference in meta/seq is reported first.
func Diff(a, b *Catalog) (string, error) {
	if sa, sb := a.LastSeq(), b.LastSeq(); sa != sb {
		return fmt.Sprintf("last applied sequence differs: %d vs %d", sa, sb), nil
	}
	dba, err := a.rlock()
	if err != nil {
		return "", err
	}
	defer a.mu.RUnlock()
	dbb, err := b.rlock()
	if err != nil {
		return "", err
	}
	defer b.mu.RUnlock()

	ia, err := dba.NewIter(nil)
	if err != nil {
		return "", fmt.Errorf("catalog: %w", err)
	}
	defer ia.Close()
	ib, err := dbb.NewIter(nil)
	if err != nil {
		return "", fmt.Errorf("catalog: %w", err)
	}
	defer ib.Close()

	oka, okb := ia.First(), ib.First()
	for oka || okb {
		if err := errors.Join(ia.Error(), ib.Error()); err != nil {
			return "", fmt.Errorf("catalog: %w", err)
		}
		switch {
		case !okb:
			return fmt.Sprintf("key %q only in the first catalog", ia.Key()), nil
		case !oka:
			return fmt.Sprintf("key %q only in the second catalog", ib.Key()), nil
		}
		switch cmp := bytes.Compare(ia.Key(), ib.Key()); {
		case cmp < 0:
			return fmt.Sprintf("key %q only in the first catalog", ia.Key()), nil
		case cmp > 0:
			return fmt.Sprintf("key %q only in the second catalog", ib.Key()), nil
		}
		if va, vb := ia.Value(), ib.Value(); !bytes.Equal(va, vb) {
			return fmt.Sprintf("key %q: values differ: %s vs %s", ia.Key(), short(va), short(vb)), nil
		}
		oka, okb = ia.Next(), ib.Next()
	}
	if err := errors.Join(ia.Error(), ib.Error()); err != nil {
		return "", fmt.Errorf("catalog: %w", err)
	}
	return "", nil
}

func short(v []byte) string {
	if len(v) > 48 {
		return fmt.Sprintf("%x… (%d bytes)", v[:48], len(v))
	}
	return fmt.Sprintf("%x", v)
}

// Checkpoint writes a consistent copy of the catalog, as of its last
// committed batch, into dir (which must not exist), using hard links where
// it can. `strata replay --verify` checkpoints the live catalog, replays the
// stream into a fresh one up to the checkpoint's LastSeq, and Diffs the two.
func (c *Catalog) Checkpoint(dir string) error {
	db, err := c.rlock()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	if err := db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("catalog: checkpoint %s: %w", dir, err)
	}
	return nil
}
