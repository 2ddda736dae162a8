package tape

import (
	"bytes"
	"errors"
	"testing"
)

// writeRecords writes file 0 = records 0, 1, a filemark, then records 3, 4
// (file 1, no filemark written by the test; Close adds one), and closes.
func writeRecords(t *testing.T, dir string) {
	t.Helper()
	e := openEmu(t, dir)
	mustOK(t, e.SetBlockSize(0))
	mustOK(t, e.WriteBlock(block(0, 1000)))
	mustOK(t, e.WriteBlock(block(1, 1000)))
	mustOK(t, e.WriteFilemarks(1, true))
	mustOK(t, e.WriteBlock(block(3, 1000)))
	mustOK(t, e.WriteBlock(block(4, 1000)))
	mustOK(t, e.Close())
}

func readAt(t *testing.T, e *Emulator, b int64) ([]byte, error) {
	t.Helper()
	mustOK(t, e.Locate(b))
	buf := make([]byte, 4096)
	n, err := e.ReadBlock(buf)
	return buf[:n], err
}

func TestCorruptRecord(t *testing.T) {
	dir := newCart(t, Cartridge{Capacity: 64 << 20})
	writeRecords(t, dir)
	mustOK(t, CorruptRecord(dir, 3, 500))
	e := openEmu(t, dir)
	got, err := readAt(t, e, 3)
	mustOK(t, err)
	want := block(3, 1000)
	if len(got) != len(want) || got[500] != ^want[500] {
		t.Fatalf("record 3 after corruption: %d bytes, byte 500 = %#x, want %d bytes, %#x", len(got), got[500], len(want), ^want[500])
	}
	got[500] = want[500]
	if !bytes.Equal(got, want) {
		t.Fatal("corruption changed more than one byte")
	}
	if got, err := readAt(t, e, 4); err != nil || !bytes.Equal(got, block(4, 1000)) {
		t.Fatalf("the next record changed: %v", err)
	}
	mustOK(t, e.Close())
	for _, c := range []struct{ b, off int64 }{{2, 0}, {3, 1000}, {3, -1}, {9, 0}} {
		if err := CorruptRecord(dir, c.b, c.off); err == nil {
			t.Errorf("corrupt block %d byte %d: no error", c.b, c.off)
		}
	}
}

func TestTruncateCartridge(t *testing.T) {
	dir := newCart(t, Cartridge{Capacity: 64 << 20})
	writeRecords(t, dir)
	mustOK(t, TruncateCartridge(dir, 3, 300))
	e := openEmu(t, dir)
	got, err := readAt(t, e, 3)
	if err != nil || !bytes.Equal(got, block(3, 1000)[:300]) {
		t.Fatalf("record 3 after truncation: %d bytes, %v; want its first 300", len(got), err)
	}
	if _, err := e.ReadBlock(make([]byte, 4096)); !errors.Is(err, ErrEndOfData) {
		t.Fatalf("read after the cut: %v, want ErrEndOfData", err)
	}
	mustOK(t, e.EndOfData())
	st, err := e.Status()
	mustOK(t, err)
	if b, _ := e.Tell(); b != 4 || st.File != 1 || st.Block != 1 {
		t.Fatalf("end of data at block %d, %+v; want block 4, inside tape file 1", b, st)
	}
	if got, err := readAt(t, e, 1); err != nil || !bytes.Equal(got, block(1, 1000)) {
		t.Fatalf("a record before the cut changed: %v", err)
	}
	// Unload without writing: nothing is added at the cut.
	mustOK(t, e.Eject())
	mustOK(t, TruncateCartridge(dir, 3, 0))
	e = openEmu(t, dir)
	mustOK(t, e.EndOfData())
	if b, _ := e.Tell(); b != 3 {
		t.Fatalf("end of data at block %d after cutting record 3 entirely, want 3", b)
	}
	mustOK(t, e.Eject())
	for _, c := range []struct{ b, keep int64 }{{2, 0}, {1, 1001}, {1, -1}, {3, 0}} {
		if err := TruncateCartridge(dir, c.b, c.keep); err == nil {
			t.Errorf("truncate at block %d keeping %d: no error", c.b, c.keep)
		}
	}
}
