package tapewriter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"testing/iotest"
	"time"

	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	tapevolume "github.com/strata-hsm/strata/workers/tape/volume"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// openTestTier opens a tape tier over a fresh emulated library with one
// labelled cartridge, V1, and no catalog: every copy the target knows is
// one its Put wrote (the session index).
func openTestTier(t *testing.T) *Tier {
	t.Helper()
	lib := t.TempDir()
	labelCartridges(t, lib, "p", 256<<20, "V1")
	tr, err := OpenTier(TierConfig{
		Name: "tape", Device: tape.EmulatorPrefix + lib, Pool: "p", StateDir: t.TempDir(),
		RingBytes: 4 << 20, BundleAge: time.Hour, RecallWindow: time.Millisecond,
	}, TierDeps{
		Logger: slog.New(slog.DiscardHandler),
		Copy:   func(string) (TapeCopy, bool, error) { return TapeCopy{}, false, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tier: %v", err)
		}
	})
	return tr
}

// damageOnTape damages the medium under the copy of id that tgt (a tape
// target) reads: the cartridge is cut in the middle of the object's bytes
// (Truncate: the rest of the tape is gone, as if writing had stopped
// there), or one byte in the middle is inverted (FlipByte).
func damageOnTape(t *testing.T, tgt tier.Target, id string, how tiertest.Damage) {
	t.Helper()
	tr := tgt.(*target).t
	c, ok, err := tr.lookup(id)
	if err != nil || !ok {
		t.Fatalf("damage %s: no copy known (%v)", id, err)
	}
	// The drive goroutine is idle between the suite's calls, and every
	// Put returned after a flushing filemark and a read back: eject the
	// cartridge so that the next operation loads the damaged medium.
	if err := tr.dev.Emulator().Eject(); err != nil {
		t.Fatal(err)
	}
	bs := int64(bundle.MinBlockSize) // labelCartridges' block size
	mid := c.Pos.Offset + c.PackedSize/2
	dir := tr.dev.CartridgeDir(c.Pos.Volume)
	switch how {
	case tiertest.Truncate:
		err = tape.TruncateCartridge(dir, c.Pos.Block+mid/bs, mid%bs)
	case tiertest.FlipByte:
		err = tape.CorruptRecord(dir, c.Pos.Block+mid/bs, mid%bs)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestConformance runs the suite every tier runs against the tape target,
// on an emulated library: Put writes through the tier's writer (a bundle
// closed with a flushing filemark, then read back), reads come from the
// emulated medium, and the damage is done to the cartridge's stored
// blocks. Delete is refused on tape (NoDelete).
func TestConformance(t *testing.T) {
	tiertest.Run(t, tiertest.Suite{
		New:      func(t *testing.T) tier.Target { return openTestTier(t).Target() },
		Damage:   damageOnTape,
		NoDelete: true,
	})
}

// TestTargetPutOfStoredCopyWritesNothing: a Put of an object the stage
// already wrote (known from the catalog) reads it back and writes nothing;
// after the copy is damaged, Put writes a new one, which Stat, Verify and
// reads use from then on although the catalog still names the old one,
// and publishes nothing itself.
func TestTargetPutOfStoredCopyWritesNothing(t *testing.T) {
	r := newTierRig(t, TierConfig{BundleAge: 200 * time.Millisecond, RecallWindow: time.Millisecond})
	ids := r.pack(11, 2, 300<<10)
	r.waitStored(ids)
	ctx := context.Background()
	tg := r.tier.Target()
	id := ids[1]
	r.mu.Lock()
	data, old := r.data[id], *r.stored[id].Tape
	r.mu.Unlock()
	o := tiertest.ObjectOf(id, data)
	o.Manifest = []byte(`{"object_id":"` + id + `"}`) // what the rig staged
	emu := r.tier.dev.Emulator()
	before := emu.Stats().BytesWritten
	loc, err := tg.Put(ctx, o)
	if err != nil || loc != Location(old) {
		t.Fatalf("put of a stored object = %q, %v; want %q", loc, err, Location(old))
	}
	if got := emu.Stats().BytesWritten; got != before {
		t.Fatalf("put of a stored object wrote %d bytes", got-before)
	}

	// Damage the catalog's copy: Verify says so, and Put repairs it.
	if err := emu.Eject(); err != nil {
		t.Fatal(err)
	}
	if err := tape.CorruptRecord(r.tier.dev.CartridgeDir(old.Volume), old.Block, old.Offset+1000); err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Verify(ctx, id); !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("verify of the damaged copy: %v, want ErrCorrupt", err)
	}
	events := r.storedCount()
	loc, err = tg.Put(ctx, o)
	if err != nil {
		t.Fatalf("repairing put: %v", err)
	}
	c, ok, err := r.tier.lookup(id)
	if err != nil || !ok || samePlace(c.Pos, old) {
		t.Fatalf("copy after the repair: %+v %v %v; want a new one (old %+v)", c, ok, err, old)
	}
	if loc != Location(c.Pos) {
		t.Fatalf("repairing put returned %q, the new copy is at %q", loc, Location(c.Pos))
	}
	if _, err := tg.Verify(ctx, id); err != nil {
		t.Fatalf("verify after the repair: %v", err)
	}
	rc, err := tg.GetRange(ctx, id, 0, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the repair: %d bytes, equal %v, %v", len(got), bytes.Equal(got, data), err)
	}
	if n := r.storedCount(); n != events {
		t.Fatalf("put published %d object.stored events; its caller does", n-events)
	}
	// The other object, the catalog's, is untouched.
	r.checkOnTape(ids[:1])
}

// TestTargetPutBadSourceWritesNothing: a Put whose source fails, is cut
// off by a cancelled context, or does not match its size and sum never
// reaches the tape (a member there could not be removed): its source is
// checked in a spool file before the writer sees it.
func TestTargetPutBadSourceWritesNothing(t *testing.T) {
	tr := openTestTier(t)
	tg := tr.Target()
	o, data := tiertest.NewObject(5, 600<<10)
	boom := errors.New("disk read error")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
		src  io.Reader
		want error
	}{
		{"read error", context.Background(), io.MultiReader(bytes.NewReader(data[:100<<10]), iotest.ErrReader(boom)), boom},
		{"flipped", context.Background(), bytes.NewReader(append([]byte{data[0] ^ 1}, data[1:]...)), tier.ErrCorrupt},
		{"long", context.Background(), io.MultiReader(bytes.NewReader(data), bytes.NewReader([]byte{0})), tier.ErrCorrupt},
		{"cancelled", ctx, io.MultiReader(bytes.NewReader(data[:300<<10]), cancelReader(cancel), bytes.NewReader(data[300<<10:])), context.Canceled},
	} {
		bad := o
		bad.Open = func() (io.ReadCloser, error) { return io.NopCloser(c.src), nil }
		if _, err := tg.Put(c.ctx, bad); !errors.Is(err, c.want) {
			t.Fatalf("put, %s source: %v, want %v", c.name, err, c.want)
		}
	}
	if st := tr.dev.Emulator().Stats(); st.BytesWritten != 0 || st.Flushes != 0 {
		t.Fatalf("failed puts reached the tape: %+v", st)
	}
	if _, err := tg.Stat(context.Background(), o.ID); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("stat after failed puts: %v, want ErrNotFound", err)
	}
}

// cancelReader cancels when it is read, and reads nothing.
type cancelReader context.CancelFunc

func (c cancelReader) Read([]byte) (int, error) { c(); return 0, io.EOF }

// TestTargetConcurrentPutsWriteOnce: Puts of one object at once write it
// once (the suite's List shows one object either way, as List reports an
// object once however often it is on tape).
func TestTargetConcurrentPutsWriteOnce(t *testing.T) {
	tr := openTestTier(t)
	o, _ := tiertest.NewObject(8, 700<<10)
	errs := make(chan error, 4)
	for range 4 {
		go func() { _, err := tr.Target().Put(context.Background(), o); errs <- err }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	d, err := tr.dev.Mount(context.Background(), "V1")
	if err != nil {
		t.Fatal(err)
	}
	info, err := tapevolume.Scan(d)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range info.Files {
		n += len(f.Objects)
	}
	if n != 1 {
		t.Fatalf("%d copies on tape after 4 concurrent puts, want 1: %+v", n, info.Files)
	}
}
