package tapewriter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	tapevolume "github.com/strata-hsm/strata/workers/tape/volume"
	"github.com/strata-hsm/strata/workers/tier"
)

// tierRig runs a Tier's stage against a real embedded JetStream, with an
// emulated library, and follows the object.stored events it publishes
// (standing in for the catalog behind TierDeps.Copy).
type tierRig struct {
	t       *testing.T
	lib     string
	staging string
	tier    *Tier
	packer  *pipeline.Emitter

	volume string // the volume objects must land on (default V1)

	mu     sync.Mutex
	stored map[string]*events.ObjectStored
	count  int // object.stored events seen
	data   map[string][]byte
}

// labelCartridges makes labelled emulated cartridges under lib.
func labelCartridges(t *testing.T, lib, pool string, capacity int64, vols ...string) {
	t.Helper()
	for _, v := range vols {
		dir := filepath.Join(lib, v)
		if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: capacity, EarlyWarning: tape.DefaultEarlyWarning(capacity)}); err != nil {
			t.Fatal(err)
		}
		d, err := tape.OpenEmulator(dir, tape.EmulatorModel())
		if err != nil {
			t.Fatal(err)
		}
		if err := tapevolume.Label(d, v, pool, bundle.MinBlockSize, 1, false); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func newTierRig(t *testing.T, cfg TierConfig) *tierRig {
	return newTierRigWith(t, cfg, func(lib string) { labelCartridges(t, lib, "p", 256<<20, "V1") })
}

