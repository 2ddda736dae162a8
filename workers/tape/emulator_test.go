package tape

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// testModel is a small, fast drive: tests write megabytes, not terabytes.
func testModel() Model {
	return Model{
		Rate: 100e6, MinRate: 40e6, Buffer: 4 << 20,
		Backhitch: 2 * time.Second, FlushTime: 10 * time.Millisecond,
		Wraps: 8, EndToEnd: 12 * time.Second, DirectionChange: 2 * time.Second,
		LocateOverhead: 100 * time.Millisecond,
		LoadTime:       15 * time.Second, UnloadTime: 15 * time.Second, RewindTime: time.Second,
	}
}

func newCart(t *testing.T, c Cartridge) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := CreateCartridge(dir, c); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openEmu(t *testing.T, dir string) *Emulator {
	t.Helper()
	e, err := OpenEmulator(dir, testModel())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func block(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j)
	}
	return b
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestEmulatorRecordsFilemarksAndPersistence(t *testing.T) {
	dir := newCart(t, Cartridge{Capacity: 64 << 20, EarlyWarning: 1 << 20})
	e := openEmu(t, dir)
	mustOK(t, e.SetBlockSize(0))
	// file 0: 2 records; file 1: 3 records of different sizes.
	mustOK(t, e.WriteBlock(block(0, 1000)))
	mustOK(t, e.WriteBlock(block(1, 10)))
	mustOK(t, e.WriteFilemarks(1, false))
	for i := 2; i < 5; i++ {
		mustOK(t, e.WriteBlock(block(i, 100*i)))
	}
	mustOK(t, e.Close()) // st: a filemark after the last write

	e = openEmu(t, dir)
	st, _ := e.Status()
	if !st.BOT || !st.Online || st.File != 0 {
		t.Fatalf("status after load = %+v", st)
	}
	mustOK(t, SeekFile(e, 1))
	buf := make([]byte, 1<<20)
	for i := 2; i < 5; i++ {
		n, err := e.ReadBlock(buf)
		mustOK(t, err)
		if !bytes.Equal(buf[:n], block(i, 100*i)) {
			t.Fatalf("record %d differs", i)
		}
	}
	if n, err := e.ReadBlock(buf); n != 0 || err != nil {
		t.Fatalf("read at filemark = %d, %v; want 0, nil", n, err)
	}
	st, _ = e.Status()
	if !st.EOF || st.File != 2 || !st.EOD {
		t.Fatalf("status after the close filemark = %+v", st)
	}
	if _, err := e.ReadBlock(buf); !errors.Is(err, ErrEndOfData) {
		t.Fatalf("read past end = %v, want ErrEndOfData", err)
	}
	// Short buffer: ENOMEM like st.
	mustOK(t, e.Locate(0))
	if _, err := e.ReadBlock(make([]byte, 999)); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short read = %v, want ErrShortBuffer", err)
	}
	// Logical blocks count filemarks: file 1 starts at block 3.
	mustOK(t, e.Locate(3))
	n, err := e.ReadBlock(buf)
	mustOK(t, err)
	if !bytes.Equal(buf[:n], block(2, 200)) {
		t.Fatal("locate 3 did not land on the first record of file 1")
	}
	// Space back over 1 filemark lands before it (on the BOT side).
	mustOK(t, e.SpaceFilemarks(-1))
	if b, _ := e.Tell(); b != 2 {
		t.Fatalf("after MTBSF 1 at block %d, want 2", b)
	}
	// Writing in the middle truncates what follows.
	mustOK(t, e.Locate(1))
	mustOK(t, e.WriteBlock(block(9, 50)))
	mustOK(t, e.WriteFilemarks(1, true))
	mustOK(t, e.Rewind())
	mustOK(t, e.SpaceFilemarks(1))
	if _, err := e.ReadBlock(buf); !errors.Is(err, ErrEndOfData) {
		t.Fatalf("after truncating write: read = %v, want ErrEndOfData", err)
	}
}

