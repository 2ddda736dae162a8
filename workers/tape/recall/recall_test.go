package recall

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	"github.com/zeebo/blake3"
)

func hexsum(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }

func TestPlan(t *testing.T) {
	p := func(v string, f, b, o int64) events.TapePosition {
		return events.TapePosition{Volume: v, TapeFile: f, Block: b, Offset: o}
	}
	reqs := []Request{
		{ObjectID: "c", Pos: p("B", 1, 5, 0)}, {ObjectID: "a", Pos: p("A", 2, 50, 3)},
		{ObjectID: "b", Pos: p("A", 1, 9, 7)}, {ObjectID: "a", Pos: p("A", 2, 50, 3)},
		{ObjectID: "d", Pos: p("A", 2, 50, 1)},
	}
	got := Plan(reqs)
	if len(got) != 2 || got[0].Volume != "B" || got[1].Volume != "A" {
		t.Fatalf("plan %+v", got)
	}
	var ids string
	for _, r := range got[1].Requests {
		ids += r.ObjectID
	}
	if ids != "bda" {
		t.Fatalf("order on A = %s, want bda", ids)
	}
}

func TestCollect(t *testing.T) {
	in := make(chan Request, 3)
	in <- Request{ObjectID: "1"}
	in <- Request{ObjectID: "2"}
	close(in)
	got, err := Collect(context.Background(), in, time.Hour)
	if err != nil || len(got) != 2 {
		t.Fatalf("collect = %v, %v", got, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Collect(ctx, make(chan Request), time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("collect canceled = %v", err)
	}
}

type lib struct{ d *tape.Emulator }

func (l lib) Mount(context.Context, string) (tape.Drive, error) { return l.d, nil }

// 1,000 objects recalled in random order: ordering by position takes at
// least 5× less (virtual) time than serving them as they came.
func TestOrderedRecallIsFaster(t *testing.T) {
	m := tape.LTO9()
	m.Buffer = 8 << 20
	dir := filepath.Join(t.TempDir(), "V1")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 160 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const bs = bundle.MinBlockSize
	if err := bundle.WriteLabel(d, bundle.Label{Volume: "V1", Pool: "p", BlockSize: bs}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	var reqs []Request
	data := map[string][]byte{}
	for f := int64(1); f <= 10; f++ {
		start, _ := d.Tell()
		w, err := bundle.NewWriter(bs, bundle.Header{Bundle: "b", Part: 1}, d.WriteBlock)
		if err != nil {
			t.Fatal(err)
		}
		for range 100 {
			b := make([]byte, 100_000+r.IntN(50_000))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			id := hexsum(b)
			e, err := w.Add(id, []byte("{}"), int64(len(b)), id, bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			data[id] = b
			reqs = append(reqs, Request{ObjectID: id, PackedSize: int64(len(b)), PackedSum: id,
				Pos: bundle.Position("V1", f, start, bs, e.DataOffset)})
		}
		if err := w.Close(nil); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteFilemarks(1, true); err != nil {
			t.Fatal(err)
		}
	}
	r.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	run := func(b Batch) time.Duration {
		t0 := d.Now()
		n := 0
		err := Run(context.Background(), lib{d}, b, func(r Request, got []byte, err error) error {
			if err != nil || !bytes.Equal(got, data[r.ObjectID]) {
				t.Fatalf("object %s: %v", r.ObjectID[:8], err)
			}
			n++
			return nil
		})
		if err != nil || n != len(b.Requests) {
			t.Fatalf("run: %v (%d objects)", err, n)
		}
		return d.Now() - t0
	}
	asCame := run(Batch{Volume: "V1", Requests: reqs})
	plan := Plan(reqs)
	if len(plan) != 1 || len(plan[0].Requests) != 1000 {
		t.Fatalf("plan: %d batches", len(plan))
	}
	ordered := run(plan[0])
	t.Logf("1000 objects: request order %v, tape order %v (%.1f×)", asCame, ordered, float64(asCame)/float64(ordered))
	if asCame < 5*ordered {
		t.Fatalf("ordered recall %v is not 5× faster than %v", ordered, asCame)
	}
}
