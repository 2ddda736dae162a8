package tapewriter

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	tapevolume "github.com/strata-hsm/strata/workers/tape/volume"
)

const bs = bundle.MinBlockSize

func model() tape.Model {
	return tape.Model{
		Rate: 100e6, MinRate: 40e6, Buffer: 4 << 20,
		Backhitch: 2 * time.Second, FlushTime: 10 * time.Millisecond,
		Wraps: 8, EndToEnd: 12 * time.Second, DirectionChange: 2 * time.Second,
		LocateOverhead: 100 * time.Millisecond, LoadTime: 15 * time.Second, RewindTime: time.Second,
	}
}

func hexsum(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }

type testObj struct {
	Object
	data []byte
}

func makeObjects(seed uint64, n int, size func(i int) int) []testObj {
	r := rand.New(rand.NewPCG(seed, 7))
	var out []testObj
	for i := range n {
		data := make([]byte, size(i))
		for j := 0; j < len(data); j += 8 {
			v := r.Uint64()
			for k := 0; k < 8 && j+k < len(data); k++ {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		id := hexsum(append([]byte{byte(i), byte(i >> 8), byte(seed)}, data...))
		out = append(out, testObj{data: data, Object: Object{
			ID: id, Manifest: []byte(`{"object_id":"` + id + `"}`), PackedSize: int64(len(data)), PackedSum: hexsum(data),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		}})
	}
	return out
}

type rig struct {
	t      *testing.T
	emu    *tape.Emulator
	lib    *tape.Library
	stored map[string][]events.TapePosition
	events []VolumeEvent
}

// newRig makes labelled cartridges (capacity per volume) and an empty
// drive in a library.
func newRig(t *testing.T, vols []string, caps []tape.Cartridge) *rig {
	t.Helper()
	root := t.TempDir()
	emu, err := tape.NewEmulator(model())
	if err != nil {
		t.Fatal(err)
	}
	lib := &tape.Library{Drive: emu, Slots: map[string]string{}}
	for i, v := range vols {
		dir := filepath.Join(root, v)
		if err := tape.CreateCartridge(dir, caps[i]); err != nil {
			t.Fatal(err)
		}
		d, err := tape.OpenEmulator(dir, model())
		if err != nil {
			t.Fatal(err)
		}
		if err := bundle.WriteLabel(d, bundle.Label{Volume: v, Pool: "p", BlockSize: bs, Sequence: i + 1}); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		lib.Slots[v] = dir
	}
	t.Cleanup(func() { emu.Eject() })
	return &rig{t: t, emu: emu, lib: lib, stored: map[string][]events.TapePosition{}}
}

func (r *rig) config(vols ...string) Config {
	return Config{
		Pool: "p", Volumes: vols, Changer: r.lib,
		BundleSize: 8 << 20, RingSize: 16 << 20, MinRate: model().MinRate,
		SpoolDir: r.t.TempDir(), Now: r.emu.Now,
		Stored: func(o Object, pos events.TapePosition) { r.stored[o.ID] = append(r.stored[o.ID], pos) },
		Event:  func(e VolumeEvent) { r.events = append(r.events, e) },
	}
}

func (r *rig) newWriter(cfg Config) *Writer {
	w, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	return w
}

// checkStored reads every object back from its reported position.
func (r *rig) checkStored(objs []testObj) {
	r.t.Helper()
	for _, o := range objs {
		ps := r.stored[o.ID]
		if len(ps) != 1 {
			r.t.Fatalf("object %s reported %d times", o.ID[:8], len(ps))
		}
		pos := ps[0]
		d, err := r.lib.Mount(context.Background(), pos.Volume)
		if err != nil {
			r.t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := bundle.ReadObject(d, bs, pos, o.PackedSize, o.PackedSum, &buf); err != nil {
			r.t.Fatalf("object %s at %+v: %v", o.ID[:8], pos, err)
		}
		if !bytes.Equal(buf.Bytes(), o.data) {
			r.t.Fatalf("object %s differs", o.ID[:8])
		}
	}
}

// produce adds objects, advancing the virtual clock as a source of the
// given rate (bytes/s) would.
func produce(t *testing.T, w *Writer, emu *tape.Emulator, objs []testObj, rate float64) {
	t.Helper()
	for _, o := range objs {
		emu.Advance(time.Duration(float64(o.PackedSize) / rate * float64(time.Second)))
		if err := w.Add(context.Background(), o.Object); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRoundTripAndStoredOnlyAfterFlush(t *testing.T) {
	r := newRig(t, []string{"V1"}, []tape.Cartridge{{Capacity: 1 << 30}})
	cfg := r.config("V1")
	cfg.FlushEvery = 1000
	w := r.newWriter(cfg)
	objs := makeObjects(1, 60, func(i int) int { return []int{0, 1, 511, 512, 513, 100_000, 700_000}[i%7] })
	produce(t, w, r.emu, objs, 1e9)
	if len(r.stored) != 0 {
		t.Fatalf("%d objects reported before any flushing filemark", len(r.stored))
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(r.stored) != len(objs) {
		t.Fatalf("%d of %d objects reported", len(r.stored), len(objs))
	}
	r.checkStored(objs)
}

func throughput(st tape.Stats, end time.Duration) float64 {
	return float64(st.BytesWritten) / (end - st.FirstWrite).Seconds()
}

func TestStreamingFastAndMatchedProducer(t *testing.T) {
	m := model()
	for _, tc := range []struct {
		name  string
		rate  float64
		drive float64 // rate the drive should reach
	}{
		{"faster than the drive", 3 * m.Rate, m.Rate},
		{"in the matched range", 0.6 * m.Rate, 0.6 * m.Rate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, []string{"V1"}, []tape.Cartridge{{Capacity: 1 << 30}})
			cfg := r.config("V1")
			cfg.BundleSize = 16 << 20
			cfg.FlushEvery = 1000
			w := r.newWriter(cfg)
			objs := makeObjects(2, 96, func(int) int { return 1 << 20 })
			produce(t, w, r.emu, objs, tc.rate)
			if err := w.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			st := r.emu.Stats()
			got := throughput(st, r.emu.Now())
			t.Logf("%d bytes, %d backhitches, %d flushes, %.1f MB/s (drive %.1f MB/s)", st.BytesWritten, st.Backhitches, st.Flushes, got/1e6, tc.drive/1e6)
			if st.Backhitches != 0 {
				t.Errorf("%d backhitches, want 0", st.Backhitches)
			}
			if got < 0.95*tc.drive {
				t.Errorf("throughput %.1f MB/s < 0.95 × %.1f MB/s", got/1e6, tc.drive/1e6)
			}
			if len(r.stored) != len(objs) {
				t.Fatalf("%d of %d stored", len(r.stored), len(objs))
			}
		})
	}
}

func TestSlowProducerSpools(t *testing.T) {
	m := model()
	run := func(minRate float64) tape.Stats {
		r := newRig(t, []string{"V1"}, []tape.Cartridge{{Capacity: 1 << 30}})
		cfg := r.config("V1")
		cfg.MinRate = minRate
		cfg.BundleSize = 32 << 20 // larger than the ring
		w := r.newWriter(cfg)
		objs := makeObjects(3, 48, func(int) int { return 1 << 20 })
		produce(t, w, r.emu, objs, 0.5*m.MinRate)
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		r.checkStored(objs)
		return r.emu.Stats()
	}
	spooled := run(m.MinRate)
	if spooled.Backhitches != 0 {
		t.Errorf("with the spool: %d backhitches, want 0", spooled.Backhitches)
	}
	// The control: the same source without the spool (MinRate 0 turns
	// it off) makes the drive shoe-shine.
	ring := run(1e-9)
	t.Logf("spool: %+v; ring only: %+v", spooled, ring)
	if ring.Backhitches == 0 {
		t.Errorf("ring only: no backhitch; the test does not discriminate")
	}
}

func TestEndOfMediumContinuesOnNextVolume(t *testing.T) {
	r := newRig(t, []string{"V1", "V2"}, []tape.Cartridge{
		{Capacity: 24 << 20, EarlyWarning: 8 << 20}, {Capacity: 1 << 30}})
	cfg := r.config("V1", "V2")
	cfg.BundleSize = 64 << 20 // one bundle: the end of V1 cuts it
	cfg.RingSize = 4 << 20
	w := r.newWriter(cfg)
	objs := makeObjects(4, 30, func(i int) int { return 1<<20 + i*1000 })
	produce(t, w, r.emu, objs, 1e9)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.checkStored(objs)
	vols := map[string]int{}
	for _, ps := range r.stored {
		vols[ps[0].Volume]++
	}
	if vols["V1"] == 0 || vols["V2"] == 0 {
		t.Fatalf("objects per volume %v, want both", vols)
	}
	kinds := map[string]bool{}
	for _, e := range r.events {
		kinds[e.Volume+"/"+e.Kind] = true
	}
	if !kinds["V1/"+EventFull] || !kinds["V1/"+EventContinued] {
		t.Fatalf("events %v", r.events)
	}
	// On tape: V1 file 1 ends with the continuation trailer, V2 file 1 is
	// part 2 of the same bundle.
	read := func(vol string) bundle.Contents {
		d, err := r.lib.Mount(context.Background(), vol)
		if err != nil {
			t.Fatal(err)
		}
		if err := tape.SeekFile(d, 1); err != nil {
			t.Fatal(err)
		}
		c, err := bundle.ReadBundle(bundle.NewFileReader(d))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := read("V1"), read("V2")
	if c1.Continued == nil || c1.Continued.NextPart != 2 || c2.Header.Part != 2 || c2.Header.Bundle != c1.Header.Bundle ||
		c2.Header.ContinuesFrom == nil || *c2.Header.ContinuesFrom != (bundle.Place{Volume: "V1", TapeFile: 1}) {
		t.Fatalf("V1 part %+v %+v; V2 part %+v", c1.Header, c1.Continued, c2.Header)
	}
	if len(c1.Objects)+len(c2.Objects) != len(objs) {
		t.Fatalf("%d + %d objects on tape, want %d", len(c1.Objects), len(c2.Objects), len(objs))
	}
}

func TestPowerLossLosesNothingReported(t *testing.T) {
	r := newRig(t, []string{"V1"}, []tape.Cartridge{{Capacity: 1 << 30}})
	cfg := r.config("V1")
	cfg.BundleSize = 2 << 20
	cfg.RingSize = 4 << 20
	cfg.FlushEvery = 1000
	w := r.newWriter(cfg)
	first := makeObjects(5, 20, func(int) int { return 300_000 })
	produce(t, w, r.emu, first, 1e9)
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	reported := len(r.stored)
	second := makeObjects(6, 40, func(int) int { return 300_000 })
	produce(t, w, r.emu, second, 1e9) // several bundles, non-flushing filemarks
	if len(r.stored) != reported {
		t.Fatalf("objects reported without a flushing filemark")
	}
	before, _ := r.emu.Tell()
	if err := r.emu.PowerLoss(); err != nil {
		t.Fatal(err)
	}
	if err := r.emu.Insert(r.lib.Slots["V1"]); err != nil {
		t.Fatal(err)
	}
	if err := r.emu.EndOfData(); err != nil {
		t.Fatal(err)
	}
	after, _ := r.emu.Tell()
	if after >= before {
		t.Fatalf("power loss dropped nothing (end of data %d, was %d): the test means nothing", after, before)
	}
	if reported != len(first) {
		t.Fatalf("%d of %d reported", reported, len(first))
	}
	r.checkStored(first)
}

func TestVolumesRefused(t *testing.T) {
	r := newRig(t, []string{"WP", "OTHER", "V3"}, []tape.Cartridge{{Capacity: 1 << 30}, {Capacity: 1 << 30}, {Capacity: 1 << 30}})
	if err := tape.SetWriteProtect(r.lib.Slots["WP"], true); err != nil {
		t.Fatal(err)
	}
	// Barcode ODD holds a cartridge labelled OTHER.
	r.lib.Slots["ODD"] = r.lib.Slots["OTHER"]
	size := func(v string) int64 {
		fi, err := os.Stat(filepath.Join(r.lib.Slots[v], "index"))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	wp, odd := size("WP"), size("ODD")
	w := r.newWriter(r.config("WP", "ODD", "MISSING", "V3"))
	objs := makeObjects(7, 5, func(int) int { return 1000 })
	produce(t, w, r.emu, objs, 1e9)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, e := range r.events {
		got = append(got, e.Volume+"/"+e.Kind)
	}
	want := []string{"WP/" + EventWriteProtected, "ODD/" + EventLabelMismatch, "MISSING/" + EventError, "V3/" + EventMounted}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if size("WP") != wp || size("ODD") != odd {
		t.Fatal("a refused volume was written")
	}
	r.checkStored(objs)
	for _, ps := range r.stored {
		if ps[0].Volume != "V3" {
			t.Fatalf("stored on %s", ps[0].Volume)
		}
	}
	// With no usable volume left, Add fails clearly.
	w = r.newWriter(r.config("WP", "ODD"))
	if err := w.Add(context.Background(), objs[0].Object); !errors.Is(err, ErrNoVolume) {
		t.Fatalf("add with no usable volume = %v", err)
	}
}

func TestWriteErrorMovesOn(t *testing.T) {
	r := newRig(t, []string{"V1", "V2"}, []tape.Cartridge{{Capacity: 1 << 30}, {Capacity: 1 << 30}})
	cfg := r.config("V1", "V2")
	cfg.BundleSize = 2 << 20
	cfg.RingSize = 4 << 20
	w := r.newWriter(cfg)
	objs := makeObjects(8, 40, func(int) int { return 200_000 })
	produce(t, w, r.emu, objs[:20], 1e9)
	r.emu.FailWrite(3)
	produce(t, w, r.emu, objs[20:], 1e9)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.checkStored(objs)
	var failed bool
	for _, e := range r.events {
		failed = failed || (e.Volume == "V1" && e.Kind == EventError && errors.Is(e.Err, tape.ErrMedium))
	}
	if !failed {
		t.Fatalf("events %v: no write error on V1", r.events)
	}
}

func TestBadObject(t *testing.T) {
	r := newRig(t, []string{"V1"}, []tape.Cartridge{{Capacity: 1 << 30}})
	w := r.newWriter(r.config("V1"))
	objs := makeObjects(9, 3, func(int) int { return 5000 })
	objs[1].PackedSum = hexsum([]byte("other"))
	for i, o := range objs {
		err := w.Add(context.Background(), o.Object)
		if (i == 1) != errors.Is(err, bundle.ErrChecksum) {
			t.Fatalf("object %d: %v", i, err)
		}
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.stored[objs[1].ID]; ok || len(r.stored) != 2 {
		t.Fatalf("stored %d objects, the bad one included: %v", len(r.stored), ok)
	}
	r.checkStored([]testObj{objs[0], objs[2]})
}

// TestWriterClosesCutTapeFile: a volume whose last tape file was cut short
// (no filemark after it: a power loss after part of a bundle reached the
// medium, or damage) gets a filemark before the next bundle, so that the
// new bundle is a tape file of its own, which a scan (and tar) reads,
// instead of a tail glued to the broken one.
func TestWriterClosesCutTapeFile(t *testing.T) {
	r := newRig(t, []string{"V1"}, []tape.Cartridge{{Capacity: 1 << 30}})
	objs := makeObjects(7, 5, func(int) int { return 600_000 })
	w := r.newWriter(r.config("V1"))
	produce(t, w, r.emu, objs[:2], 1e9)
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	produce(t, w, r.emu, objs[2:3], 1e9)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Cut tape file 2 in the middle of its object's bytes.
	cut := r.stored[objs[2].ID][0]
	if cut.TapeFile != 2 {
		t.Fatalf("third object in tape file %d, want 2", cut.TapeFile)
	}
	if err := r.emu.Eject(); err != nil {
		t.Fatal(err)
	}
	if err := tape.TruncateCartridge(r.lib.Slots["V1"], cut.Block+1, 1000); err != nil {
		t.Fatal(err)
	}

	w = r.newWriter(r.config("V1"))
	produce(t, w, r.emu, objs[3:], 1e9)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs[3:] {
		if p := r.stored[o.ID][0]; p.TapeFile != 3 {
			t.Fatalf("object written after the cut in tape file %d, want 3 (its own)", p.TapeFile)
		}
	}
	delete(r.stored, objs[2].ID)
	r.checkStored(append(objs[:2:2], objs[3:]...))

	d, err := r.lib.Mount(context.Background(), "V1")
	if err != nil {
		t.Fatal(err)
	}
	info, err := tapevolume.Scan(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Files) != 3 || info.Files[1].Err == nil || info.Files[2].Err != nil || len(info.Files[2].Objects) != 2 {
		t.Fatalf("scan after the cut and a new bundle: %+v", info.Files)
	}
	for i, o := range info.Files[2].Objects {
		if o.Err != nil || o.ID != objs[3+i].ID {
			t.Fatalf("tape file 3, object %d: %+v", i, o)
		}
	}
}
