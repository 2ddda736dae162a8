package recall_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

type span struct{ off, n int64 }

// spans returns the ranges every read test covers: edges, frame
// boundaries, the whole object, and count random ranges.
func spans(o *testObject, count int, seed uint64) []span {
	size := o.m.Size
	out := []span{{0, 1}, {size - 1, 1}, {0, size}, {0, 0}, {size, 0}, {size / 2, 0}, {1, size - 2}}
	for _, f := range o.m.Frames {
		for _, d := range []int64{-1, 0, 1} {
			if off := f.Offset + d; off >= 0 && off < size {
				out = append(out, span{off, min(2, size-off)})
			}
		}
		out = append(out, span{f.Offset, f.Size}) // exactly one frame
	}
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for range count {
		off := rng.Int64N(size)
		var n int64
		switch rng.IntN(3) {
		case 0:
			n = rng.Int64N(min(4096, size-off) + 1)
		case 1:
			n = rng.Int64N(min(3*testFrame, size-off) + 1)
		default:
			n = rng.Int64N(size - off + 1)
		}
		out = append(out, span{off, n})
	}
	return out
}

// read checks that the reader returns exactly the original bytes of sp
// from tier want.
func checkRead(t *testing.T, r *recall.Reader, o *testObject, sp span, want string) {
	t.Helper()
	p := make([]byte, sp.n)
	tier, err := r.ReadVerified(context.Background(), o.stub(), p, sp.off)
	if err != nil {
		t.Fatalf("read [%d, +%d): %v", sp.off, sp.n, err)
	}
	if !bytes.Equal(p, o.data[sp.off:sp.off+sp.n]) {
		t.Fatalf("read [%d, +%d): wrong bytes", sp.off, sp.n)
	}
	if sp.n > 0 && tier != want {
		t.Fatalf("read [%d, +%d): served by %q, want %q", sp.off, sp.n, tier, want)
	}
}

func TestReadVerifiedExactBytes(t *testing.T) {
	o := mixedObject(t, 17*testFrame+12345, 1)
	srv := tiertest.StartS3(t)
	hdd, cloud := openDir(t, "hdd"), openS3(t, "cloud", srv)
	o.put(t, hdd)
	o.put(t, cloud)
	for _, tc := range []struct {
		tier  string
		count int
	}{{"hdd", 300}, {"cloud", 60}} {
		t.Run(tc.tier, func(t *testing.T) {
			fails := &failures{}
			r := newReader(t, fails, 0, []recall.Copy{{Tier: tc.tier, Cost: 0}, {Tier: "other", Cost: 1}}, hdd, cloud)
			for _, sp := range spans(o, tc.count, 7) {
				checkRead(t, r, o, sp, tc.tier)
			}
			if f := fails.get(); len(f) != 0 {
				t.Fatalf("OnFailure called: %v", f)
			}
		})
	}
}

func TestReadOutsideObject(t *testing.T) {
	o := mixedObject(t, 3*testFrame, 2)
	hdd := openDir(t, "hdd")
	o.put(t, hdd)
	r := newReader(t, nil, 0, []recall.Copy{{Tier: "hdd"}}, hdd)
	for _, sp := range []span{{-1, 1}, {o.m.Size, 1}, {o.m.Size - 10, 11}, {0, o.m.Size + 1}} {
		p := make([]byte, sp.n)
		if _, err := r.ReadVerified(context.Background(), o.stub(), p, sp.off); err == nil {
			t.Errorf("read [%d, +%d) of %d bytes: no error", sp.off, sp.n, o.m.Size)
		}
	}
}