func TestEmulatorCloseAfterNonFlushingFilemark(t *testing.T) {
	dir := newCart(t, Cartridge{Capacity: 64 << 20})
	e := openEmu(t, dir)
	mustOK(t, e.WriteBlock(block(0, 10)))
	mustOK(t, e.WriteFilemarks(1, false))
	mustOK(t, e.Close())
	e = openEmu(t, dir)
	mustOK(t, e.EndOfData())
	if b, _ := e.Tell(); b != 2 {
		t.Fatalf("end of data at %d, want 2 (no extra filemark after MTWEOFI)", b)
	}
}

func TestEmulatorPowerLossDropsUnflushed(t *testing.T) {
	dir := newCart(t, Cartridge{Capacity: 64 << 20})
	e := openEmu(t, dir)
	mustOK(t, e.WriteBlock(block(0, 4096)))
	mustOK(t, e.WriteFilemarks(1, true)) // durable
	mustOK(t, e.WriteBlock(block(1, 4096)))
	mustOK(t, e.WriteFilemarks(1, false)) // buffered only
	mustOK(t, e.PowerLoss())
	if _, err := e.Tell(); !errors.Is(err, ErrNoTape) {
		t.Fatalf("after power loss: %v, want ErrNoTape", err)
	}
	mustOK(t, e.Insert(dir))
	mustOK(t, e.EndOfData())
	if b, _ := e.Tell(); b != 2 {
		t.Fatalf("after power loss end of data at %d, want 2", b)
	}
	mustOK(t, e.Rewind())
	buf := make([]byte, 8192)
	n, err := e.ReadBlock(buf)
	mustOK(t, err)
	if !bytes.Equal(buf[:n], block(0, 4096)) {
		t.Fatal("flushed record lost")
	}
}

func TestEmulatorEarlyWarningAlternates(t *testing.T) {
	const bs = 1 << 20
	dir := newCart(t, Cartridge{Capacity: 10 * bs, EarlyWarning: 3 * bs})
	e := openEmu(t, dir)
	var got []bool
	for i := 0; i < 14; i++ {
		err := e.WriteBlock(block(i, bs))
		if err != nil && !errors.Is(err, ErrNoSpace) {
			t.Fatal(err)
		}
		got = append(got, err == nil)
	}
	// 7 blocks fit before early warning at 7 MiB; the 8th crosses it and
	// succeeds; then ENOSPC, ok, ENOSPC, ok (blocks 9, 10); then the
	// physical end: always ENOSPC.
	want := []bool{true, true, true, true, true, true, true, true, false, true, false, true, false, false}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("write results %v, want %v", got, want)
		}
	}
	st, _ := e.Status()
	if !st.EOT {
		t.Fatalf("status past early warning = %+v, want EOT", st)
	}
	mustOK(t, e.WriteFilemarks(1, true))
	if b, _ := e.Tell(); b != 11 {
		t.Fatalf("records+filemark = %d, want 11", b)
	}
}

