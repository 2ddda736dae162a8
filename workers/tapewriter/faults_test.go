package tapewriter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// TestRecallThroughTapeReadError: a medium error (EIO) at a block inside
// an object's bytes makes a recall from tape fall over to the copy on a
// directory tier, with the right bytes; with the tape copy alone the
// recall ends in ErrNoCopy (EIO for the program) and hands out nothing;
// the error is the drive's, not the copy's, so the next read, once the
// block reads again, gets the right bytes from tape.
func TestRecallThroughTapeReadError(t *testing.T) {
	tr := openTestTier(t)
	tgt := tr.Target()
	data := tiertest.RandomBytes(99, 2<<20+4321)
	var buf bytes.Buffer
	m, err := object.Pack(context.Background(), bytes.NewReader(data), &buf, object.Options{FrameSize: 256 << 10, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	js, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	o := tier.Object{ID: m.ObjectID, PackedSize: m.PackedSize, PackedSum: m.PackedSum, Manifest: js,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil }}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hdd, err := dir.Open(dir.Config{Name: "hdd", Root: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range []tier.Target{tgt, hdd} {
		if _, err := tg.Put(ctx, o); err != nil {
			t.Fatalf("put on %s: %v", tg.Name(), err)
		}
	}
	c, ok, err := tr.lookup(o.ID)
	if err != nil || !ok {
		t.Fatalf("no tape copy known: %v", err)
	}
	bad := c.Pos.Block + (c.Pos.Offset+c.PackedSize/2)/int64(bundle.MinBlockSize)
	st := stub.Info{FileID: "f", ObjectID: o.ID, State: stub.Released, Size: m.Size}
	for _, cps := range []tiertest.GoodCopies{{tgt.Name(), "hdd"}, {tgt.Name()}} {
		rd, err := recall.New(recall.Config{Targets: map[string]tier.Target{tgt.Name(): tgt, "hdd": hdd},
			Catalog: cps, Costs: map[string]int{tgt.Name(): 1, "hdd": 2}, FailureBackoff: -1})
		if err != nil {
			t.Fatal(err)
		}
		tr.dev.Emulator().FailReadAt(bad)
		p := make([]byte, len(data))
		from, err := rd.ReadVerified(ctx, st, p, 0)
		t.Logf("copies %v, read error at block %d: from %q: %v", cps, bad, from, err)
		switch {
		case len(cps) == 2 && (err != nil || from != "hdd" || !bytes.Equal(p, data)):
			t.Fatalf("with a second copy: from %q, %v (bytes equal: %v); want the right bytes from hdd", from, err, bytes.Equal(p, data))
		case len(cps) == 1 && !errors.Is(err, recall.ErrNoCopy):
			t.Fatalf("tape copy alone: %v, want ErrNoCopy", err)
		case len(cps) == 1 && !bytes.Equal(p, make([]byte, len(p))):
			t.Fatal("a failed recall wrote into the buffer")
		}
	}
	// The block reads again: the same copy serves the right bytes.
	rd, err := recall.New(recall.Config{Targets: map[string]tier.Target{tgt.Name(): tgt}, Catalog: tiertest.GoodCopies{tgt.Name()}, FailureBackoff: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len(data))
	if from, err := rd.ReadVerified(ctx, st, p, 0); err != nil || from != tgt.Name() || !bytes.Equal(p, data) {
		t.Fatalf("read after the error cleared: from %q, %v", from, err)
	}
}