func TestCorruptCopyFallsBack(t *testing.T) {
	o := mixedObject(t, 12*testFrame+100, 3)
	srv := tiertest.StartS3(t)
	hdd, cloud := openDir(t, "hdd"), openS3(t, "cloud", srv)
	o.put(t, hdd)
	o.put(t, cloud)
	const bad = 5
	corruptFrame(t, dirPath(hdd, o.id()), o.m, bad)
	copies := []recall.Copy{{Tier: "cloud", Cost: 10}, {Tier: "hdd", Cost: 1}}

	fails := &failures{}
	r := newReader(t, fails, -1, copies, hdd, cloud) // no backoff: hdd stays first
	badFrame := o.m.Frames[bad]
	// Reads that touch the corrupt frame come from the cloud, and hdd is
	// reported corrupt each time; others still come from hdd.
	for _, sp := range []span{
		{badFrame.Offset, 1}, {badFrame.Offset + badFrame.Size - 1, 1}, {0, o.m.Size}, {badFrame.Offset - 10, 20},
	} {
		fails.reset()
		checkRead(t, r, o, sp, "cloud")
		f := fails.get()
		if len(f) != 1 || f[0].tier != "hdd" || f[0].id != o.id() || !errors.Is(f[0].err, tier.ErrCorrupt) || !errors.Is(f[0].err, object.ErrCorrupt) {
			t.Fatalf("read [%d, +%d): failures %v, want one ErrCorrupt on hdd", sp.off, sp.n, f)
		}
	}
	fails.reset()
	for _, sp := range []span{{0, badFrame.Offset}, {badFrame.Offset + badFrame.Size, o.m.Size - badFrame.Offset - badFrame.Size}} {
		checkRead(t, r, o, sp, "hdd")
	}
	if f := fails.get(); len(f) != 0 {
		t.Fatalf("reads of good frames reported failures: %v", f)
	}

	// With the default backoff, the corrupt copy is tried last after one
	// failure: a second read reports nothing and goes straight to the cloud.
	fails.reset()
	r = newReader(t, fails, 0, copies, hdd, cloud)
	checkRead(t, r, o, span{0, o.m.Size}, "cloud")
	checkRead(t, r, o, span{0, o.m.Size}, "cloud")
	checkRead(t, r, o, span{0, 10}, "cloud")
	if f := fails.get(); len(f) != 1 {
		t.Fatalf("failures %v, want exactly one", f)
	}
}

func TestMissingCopyFallsBack(t *testing.T) {
	o := mixedObject(t, 4*testFrame, 4)
	hdd, nas := openDir(t, "hdd"), openDir(t, "nas")
	o.put(t, hdd)
	o.put(t, nas)
	if err := os.Remove(dirPath(hdd, o.id())); err != nil {
		t.Fatal(err)
	}
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{Tier: "hdd", Cost: 1}, {Tier: "nas", Cost: 2}}, hdd, nas)
	checkRead(t, r, o, span{testFrame - 5, 10}, "nas")
	f := fails.get()
	if len(f) != 1 || f[0].tier != "hdd" || !errors.Is(f[0].err, tier.ErrNotFound) {
		t.Fatalf("failures %v, want one ErrNotFound on hdd", f)
	}

	// A truncated copy is corrupt: its tail is read from the other copy.
	o.put(t, hdd)
	if err := os.Truncate(dirPath(hdd, o.id()), o.m.PackedSize/2); err != nil {
		t.Fatal(err)
	}
	fails.reset()
	r = newReader(t, fails, 0, []recall.Copy{{Tier: "hdd", Cost: 1}, {Tier: "nas", Cost: 2}}, hdd, nas)
	checkRead(t, r, o, span{0, 10}, "hdd")
	checkRead(t, r, o, span{o.m.Size - 10, 10}, "nas")
	f = fails.get()
	if len(f) != 1 || f[0].tier != "hdd" || !errors.Is(f[0].err, tier.ErrCorrupt) {
		t.Fatalf("failures %v (%v), want one ErrCorrupt on hdd", f, errOf(f))
	}
}

