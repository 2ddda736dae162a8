package tape

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Damage to an emulated cartridge's medium, made behind the drive's back,
// for tests and drills of what Strata does with a bad tape: a record whose
// bytes changed (CorruptRecord), or recorded data that ends early, inside a
// record (TruncateCartridge). The cartridge must not be in a drive: eject
// it first (a loaded cartridge keeps its record index in memory, and the
// next Insert reads the damaged one).

// CorruptRecord inverts byte off of the data record at logical block b of
// the cartridge in dir. The record keeps its length, so only a checksum
// can tell.
func CorruptRecord(dir string, b, off int64) error {
	c, err := openCartridge(dir)
	if err != nil {
		return err
	}
	r, err := c.dataRecord(b)
	if err == nil && (off < 0 || off >= r.n) {
		err = fmt.Errorf("corrupt cartridge %s: byte %d of the %d-byte record at block %d", dir, off, r.n, b)
	}
	if err == nil {
		var one [1]byte
		if _, err = c.data.ReadAt(one[:], r.off+off); err == nil {
			one[0] = ^one[0]
			_, err = c.data.WriteAt(one[:], r.off+off)
		}
		if err == nil {
			err = c.data.Sync()
		}
		if err != nil {
			err = fmt.Errorf("corrupt cartridge %s: %w", dir, err)
		}
	}
	return errors.Join(err, c.close())
}

// TruncateCartridge ends the recorded data of the cartridge in dir inside
// the data record at logical block b: that record keeps its first keep
// bytes (keep 0: it is gone too), and every record after it, filemarks
// included, is lost, as on a tape whose writing stopped there. End of data
// is then right after what is kept, and the last tape file has no
// filemark.
func TruncateCartridge(dir string, b, keep int64) error {
	c, err := openCartridge(dir)
	if err != nil {
		return err
	}
	r, err := c.dataRecord(b)
	if err == nil && (keep < 0 || keep > r.n) {
		err = fmt.Errorf("truncate cartridge %s: keep %d bytes of the %d-byte record at block %d", dir, keep, r.n, b)
	}
	if err == nil {
		n := b // records kept
		if keep > 0 {
			n++
			var e [indexEntry]byte
			binary.LittleEndian.PutUint64(e[:], uint64(r.off))
			binary.LittleEndian.PutUint64(e[8:], uint64(keep))
			if _, err = c.idx.WriteAt(e[:], b*indexEntry); err != nil {
				err = fmt.Errorf("truncate cartridge %s: %w", dir, err)
			}
		}
		if err == nil {
			err = errors.Join(c.idx.Truncate(n*indexEntry), c.data.Truncate(r.off+keep), c.idx.Sync(), c.data.Sync())
			if err != nil {
				err = fmt.Errorf("truncate cartridge %s: %w", dir, err)
			}
		}
	}
	return errors.Join(err, c.close())
}

// dataRecord returns the data record at logical block b.
func (c *cartridge) dataRecord(b int64) (record, error) {
	if b < 0 || b >= int64(len(c.recs)) {
		return record{}, fmt.Errorf("cartridge %s: no record at block %d (%d recorded)", c.dir, b, len(c.recs))
	}
	r := c.recs[b]
	if r.filemark() {
		return record{}, fmt.Errorf("cartridge %s: block %d is a filemark", c.dir, b)
	}
	return r, nil
}