// newTierRigWith lets setup make the library's cartridges.
func newTierRigWith(t *testing.T, cfg TierConfig, setup func(lib string)) *tierRig {
	t.Helper()
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	r := &tierRig{t: t, lib: t.TempDir(), staging: t.TempDir(), stored: map[string]*events.ObjectStored{}, data: map[string][]byte{}}
	setup(r.lib)
	cfg.Name, cfg.Device, cfg.Pool, cfg.StateDir = "tape", tape.EmulatorPrefix+r.lib, "p", t.TempDir()
	cfg.RingBytes = 4 << 20
	var err error
	r.tier, err = OpenTier(cfg, TierDeps{
		Emitter: pipeline.NewEmitter(js, "test", "store-tape"),
		Logger:  slog.New(slog.DiscardHandler),
		Copy: func(id string) (TapeCopy, bool, error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			s, ok := r.stored[id]
			if !ok {
				return TapeCopy{}, false, nil
			}
			return TapeCopy{Pos: *s.Tape, Size: s.Size, PackedSize: s.PackedSize, PackedSum: s.PackedSum}, true, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runner := &pipeline.Runner{JS: js, Host: "test", Logger: slog.New(slog.DiscardHandler)}
	st := r.tier.Stage()
	st.Backoff = []time.Duration{100 * time.Millisecond}
	st.MaxDeliver = 50
	runDone := make(chan error, 1)
	go func() { runDone <- runner.Run(ctx, st) }()
	followDone := make(chan struct{})
	go func() {
		defer close(followDone)
		pipeline.FollowRecords(ctx, js, 1, pipeline.FollowOptions{Filter: []string{events.Subject("test", events.KindObjectStored)}},
			func(recs []pipeline.Record) error {
				r.mu.Lock()
				defer r.mu.Unlock()
				for _, rec := range recs {
					s := rec.Event.(*events.ObjectStored)
					r.stored[s.ObjectID] = s
					r.count++
				}
				return nil
			})
	}()
	t.Cleanup(func() {
		cancel()
		<-followDone
		if err := <-runDone; err != nil {
			t.Errorf("runner: %v", err)
		}
		if err := r.tier.Close(); err != nil {
			t.Errorf("close tier: %v", err)
		}
	})
	r.packer = pipeline.NewEmitter(js, "test", "compressor")
	return r
}

// pack stages n objects of the given size and publishes object.packed
// for each; it returns their ids.
func (r *tierRig) pack(seed uint64, n, size int) []string {
	r.t.Helper()
	rnd := rand.New(rand.NewPCG(seed, 9))
	var ids []string
	for i := range n {
		data := make([]byte, size+i)
		for j := range data {
			data[j] = byte(rnd.Uint32())
		}
		id := hexsum(append([]byte(fmt.Sprint(seed, i)), data...))
		zst := filepath.Join(r.staging, id+".zst")
		if err := os.WriteFile(zst, data, 0o600); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.staging, id+".json"), []byte(`{"object_id":"`+id+`"}`), 0o600); err != nil {
			r.t.Fatal(err)
		}
		st := eventstest.Stat(int64(len(data)))
		ev := &events.ObjectPacked{FileID: eventstest.FileID(int(seed)*1000 + i), Path: "/hot/" + id, ObjectID: id, Stat: st,
			Size: st.Size, PackedSize: int64(len(data)), PackedSum: hexsum(data), FrameSize: 4 << 20, Frames: 1, Staging: zst}
		if _, err := r.packer.Emit(context.Background(), ev, id); err != nil {
			r.t.Fatal(err)
		}
		r.mu.Lock()
		r.data[id] = data
		r.mu.Unlock()
		ids = append(ids, id)
	}
	return ids
}

func (r *tierRig) waitPending(n int) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := r.tier.Pending(context.Background())
		if err != nil {
			r.t.Fatal(err)
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d objects wait in the writer, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *tierRig) wantVolume() string {
	if r.volume == "" {
		return "V1"
	}
	return r.volume
}

func (r *tierRig) storedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

func (r *tierRig) waitStored(ids []string) {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.mu.Lock()
		missing := 0
		for _, id := range ids {
			if r.stored[id] == nil {
				missing++
			}
		}
		r.mu.Unlock()
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d of %d objects not reported stored", missing, len(ids))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkOnTape reads every object back through the tier's Target (range
// and manifest) and compares it with what was staged.
func (r *tierRig) checkOnTape(ids []string) {
	r.t.Helper()
	ctx := context.Background()
	tg := r.tier.Target()
	for _, id := range ids {
		r.mu.Lock()
		want, s := r.data[id], r.stored[id]
		r.mu.Unlock()
		if s.TierKind != events.TierTape || s.Tape == nil || s.Location != Location(*s.Tape) || s.Tape.Volume != r.wantVolume() {
			r.t.Fatalf("object.stored %+v", s)
		}
		if err := s.Validate(); err != nil {
			r.t.Fatal(err)
		}
		rc, err := tg.GetRange(ctx, id, 0, int64(len(want)))
		if err != nil {
			r.t.Fatalf("get %s: %v", id[:8], err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			r.t.Fatalf("object %s: %d bytes back from tape, equal %v, %v", id[:8], len(got), bytes.Equal(got, want), err)
		}
		m, err := tg.Manifest(ctx, id)
		if err != nil || string(m) != `{"object_id":"`+id+`"}` {
			r.t.Fatalf("manifest %s: %q %v", id[:8], m, err)
		}
	}
}

// TestTierAcksOnlyAfterFlush: objects wait in the writer (their messages
// unacknowledged, no object.stored) until a flushing filemark; then every
// one is reported with its tape position and reads back from tape.
func TestTierAcksOnlyAfterFlush(t *testing.T) {
	r := newTierRig(t, TierConfig{BundleAge: time.Hour})
	ids := r.pack(1, 5, 300<<10)
	r.waitPending(5)
	if n := r.storedCount(); n != 0 {
		t.Fatalf("%d objects reported stored before any flushing filemark", n)
	}
	if st := r.tier.dev.Emulator().Stats(); st.Flushes != 0 {
		t.Fatalf("flushing filemarks before Flush: %+v", st)
	}
	if err := r.tier.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.waitStored(ids)
	r.waitPending(0)
	r.checkOnTape(ids)

	// Target: Stat from the catalog, Verify from the tape, Put and Delete
	// refused clearly, unknown objects not found, ranges checked.
	ctx := context.Background()
	tg := r.tier.Target()
	if info, err := tg.Verify(ctx, ids[2]); err != nil || info.PackedSize != int64(len(r.data[ids[2]])) {
		t.Fatalf("verify: %+v %v", info, err)
	}
	if _, err := tg.Put(ctx, tier.Object{}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("put: %v", err)
	}
	if _, err := tg.Stat(ctx, eventstest.ObjectID(1)); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("stat of an unknown object: %v", err)
	}
	if _, err := tg.GetRange(ctx, ids[0], 1, int64(len(r.data[ids[0]]))); !errors.Is(err, tier.ErrRange) {
		t.Fatalf("range past the end: %v", err)
	}
	rc, err := tg.GetRange(ctx, ids[1], 1000, 5000)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	if !bytes.Equal(got, r.data[ids[1]][1000:6000]) {
		t.Fatal("ranged read from tape differs")
	}
}

// TestTierFlushesOnAge: a quiet source still gets its objects stored
// within BundleAge.
func TestTierFlushesOnAge(t *testing.T) {
	r := newTierRig(t, TierConfig{BundleAge: 300 * time.Millisecond})
	ids := r.pack(2, 3, 100<<10)
	r.waitStored(ids)
	r.checkOnTape(ids)
}

// TestTierPowerLossBeforeFlush: objects written after the last flushing
// filemark are lost with the drive's buffer at a power cut; none of them
// was reported stored, every object that was reported reads back intact,
// and the lost ones are written again (their messages were never
// acknowledged) once the drive is back.
func TestTierPowerLossBeforeFlush(t *testing.T) {
	// MinRate 1 B/s: the source is never too slow to stream, so the ring
	// (not the spool) feeds the drive and b's blocks reach its buffer.
	r := newTierRig(t, TierConfig{BundleAge: time.Hour, MinRate: 1})
	a := r.pack(3, 3, 1<<20)
	r.waitPending(3)
	if err := r.tier.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.waitStored(a)
	atFlush := r.tier.dev.Emulator().Stats().BytesWritten
	b := r.pack(4, 3, 3<<20)
	r.waitPending(3)
	if n := r.storedCount(); n != len(a) {
		t.Fatalf("%d object.stored events before the power cut, want %d", n, len(a))
	}
	// Some of b's blocks are in the drive's volatile buffer (the ring
	// streamed them), so the cut really loses data.
	if st := r.tier.dev.Emulator().Stats(); st.BytesWritten < atFlush+bundle.MinBlockSize {
		t.Fatalf("nothing of the second batch reached the drive before the cut: %+v", st)
	}
	if err := r.tier.dev.Emulator().PowerLoss(); err != nil {
		t.Fatal(err)
	}
	// What survived on the cartridge: every reported object, read with a
	// fresh drive.
	d, err := tape.OpenEmulator(filepath.Join(r.lib, "V1"), tape.EmulatorModel())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range a {
		r.mu.Lock()
		s, want := r.stored[id], r.data[id]
		r.mu.Unlock()
		var buf bytes.Buffer
		if err := bundle.ReadObject(d, bundle.MinBlockSize, *s.Tape, s.PackedSize, s.PackedSum, &buf); err != nil || !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("reported object %s after power loss: %v", id[:8], err)
		}
	}
	d.Close()

	// The tier notices at its next flush, fails the waiting objects
	// (their messages are redelivered) and writes them again.
	if err := r.tier.Flush(context.Background()); err == nil {
		t.Fatal("flush after a power cut succeeded")
	}
	r.waitPending(3)
	if err := r.tier.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.waitStored(b)
	r.checkOnTape(append(a, b...))
}

// TestTierSkipsUnwritableVolumes: a write-protected cartridge and one
// whose label names another volume are never written; the objects land on
// the next good volume, and the tier records why each was skipped.
func TestTierSkipsUnwritableVolumes(t *testing.T) {
	var before int64
	r := newTierRigWith(t, TierConfig{BundleAge: 200 * time.Millisecond}, func(lib string) {
		labelCartridges(t, lib, "p", 256<<20, "V1", "V2", "V3")
		if err := tape.SetWriteProtect(filepath.Join(lib, "V1"), true); err != nil {
			t.Fatal(err)
		}
		// V2's cartridge carries V9's label: a mix-up.
		d, err := tape.OpenEmulator(filepath.Join(lib, "V2"), tape.EmulatorModel())
		if err != nil {
			t.Fatal(err)
		}
		if err := tapevolume.Label(d, "V9", "p", bundle.MinBlockSize, 1, true); err != nil {
			t.Fatal(err)
		}
		d.Close()
		fi, _ := os.Stat(filepath.Join(lib, "V2", "data"))
		before = fi.Size()
	})
	r.volume = "V3"
	ids := r.pack(5, 3, 200<<10)
	r.waitStored(ids)
	r.checkOnTape(ids)
	states := map[string]string{}
	for _, v := range r.tier.Volumes() {
		states[v.Volume] = v.State
	}
	if states["V1"] != EventWriteProtected || states["V2"] != EventLabelMismatch || states["V3"] != EventMounted {
		t.Fatalf("volume states: %+v", r.tier.Volumes())
	}
	if fi, _ := os.Stat(filepath.Join(r.lib, "V2", "data")); fi.Size() != before {
		t.Fatalf("the mislabelled cartridge was written: %d bytes, was %d", fi.Size(), before)
	}
}