func TestEmulatorErrors(t *testing.T) {
	t.Run("no tape", func(t *testing.T) {
		e, err := NewEmulator(testModel())
		mustOK(t, err)
		if err := e.WriteBlock([]byte("x")); !errors.Is(err, ErrNoTape) {
			t.Fatalf("write = %v", err)
		}
		if _, err := e.ReadBlock(make([]byte, 1)); !errors.Is(err, ErrNoTape) {
			t.Fatalf("read = %v", err)
		}
		if err := e.Load(); !errors.Is(err, ErrNoTape) {
			t.Fatalf("load = %v", err)
		}
		st, _ := e.Status()
		if !st.DoorOpen || st.Online {
			t.Fatalf("status = %+v", st)
		}
	})
	t.Run("write protect", func(t *testing.T) {
		dir := newCart(t, Cartridge{Capacity: 1 << 20})
		mustOK(t, SetWriteProtect(dir, true))
		e := openEmu(t, dir)
		if err := e.WriteBlock([]byte("x")); !errors.Is(err, ErrWriteProtected) {
			t.Fatalf("write = %v", err)
		}
		if err := e.WriteFilemarks(1, true); !errors.Is(err, ErrWriteProtected) {
			t.Fatalf("filemark = %v", err)
		}
		if st, _ := e.Status(); !st.WriteProtected {
			t.Fatalf("status = %+v", st)
		}
	})
	t.Run("injected", func(t *testing.T) {
		dir := newCart(t, Cartridge{Capacity: 1 << 20})
		e := openEmu(t, dir)
		e.FailWrite(2)
		mustOK(t, e.WriteBlock([]byte("a")))
		if err := e.WriteBlock([]byte("b")); !errors.Is(err, ErrMedium) {
			t.Fatalf("injected write = %v", err)
		}
		mustOK(t, e.WriteBlock([]byte("c")))
		e.FailReadAt(1)
		mustOK(t, e.Rewind())
		buf := make([]byte, 10)
		if _, err := e.ReadBlock(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := e.ReadBlock(buf); !errors.Is(err, ErrMedium) {
			t.Fatalf("injected read = %v", err)
		}
		mustOK(t, e.Locate(1))
		if n, err := e.ReadBlock(buf); err != nil || string(buf[:n]) != "c" {
			t.Fatalf("retry read = %q, %v", buf[:n], err)
		}
	})
	t.Run("unload", func(t *testing.T) {
		dir := newCart(t, Cartridge{Capacity: 1 << 20})
		e := openEmu(t, dir)
		mustOK(t, e.Unload())
		if err := e.WriteBlock([]byte("x")); !errors.Is(err, ErrNoTape) {
			t.Fatalf("write after unload = %v", err)
		}
		mustOK(t, e.Load())
		mustOK(t, e.WriteBlock([]byte("x")))
	})
}

// The timing model: a fast host streams at the native rate without
// stopping; a host below the lowest matched speed makes the drive
// backhitch; a host in the matched range does not.
func TestEmulatorStreamingModel(t *testing.T) {
	const bs = 256 << 10
	run := func(hostRate float64) (Stats, float64) {
		dir := newCart(t, Cartridge{Capacity: 1 << 30})
		e := openEmu(t, dir)
		start := e.Now()
		const n = 200
		for i := range n {
			e.Advance(time.Duration(float64(bs) / hostRate * float64(time.Second)))
			mustOK(t, e.WriteBlock(block(i, bs)))
		}
		mustOK(t, e.WriteFilemarks(1, true))
		el := (e.Now() - start).Seconds()
		return e.Stats(), float64(n*bs) / el
	}
	m := testModel()
	if st, rate := run(10 * m.Rate); st.Backhitches != 0 || rate < 0.95*m.Rate {
		t.Errorf("fast host: %d backhitches, %.0f B/s", st.Backhitches, rate)
	}
	if st, rate := run(0.6 * m.Rate); st.Backhitches != 0 || rate < 0.95*0.6*m.Rate {
		t.Errorf("matched host: %d backhitches, %.0f B/s", st.Backhitches, rate)
	}
	if st, _ := run(0.5 * m.MinRate); st.Backhitches == 0 {
		t.Errorf("slow host: no backhitch")
	}
}

func TestSeekModel(t *testing.T) {
	m := testModel()
	const c = 1 << 30
	if d := m.locate(0, c/100, c); d <= 0 || d > m.EndToEnd {
		t.Errorf("short forward locate = %v", d)
	}
	far := m.locate(0, c-1, c)  // wrap 7 ends at the BOT side
	back := m.locate(c/2, 0, c) // wrap 4 start → BOT
	if far < m.LocateOverhead+m.DirectionChange || back < m.LocateOverhead {
		t.Errorf("far = %v, back = %v", far, back)
	}
}
