package recall_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"testing"

	"github.com/strata-hsm/strata/workers/object/objecttest"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

func writeTo(t *testing.T, r *recall.Reader, id string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	tier, n, err := r.WriteTo(context.Background(), id, &buf)
	if err != nil {
		t.Fatalf("write to: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("write to: reported %d bytes, wrote %d", n, buf.Len())
	}
	return tier, buf.Bytes()
}

func TestWriteTo(t *testing.T) {
	o := mixedObject(t, 30*testFrame+999, 20)
	srv := tiertest.StartS3(t)
	hdd, cloud := openDir(t, "hdd"), openS3(t, "cloud", srv)
	o.put(t, hdd)
	o.put(t, cloud)
	for _, tier := range []string{"hdd", "cloud"} {
		fails := &failures{}
		r := newReader(t, fails, 0, []recall.Copy{{Tier: tier, Cost: 0}, {Tier: "other", Cost: 1}}, hdd, cloud)
		got, data := writeTo(t, r, o.id())
		if got != tier || !bytes.Equal(data, o.data) {
			t.Fatalf("%s: tier %q, %d bytes equal=%v", tier, got, len(data), bytes.Equal(data, o.data))
		}
		if f := fails.get(); len(f) != 0 {
			t.Fatalf("%s: failures %v", tier, f)
		}
	}

	t.Run("corrupt frame midway", func(t *testing.T) {
		corruptFrame(t, dirPath(hdd, o.id()), o.m, 20)
		fails := &failures{}
		r := newReader(t, fails, 0, []recall.Copy{{"hdd", 0}, {"cloud", 1}}, hdd, cloud)
		served, data := writeTo(t, r, o.id())
		if !bytes.Equal(data, o.data) {
			t.Fatal("wrong bytes")
		}
		if served != "hdd" { // frames 0..19 of 31
			t.Fatalf("tier %q, want hdd (most bytes)", served)
		}
		if f := fails.get(); len(f) != 1 || f[0].tier != "hdd" || !errors.Is(f[0].err, tier.ErrCorrupt) {
			t.Fatalf("failures %v, want one ErrCorrupt on hdd", f)
		}
	})

	t.Run("all copies bad", func(t *testing.T) {
		corruptFrame(t, s3Path(srv, cloud, o.id()), o.m, 25)
		fails := &failures{}
		r := newReader(t, fails, 0, []recall.Copy{{"hdd", 0}, {"cloud", 1}}, hdd, cloud)
		var buf bytes.Buffer
		_, n, err := r.WriteTo(context.Background(), o.id(), &buf)
		if !errors.Is(err, recall.ErrNoCopy) {
			t.Fatalf("err %v, want ErrNoCopy", err)
		}
		// The prefix written is verified: frames 0..24 (hdd's 0..19, then
		// the cloud's 20..24).
		if want := o.m.Frames[25].Offset; n != want || !bytes.Equal(buf.Bytes(), o.data[:want]) {
			t.Fatalf("wrote %d bytes (prefix equal %v), want the %d bytes before the bad frame", n, bytes.Equal(buf.Bytes(), o.data[:min(n, int64(len(o.data)))]), want)
		}
		if len(fails.get()) != 2 {
			t.Fatalf("failures %v, want 2", fails.get())
		}
	})
}

// TestWriteToDifferentPacking falls back midway to a copy packed with other
// frame sizes (the same object id): the stream resumes inside a frame.
func TestWriteToDifferentPacking(t *testing.T) {
	a := mixedObject(t, 25*testFrame+5, 21)
	b := pack(t, a.data, 100_000)
	if a.id() != b.id() || a.m.PackedSum == b.m.PackedSum {
		t.Fatal("test setup: want one object id packed two ways")
	}
	hdd, nas := openDir(t, "hdd"), openDir(t, "nas")
	a.put(t, hdd)
	b.put(t, nas)
	corruptFrame(t, dirPath(hdd, a.id()), a.m, 9)
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{"hdd", 0}, {"nas", 1}}, hdd, nas)
	_, data := writeTo(t, r, a.id())
	if !bytes.Equal(data, a.data) {
		t.Fatal("wrong bytes")
	}
	if f := fails.get(); len(f) != 1 || f[0].tier != "hdd" {
		t.Fatalf("failures %v, want one on hdd", f)
	}
	// Ranged reads use each copy's own manifest.
	for _, sp := range spans(a, 30, 3) {
		checkRead(t, r, a, sp, "nas") // hdd is tried last after its failure
	}
}

