package faulttest_test

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
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/faulttest"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

type packed struct {
	data, packed, manifest []byte
	m                      object.Manifest
}

func packObject(t *testing.T, seed uint64, size int64) packed {
	t.Helper()
	data := tiertest.RandomBytes(seed, size)
	var buf bytes.Buffer
	m, err := object.Pack(context.Background(), bytes.NewReader(data), &buf, object.Options{FrameSize: 256 << 10, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	js, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return packed{data: data, packed: buf.Bytes(), manifest: js, m: m}
}

func (p packed) object() tier.Object {
	return tier.Object{ID: p.m.ObjectID, PackedSize: p.m.PackedSize, PackedSum: p.m.PackedSum, Manifest: p.manifest,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(p.packed)), nil }}
}

// TestRecallThroughFaults: a recall whose cheapest copy sits behind each
// read fault gets the right bytes — from that copy when the fault does no
// harm (latency), else from the next copy (a directory tier) — and with
// the faulty copy alone gets the right bytes or an error, never wrong
// bytes; a hung tier costs a bounded wait, not the reader for ever.
func TestRecallThroughFaults(t *testing.T) {
	rigs(t, func(t *testing.T, r rig) {
		obj := packObject(t, 11, 3<<20+777)
		if _, err := r.Direct.Put(ctxFor(t, 30*time.Second), obj.object()); err != nil {
			t.Fatal(err)
		}
		hdd, err := dir.Open(dir.Config{Name: "hdd", Root: t.TempDir()}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hdd.Put(ctxFor(t, 30*time.Second), obj.object()); err != nil {
			t.Fatal(err)
		}
		st := stub.Info{FileID: "f", ObjectID: obj.m.ObjectID, State: stub.Released, Size: obj.m.Size}
		ranges := [][2]int64{{0, int64(len(obj.data))}, {1 << 20, 300 << 10}}
		for _, f := range getFaults {
			for _, alone := range []bool{false, true} {
				name := f.Fault.String() + "/with-second-copy"
				cps := tiertest.GoodCopies{r.Faulty.Name(), "hdd"}
				if alone {
					name, cps = f.Fault.String()+"/alone", tiertest.GoodCopies{r.Faulty.Name()}
				}
				t.Run(name, func(t *testing.T) {
					rd, err := recall.New(recall.Config{
						Targets: map[string]tier.Target{r.Faulty.Name(): r.Faulty, "hdd": hdd},
						Catalog: cps, Costs: map[string]int{r.Faulty.Name(): 1, "hdd": 2}, FailureBackoff: -1,
					})
					if err != nil {
						t.Fatal(err)
					}
					rgs := ranges
					if f.Fault == faulttest.Hang || f.Fault == faulttest.Latency {
						rgs = ranges[1:] // slow: one range is enough
					}
					for _, rg := range rgs {
						r.Proxy.Set(f)
						p := make([]byte, rg[1])
						start := time.Now()
						from, err := rd.ReadVerified(ctxFor(t, 60*time.Second), st, p, rg[0])
						took := time.Since(start)
						r.Proxy.Clear()
						t.Logf("%s %s: bytes [%d,+%d) from %q after %v: %v", r.Kind, name, rg[0], rg[1], from, took.Round(time.Millisecond), err)
						if took > 20*time.Second {
							t.Errorf("recall took %v", took)
						}
						want := obj.data[rg[0] : rg[0]+rg[1]]
						switch {
						case err == nil && !bytes.Equal(p, want):
							t.Fatalf("recall from %s returned wrong bytes", from)
						case err != nil && !errors.Is(err, recall.ErrNoCopy):
							t.Fatalf("recall error %v: want ErrNoCopy", err)
						case err != nil && !alone:
							t.Fatalf("recall failed with a good second copy: %v", err)
						case err == nil && alone && f.Fault == faulttest.FlipResponse:
							t.Fatalf("recall of flipped bytes succeeded")
						}
						if err != nil && !bytes.Equal(p, make([]byte, len(p))) {
							t.Fatal("a failed recall wrote into the buffer")
						}
					}
				})
			}
		}
	})
}