func TestUnreachableS3FallsBack(t *testing.T) {
	o := mixedObject(t, 6*testFrame+7, 5)
	hdd := openDir(t, "hdd")
	o.put(t, hdd)
	copies := []recall.Copy{{Tier: "cloud", Cost: 0}, {Tier: "hdd", Cost: 5}}

	t.Run("dead port", func(t *testing.T) {
		dead, err := s3.Open(s3.Config{
			Name: "cloud", Endpoint: fmt.Sprintf("127.0.0.1:%d", tiertest.FreePort(t)), Bucket: "strata",
			AccessKey: "k", SecretKey: "s", NoTLS: true, MaxRetries: 1,
		}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fails := &failures{}
		r := newReader(t, fails, 0, copies, hdd, dead)
		checkRead(t, r, o, span{100, 3 * testFrame}, "hdd")
		f := fails.get()
		if len(f) != 1 || f[0].tier != "cloud" || !errors.Is(f[0].err, tier.ErrUnavailable) {
			t.Fatalf("failures %v (%v), want one ErrUnavailable on cloud", f, errOf(f))
		}
	})

	t.Run("stopped server", func(t *testing.T) {
		srv, stop := startVersitygw(t)
		cloud := openS3(t, "cloud", srv)
		o.put(t, cloud)
		fails := &failures{}
		r := newReader(t, fails, 0, copies, hdd, cloud)
		checkRead(t, r, o, span{0, o.m.Size}, "cloud") // manifest cached, connection open
		stop()
		checkRead(t, r, o, span{5, 2 * testFrame}, "hdd")
		f := fails.get()
		if len(f) != 1 || f[0].tier != "cloud" || !errors.Is(f[0].err, tier.ErrUnavailable) {
			t.Fatalf("failures %v (%v), want one ErrUnavailable on cloud", f, errOf(f))
		}
	})
}

func TestAllCopiesBad(t *testing.T) {
	o := mixedObject(t, 5*testFrame, 6)
	hdd, nas := openDir(t, "hdd"), openDir(t, "nas")
	o.put(t, hdd)
	o.put(t, nas)
	for i := range o.m.Frames {
		corruptFrame(t, dirPath(hdd, o.id()), o.m, i)
	}
	if err := nas.Delete(context.Background(), o.id()); err != nil {
		t.Fatal(err)
	}
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{Tier: "hdd", Cost: 1}, {Tier: "nas", Cost: 2}, {Tier: "tape", Cost: 9}}, hdd, nas)
	p := bytes.Repeat([]byte{0xAA}, int(o.m.Size))
	served, err := r.ReadVerified(context.Background(), o.stub(), p, 0)
	if err == nil || !errors.Is(err, recall.ErrNoCopy) {
		t.Fatalf("read: tier %q, err %v; want ErrNoCopy", served, err)
	}
	var nc *recall.NoCopyError
	if !errors.As(err, &nc) || len(nc.Failures) != 2 || nc.Failures[0].Tier != "hdd" || nc.Failures[1].Tier != "nas" ||
		!errors.Is(nc.Failures[0].Err, tier.ErrCorrupt) || !errors.Is(nc.Failures[1].Err, tier.ErrNotFound) ||
		len(nc.Skipped) != 1 || nc.Skipped[0] != "tape" {
		t.Fatalf("error %v: want corrupt hdd, missing nas, skipped tape", err)
	}
	if !bytes.Equal(p, bytes.Repeat([]byte{0xAA}, int(o.m.Size))) {
		t.Fatal("a failed read changed the caller's buffer")
	}
	if f := fails.get(); len(f) != 2 {
		t.Fatalf("failures %v, want 2", f)
	}
	t.Logf("error: %v", err)

	// No copy at all, or only on tiers this host cannot read.
	for _, copies := range [][]recall.Copy{nil, {{Tier: "tape"}}} {
		r := newReader(t, nil, 0, copies, hdd)
		if _, err := r.ReadVerified(context.Background(), o.stub(), p[:10], 0); !errors.Is(err, recall.ErrNoCopy) {
			t.Fatalf("copies %v: err %v, want ErrNoCopy", copies, err)
		}
	}
}