// flaky is a directory tier whose first ranged read breaks after some bytes
// (a dropped connection), the fault injected by overriding one method.
type flaky struct {
	*dir.Target
	breakAfter int64
	broken     atomic.Bool
}

func (f *flaky) GetRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error) {
	rc, err := f.Target.GetRange(ctx, id, off, n)
	if err != nil || n <= f.breakAfter || f.broken.Swap(true) {
		return rc, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, f.breakAfter), errReader{}), rc}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by test") }

func TestWriteToResumesSameCopy(t *testing.T) {
	o := mixedObject(t, 12*testFrame, 22)
	hdd := openDir(t, "hdd")
	o.put(t, hdd)
	fl := &flaky{Target: hdd, breakAfter: o.m.Frames[9].PackedOffset + 17}
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{"hdd", 0}}, fl)
	tier, data := writeTo(t, r, o.id())
	if tier != "hdd" || !bytes.Equal(data, o.data) {
		t.Fatalf("tier %q, bytes equal %v", tier, bytes.Equal(data, o.data))
	}
	if !fl.broken.Load() {
		t.Fatal("test setup: the read never broke")
	}
	if f := fails.get(); len(f) != 0 {
		t.Fatalf("a resumed copy was reported failed: %v", f)
	}
}

func TestWriteToEdgeCases(t *testing.T) {
	hdd := openDir(t, "hdd")
	empty := pack(t, nil, testFrame)
	small := pack(t, objecttest.Text(1000, 5), testFrame)
	for _, o := range []*testObject{empty, small} {
		o.put(t, hdd)
	}
	r := newReader(t, nil, 0, []recall.Copy{{"hdd", 0}}, hdd)
	for _, o := range []*testObject{empty, small} {
		_, data := writeTo(t, r, o.id())
		if !bytes.Equal(data, o.data) {
			t.Fatalf("object of %d bytes: got %d bytes", len(o.data), len(data))
		}
	}
	if _, err := r.ReadVerified(context.Background(), empty.stub(), nil, 0); err != nil {
		t.Fatalf("empty read of an empty object: %v", err)
	}

	// A failing writer is the caller's error, not a copy failure.
	fails := &failures{}
	r = newReader(t, fails, 0, []recall.Copy{{"hdd", 0}}, hdd)
	_, _, err := r.WriteTo(context.Background(), small.id(), failingWriter{})
	if err == nil || errors.Is(err, recall.ErrNoCopy) || len(fails.get()) != 0 {
		t.Fatalf("failing writer: err %v, failures %v", err, fails.get())
	}

	// A cancelled context stops without reporting copy failures.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := r.WriteTo(ctx, small.id(), io.Discard); !errors.Is(err, context.Canceled) || len(fails.get()) != 0 {
		t.Fatalf("cancelled: err %v, failures %v", err, fails.get())
	}
	if _, err := r.ReadVerified(ctx, small.stub(), make([]byte, 10), 0); !errors.Is(err, context.Canceled) || len(fails.get()) != 0 {
		t.Fatalf("cancelled read: err %v, failures %v", err, fails.get())
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRepair(t *testing.T) {
	o := mixedObject(t, 8*testFrame+3, 30)
	srv := tiertest.StartS3(t)
	hdd, nas, cloud := openDir(t, "hdd"), openDir(t, "nas"), openS3(t, "cloud", srv)
	for _, tgt := range []tier.Target{hdd, nas, cloud} {
		o.put(t, tgt)
	}
	ctx := context.Background()
	copies := []recall.Copy{{"hdd", 0}, {"nas", 1}, {"cloud", 2}}
	verifyHdd := func(t *testing.T, r *recall.Reader) {
		t.Helper()
		info, err := hdd.Verify(ctx, o.id())
		if err != nil || info.PackedSum != o.m.PackedSum {
			t.Fatalf("repaired copy: %+v, %v", info, err)
		}
		js, err := hdd.Manifest(ctx, o.id())
		if err != nil || !bytes.Equal(js, o.manifest) {
			t.Fatalf("repaired manifest differs (%v)", err)
		}
		rr := newReader(t, nil, 0, []recall.Copy{{"hdd", 0}}, hdd)
		checkRead(t, rr, o, span{0, o.m.Size}, "hdd")
	}

	t.Run("deleted copy", func(t *testing.T) {
		if err := hdd.Delete(ctx, o.id()); err != nil {
			t.Fatal(err)
		}
		fails := &failures{}
		r := newReader(t, fails, 0, copies, hdd, nas, cloud)
		from, loc, err := r.Repair(ctx, o.id(), hdd)
		if err != nil || from != "nas" || loc != dirPath(hdd, o.id()) {
			t.Fatalf("repair: from %q at %q, %v", from, loc, err)
		}
		verifyHdd(t, r)
		if len(fails.get()) != 0 {
			t.Fatalf("failures %v", fails.get())
		}
	})

	t.Run("corrupt copy, corrupt source", func(t *testing.T) {
		corruptFrame(t, dirPath(hdd, o.id()), o.m, 2)
		corruptFrame(t, dirPath(nas, o.id()), o.m, 6)
		fails := &failures{}
		r := newReader(t, fails, 0, copies, hdd, nas, cloud)
		from, _, err := r.Repair(ctx, o.id(), hdd)
		if err != nil || from != "cloud" {
			t.Fatalf("repair: from %q, %v", from, err)
		}
		verifyHdd(t, r)
		if f := fails.get(); len(f) != 1 || f[0].tier != "nas" || !errors.Is(f[0].err, tier.ErrCorrupt) {
			t.Fatalf("failures %v, want nas corrupt", f)
		}
	})

	t.Run("no good source", func(t *testing.T) {
		if err := hdd.Delete(ctx, o.id()); err != nil {
			t.Fatal(err)
		}
		corruptFrame(t, s3Path(srv, cloud, o.id()), o.m, 1)
		fails := &failures{}
		r := newReader(t, fails, 0, copies, hdd, nas, cloud)
		_, _, err := r.Repair(ctx, o.id(), hdd)
		if !errors.Is(err, recall.ErrNoCopy) {
			t.Fatalf("repair: %v, want ErrNoCopy", err)
		}
		if _, err := hdd.Stat(ctx, o.id()); !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("after a failed repair: stat %v, want ErrNotFound (no partial copy)", err)
		}
		if len(fails.get()) != 2 {
			t.Fatalf("failures %v, want nas and cloud", fails.get())
		}
		ents, err := os.ReadDir(fmt.Sprintf("%s/objects/%s", hdd.Root(), o.id()[:2]))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if bytes.HasSuffix([]byte(e.Name()), []byte(".zst")) {
				t.Fatalf("object file %s left behind", e.Name())
			}
		}
	})
}

// TestWriteToForgedCopy: a copy whose manifest and frames are consistent
// with each other but are not the content of the object id (every frame
// verifies) is caught by the whole-content hash.
func TestWriteToForgedCopy(t *testing.T) {
	o := mixedObject(t, 3*testFrame, 40)
	other := mixedObject(t, 3*testFrame, 41)
	forged := other.m
	forged.ObjectID = o.id()
	js, err := forged.Encode()
	if err != nil {
		t.Fatal(err)
	}
	hdd := openDir(t, "hdd")
	fake := &testObject{data: other.data, m: forged, packed: other.packed, manifest: js}
	fake.put(t, hdd)
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{"hdd", 0}}, hdd)
	_, _, err = r.WriteTo(context.Background(), o.id(), io.Discard)
	if !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("forged copy: err %v, want ErrCorrupt", err)
	}
	if f := fails.get(); len(f) != 1 || f[0].tier != "hdd" {
		t.Fatalf("failures %v, want hdd", f)
	}
}
