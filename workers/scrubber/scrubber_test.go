package scrubber

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
)

func obj(t *testing.T, i int) (tier.Object, []byte) {
	t.Helper()
	b := bytes.Repeat([]byte(fmt.Sprintf("object %d ", i)), 64<<10/10)
	sum := blake3.Sum256(b)
	id := blake3.Sum256([]byte(fmt.Sprint("id", i)))
	return tier.Object{ID: fmt.Sprintf("%x", id), PackedSize: int64(len(b)), PackedSum: fmt.Sprintf("%x", sum),
		Manifest: []byte(`{}`), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}, b
}

// TestRun: two directory tiers holding the same objects; one copy is
// damaged and one is missing on tier a. A scrub of tier a reports both,
// repairs them from tier b, and publishes the events; a sample checks
// part of the copies; the rate bounds the speed.
func TestRun(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	targets := map[string]tier.Target{}
	roots := map[string]string{}
	for _, name := range []string{"a", "b"} {
		roots[name] = t.TempDir()
		tg, err := dir.Open(dir.Config{Name: name, Root: roots[name]}, log)
		if err != nil {
			t.Fatal(err)
		}
		targets[name] = tg
	}
	var copies []Copy
	var objs []tier.Object
	for i := range 20 {
		o, _ := obj(t, i)
		objs = append(objs, o)
		for name, tg := range targets {
			if _, err := tg.Put(ctx, o); err != nil {
				t.Fatal(err)
			}
			copies = append(copies, Copy{ObjectID: o.ID, Tier: name, Size: o.PackedSize, PackedSize: o.PackedSize, PackedSum: o.PackedSum})
		}
	}
	// Damage object 3 and remove object 7 on tier a.
	aRoot := roots["a"]
	zst := filepath.Join(aRoot, tier.ObjectKey(objs[3].ID))
	if err := os.WriteFile(zst, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(aRoot, tier.ObjectKey(objs[7].ID))); err != nil {
		t.Fatal(err)
	}
	var evs []events.Event
	cfg := Config{
		Targets: targets,
		Copies: func(fn func(Copy) error) error {
			for _, c := range copies {
				if err := fn(c); err != nil {
					return err
				}
			}
			return nil
		},
		Repair: func(ctx context.Context, id string, to tier.Target) (string, string, error) {
			for _, o := range objs {
				if o.ID == id {
					loc, err := to.Put(ctx, o)
					return "b", loc, err
				}
			}
			return "", "", fmt.Errorf("no object %s", id)
		},
		Emit:   func(_ context.Context, ev events.Event, _ ...string) error { evs = append(evs, ev); return nil },
		Tier:   "a",
		RunID:  "r1",
		Logger: log,
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Total != 20 || res.Checked != 20 || res.Verified != 18 || res.Corrupt != 2 || res.Missing != 1 || res.Repaired != 2 {
		t.Fatalf("result %+v", res)
	}
	kinds := map[events.Kind]int{}
	for _, ev := range evs {
		kinds[ev.Kind()]++
		if err := ev.Validate(); err != nil {
			t.Fatalf("invalid event %T: %v", ev, err)
		}
	}
	if kinds[events.KindObjectVerified] != 18 || kinds[events.KindObjectCorrupt] != 2 || kinds[events.KindObjectStored] != 2 {
		t.Fatalf("events: %v", kinds)
	}
	for _, i := range []int{3, 7} {
		if _, err := targets["a"].Verify(ctx, objs[i].ID); err != nil {
			t.Fatalf("object %d after repair: %v", i, err)
		}
	}

	// Half of the copies of both tiers, at 2.5 MiB/s: the whole run (40
	// copies of 64 KiB, 2.5 MiB) takes about 0.5 s.
	cfg.Tier, cfg.Sample, cfg.Rate, cfg.RunID = "", 0.5, 5<<20/2, "r2"
	res, err = Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Total == 0 || res.Total == 40 || res.Verified != res.Total {
		t.Fatalf("sampled run: %+v", res)
	}
	cfg.Sample, cfg.RunID = 1, "r3"
	start := time.Now()
	if res, err = Run(ctx, cfg); err != nil || res.Verified != 40 {
		t.Fatalf("paced run: %+v %v", res, err)
	}
	if el := time.Since(start); el < 800*time.Millisecond {
		t.Fatalf("40 copies of 64 KiB at 2.5 MiB/s took %s: the rate is not applied", el)
	}
	cfg.Tier = "nope"
	if _, err := Run(ctx, cfg); err == nil {
		t.Fatal("unknown tier accepted")
	}
}