func TestStubSizeMismatch(t *testing.T) {
	o := mixedObject(t, 3*testFrame+1, 7)
	hdd := openDir(t, "hdd")
	o.put(t, hdd)
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{Tier: "hdd"}}, hdd)
	for _, size := range []int64{o.m.Size + 1, o.m.Size - 1} {
		st := o.stub()
		st.Size = size
		p := make([]byte, 100)
		_, err := r.ReadVerified(context.Background(), st, p, 0)
		if !errors.Is(err, recall.ErrStubMismatch) || !errors.Is(err, recall.ErrNoCopy) {
			t.Fatalf("stub size %d, object %d: err %v, want ErrStubMismatch", size, o.m.Size, err)
		}
	}
	// A manifest that describes another object is a bad copy.
	other := mixedObject(t, 2*testFrame, 8)
	if err := os.WriteFile(dirPath(hdd, o.id())[:len(dirPath(hdd, o.id()))-len(".zst")]+".json", other.manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	r = newReader(t, fails, 0, []recall.Copy{{Tier: "hdd"}}, hdd)
	_, err := r.ReadVerified(context.Background(), o.stub(), make([]byte, 10), 0)
	if !errors.Is(err, recall.ErrNoCopy) || !errorsAsCorrupt(err) {
		t.Fatalf("foreign manifest: err %v, want ErrNoCopy with a corrupt copy", err)
	}
}

func errorsAsCorrupt(err error) bool {
	var nc *recall.NoCopyError
	return errors.As(err, &nc) && len(nc.Failures) == 1 && errors.Is(nc.Failures[0].Err, tier.ErrCorrupt)
}

func TestCopyOrder(t *testing.T) {
	o := mixedObject(t, 2*testFrame, 9)
	a, b, c := openDir(t, "a"), openDir(t, "b"), openDir(t, "c")
	for _, tgt := range []tier.Target{a, b, c} {
		o.put(t, tgt)
	}
	for _, tc := range []struct {
		copies []recall.Copy
		want   string
	}{
		{[]recall.Copy{{"c", 1}, {"b", 1}, {"a", 2}}, "b"},
		{[]recall.Copy{{"c", 0}, {"b", 1}, {"a", 2}}, "c"},
		{[]recall.Copy{{"tape", -5}, {"a", 3}, {"b", 3}}, "a"},
	} {
		r := newReader(t, nil, 0, tc.copies, a, b, c)
		checkRead(t, r, o, span{0, 10}, tc.want)
	}
}

func TestManifest(t *testing.T) {
	o := mixedObject(t, 2*testFrame, 10)
	hdd, nas := openDir(t, "hdd"), openDir(t, "nas")
	o.put(t, nas)
	fails := &failures{}
	r := newReader(t, fails, 0, []recall.Copy{{"hdd", 0}, {"nas", 1}}, hdd, nas)
	m, err := r.Manifest(context.Background(), o.id())
	if err != nil {
		t.Fatal(err)
	}
	if m.ObjectID != o.id() || m.PackedSum != o.m.PackedSum || len(m.Frames) != len(o.m.Frames) {
		t.Fatalf("manifest %+v, want %+v", m, o.m)
	}
	if f := fails.get(); len(f) != 1 || f[0].tier != "hdd" {
		t.Fatalf("failures %v, want hdd missing", f)
	}
	// Cached: still served with the copy gone.
	if err := nas.Delete(context.Background(), o.id()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Manifest(context.Background(), o.id()); err != nil {
		t.Fatalf("cached manifest: %v", err)
	}
	if _, err := r.Manifest(context.Background(), "not-an-id"); err == nil {
		t.Fatal("bad id: no error")
	}
}

func TestConcurrentReads(t *testing.T) {
	o := mixedObject(t, 20*testFrame+3, 11)
	hdd, nas := openDir(t, "hdd"), openDir(t, "nas")
	o.put(t, hdd)
	o.put(t, nas)
	corruptFrame(t, dirPath(hdd, o.id()), o.m, 7)
	corruptFrame(t, dirPath(nas, o.id()), o.m, 13)
	r := newReader(t, &failures{}, -1, []recall.Copy{{"hdd", 0}, {"nas", 1}}, hdd, nas)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			for range 40 {
				off := rng.Int64N(o.m.Size)
				n := rng.Int64N(min(o.m.Size-off, 2*testFrame) + 1)
				p := make([]byte, n)
				_, err := r.ReadVerified(context.Background(), o.stub(), p, off)
				f7, f13 := o.m.Frames[7], o.m.Frames[13]
				both := n > 0 && off < f7.Offset+f7.Size && off+n > f7.Offset && off < f13.Offset+f13.Size && off+n > f13.Offset
				switch {
				case both && !errors.Is(err, recall.ErrNoCopy):
					errs <- fmt.Errorf("read [%d, +%d) spans both bad frames: err %v, want ErrNoCopy", off, n, err)
					return
				case !both && err != nil:
					errs <- fmt.Errorf("read [%d, +%d): %w", off, n, err)
					return
				case !both && !bytes.Equal(p, o.data[off:off+n]):
					errs <- fmt.Errorf("read [%d, +%d): wrong bytes", off, n)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestConfigValidate(t *testing.T) {
	hdd := openDir(t, "hdd")
	copies := copyList(nil)
	for name, cfg := range map[string]recall.Config{
		"no targets": {Catalog: copies},
		"no catalog": {Targets: map[string]tier.Target{"hdd": hdd}},
		"nil target": {Targets: map[string]tier.Target{"hdd": nil}, Catalog: copies},
		"bad cache":  {Targets: map[string]tier.Target{"hdd": hdd}, Catalog: copies, ManifestCache: -1},
	} {
		if _, err := recall.New(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// A failing catalog is an error, not a panic.
	r, err := recall.New(recall.Config{
		Targets: map[string]tier.Target{"hdd": hdd},
		Catalog: catalogFunc(func(string) ([]catalog.Copy, error) { return nil, errors.New("catalog closed") }),
	})
	if err != nil {
		t.Fatal(err)
	}
	o := mixedObject(t, 1000, 12)
	if _, err := r.ReadVerified(context.Background(), o.stub(), make([]byte, 10), 0); err == nil {
		t.Fatal("catalog error: no error")
	}
}

// source is the interceptor's Source interface, restated here (recall does
// not import the interceptor): Reader must keep satisfying it.
type source interface {
	ReadVerified(ctx context.Context, st stub.Info, p []byte, off int64) (tier string, err error)
}

var _ source = (*recall.Reader)(nil)

// TestCatalogCopies: only copies the catalog believes good are read, in the
// order of their tiers' costs; a copy found corrupt is published as
// object.corrupt on the log.
func TestCatalogCopies(t *testing.T) {
	o := mixedObject(t, 3*testFrame, 6)
	hdd, nas := openDir(t, "hdd"), openDir(t, "nas")
	o.put(t, hdd)
	o.put(t, nas)
	srv := pipelinetest.RunServer(t)
	lister := catalogFunc(func(string) ([]catalog.Copy, error) {
		return []catalog.Copy{{Tier: "hdd", State: catalog.CopyCorrupt}, {Tier: "nas", State: catalog.CopyGood}}, nil
	})
	r, err := recall.New(recall.Config{Targets: map[string]tier.Target{"hdd": hdd, "nas": nas}, Catalog: lister,
		Costs: map[string]int{"hdd": 0, "nas": 9}, Emitter: pipeline.NewEmitter(srv.JetStream(), "test", "recall")})
	if err != nil {
		t.Fatal(err)
	}
	checkRead(t, r, o, span{0, 10}, "nas") // hdd is cheaper but not good

	// Both good: hdd first; a damaged hdd copy is reported on the log.
	corruptFrame(t, dirPath(hdd, o.id()), o.m, 1)
	r, err = recall.New(recall.Config{Targets: map[string]tier.Target{"hdd": hdd, "nas": nas}, Catalog: copyList{{"hdd", 0}, {"nas", 9}},
		Costs: map[string]int{"hdd": 0, "nas": 9}, Emitter: pipeline.NewEmitter(srv.JetStream(), "test", "recall")})
	if err != nil {
		t.Fatal(err)
	}
	checkRead(t, r, o, span{testFrame + 5, 10}, "nas")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got *events.ObjectCorrupt
	err = pipeline.FollowWith(ctx, srv.JetStream(), 1, pipeline.FollowOptions{}, func(batch []events.Envelope) error {
		for _, env := range batch {
			if ev, err := events.DecodeData(env.Type, env.Data); err == nil {
				if c, ok := ev.(*events.ObjectCorrupt); ok {
					got = c
					return pipeline.ErrStop
				}
			}
		}
		return nil
	})
	if err != nil || got == nil || got.ObjectID != o.id() || got.Tier != "hdd" {
		t.Fatalf("object.corrupt on the log: %+v, %v; want one for hdd", got, err)
	}
}
