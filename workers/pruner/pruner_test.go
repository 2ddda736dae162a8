package pruner

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
)

// history builds a real catalog from events at chosen times.
type history struct {
	t    *testing.T
	cat  *catalog.Catalog
	seq  uint64
	envs []events.Envelope
}

func (h *history) at(when time.Time, ev events.Event) {
	h.seq++
	env, err := events.New(events.NewID(ev.Kind(), fmt.Sprint(h.seq)), events.Source("h", "test"), when, ev)
	if err != nil {
		h.t.Fatal(err)
	}
	env.Seq = h.seq
	h.envs = append(h.envs, env)
}

func (h *history) packed(when time.Time, file, obj int) {
	st := eventstest.Stat(1000)
	h.at(when, &events.ObjectPacked{FileID: eventstest.FileID(file), Path: fmt.Sprintf("/hot/f%d", file), ObjectID: eventstest.ObjectID(obj),
		Stat: st, Size: 1000, PackedSize: 100, PackedSum: eventstest.ObjectID(1000 + obj), FrameSize: 4 << 20, Frames: 1, Staging: "/s/x.zst"})
	h.at(when, &events.ObjectStored{ObjectID: eventstest.ObjectID(obj), Tier: "hdd", TierKind: events.TierDirectory,
		Location: "/cold/x", Size: 1000, PackedSize: 100, PackedSum: eventstest.ObjectID(1000 + obj)})
}

func (h *history) deleted(when time.Time, file int) {
	h.at(when, &events.FileDeleted{FileID: eventstest.FileID(file), Path: fmt.Sprintf("/hot/f%d", file)})
}

// TestPlan: which objects each policy lets go, on a real catalog.
func TestPlan(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	cat, err := catalog.Open(t.TempDir(), catalog.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	h := &history{t: t, cat: cat}
	long := now.Add(-90 * 24 * time.Hour)
	// File 1: three versions; v2 superseded 10 minutes ago.
	h.packed(long, 1, 11)
	h.packed(long.Add(24*time.Hour), 1, 12)
	h.packed(now.Add(-10*time.Minute), 1, 13)
	// Files 2 and 3 share object 20; file 2 was deleted long ago, file 3 lives.
	h.packed(long, 2, 20)
	h.packed(long, 3, 20)
	h.deleted(long.Add(time.Hour), 2)
	// File 4 deleted long ago, file 5 deleted 10 minutes ago.
	h.packed(long, 4, 40)
	h.deleted(long.Add(time.Hour), 4)
	h.packed(long, 5, 50)
	h.deleted(now.Add(-10*time.Minute), 5)
	// File 6: v1 (object 60) superseded long ago by v2, then modified back
	// to the content of v1 (v3 = object 60 again): object 60 is current.
	h.packed(long, 6, 60)
	h.packed(long.Add(time.Hour), 6, 61)
	h.packed(long.Add(2*time.Hour), 6, 60)
	// File 7: a live file whose current object is also a superseded version
	// of file 8 (object 70).
	h.packed(long, 8, 70)
	h.packed(long.Add(time.Hour), 8, 80)
	h.packed(long.Add(2*time.Hour), 7, 70)
	if err := cat.Apply(h.envs); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		keepDeleted  time.Duration
		keepVersions int
		want         []int
	}{
		{time.Hour, 1, []int{11, 40, 61}},
		{5 * time.Minute, 1, []int{11, 12, 40, 50, 61}},
		{5 * time.Minute, 2, []int{11, 40, 50}}, // v2 of file 1 and of file 6 are among the newest two
		{5 * time.Minute, 3, []int{40, 50}},
		{365 * 24 * time.Hour, 1, nil},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.keepDeleted, tc.keepVersions), func(t *testing.T) {
			pol := Policy{KeepDeleted: tc.keepDeleted, KeepVersions: tc.keepVersions, Now: now}
			plan, err := Plan(cat, pol)
			if err != nil {
				t.Fatal(err)
			}
			var got, want []string
			for _, c := range plan {
				got = append(got, c.ObjectID)
				if !slices.Equal(c.Tiers, []string{"hdd"}) || c.Reason == "" || c.PackedSize != 100 {
					t.Errorf("candidate %+v", c)
				}
				if ok, err := Unreferenced(cat, pol, c.ObjectID); !ok || err != nil {
					t.Errorf("%s planned but not unreferenced: %v", c.ObjectID, err)
				}
			}
			for _, n := range tc.want {
				want = append(want, eventstest.ObjectID(n))
			}
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("plan %v, want %v", got, want)
			}
			// Never a live file's current object, nor a shared one in use.
			for _, n := range []int{13, 20, 60, 70} {
				if ok, _ := Unreferenced(cat, pol, eventstest.ObjectID(n)); ok {
					t.Errorf("object %d is in use but unreferenced", n)
				}
			}
		})
	}
	if _, err := Plan(cat, Policy{KeepVersions: 0, Now: now}); err == nil {
		t.Fatal("KeepVersions 0 accepted")
	}
}

// TestGuard: Locks of one id exclude each other; locks of different ids
// do not; the table is empty when nobody holds a lock.
func TestGuard(t *testing.T) {
	g := NewGuard()
	var inside atomic.Int32
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			unlock := g.Lock("a")
			defer unlock()
			if n := inside.Add(1); n != 1 {
				t.Errorf("%d holders of one lock", n)
			}
			runtime.Gosched()
			inside.Add(-1)
			if i%10 == 0 {
				g.Lock(fmt.Sprint("b", i))() // another object is not held up by "a"
			}
		})
	}
	wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.locks) != 0 {
		t.Fatalf("locks left: %d", len(g.locks))
	}
}

// noDelete is a tier that cannot delete one object (tape).
type noDelete struct{ tier.Target }

func (noDelete) Delete(context.Context, string) error {
	return fmt.Errorf("tape tier t: delete: %w", tier.ErrNotSupported)
}

// TestApplyKeepsWhatATierCannotDelete: a copy on a tier that cannot delete
// one object is kept and reported as kept: no object.deleted (it is still
// there), and not an error of the run.
func TestApplyKeepsWhatATierCannotDelete(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	cat, err := catalog.Open(t.TempDir(), catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	h := &history{t: t, cat: cat}
	long := now.Add(-90 * 24 * time.Hour)
	h.packed(long, 4, 40)
	h.deleted(long.Add(time.Hour), 4)
	if err := cat.Apply(h.envs); err != nil {
		t.Fatal(err)
	}
	pol := Policy{KeepDeleted: time.Hour, KeepVersions: 1, Now: now}
	plan, err := Plan(cat, pol)
	if err != nil || len(plan) != 1 {
		t.Fatalf("plan %+v, %v", plan, err)
	}
	hdd, err := dir.Open(dir.Config{Name: "hdd", Root: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var emitted []events.Event
	out, err := Apply(context.Background(), ApplyConfig{
		Catalog: cat, Policy: pol, Targets: map[string]tier.Target{"hdd": noDelete{hdd}}, Guard: NewGuard(),
		Sync: func(context.Context, string) error { return nil },
		Emit: func(_ context.Context, ev events.Event, _ ...string) error {
			emitted = append(emitted, ev)
			return nil
		},
		Logger: slog.New(slog.DiscardHandler),
	}, plan)
	if err != nil || len(out) != 1 {
		t.Fatalf("apply: %+v, %v", out, err)
	}
	if c := out[0]; !slices.Equal(c.Kept, []string{"hdd"}) || len(c.Deleted) != 0 || len(c.Errors) != 0 || len(emitted) != 0 {
		t.Fatalf("candidate %+v, events %v: want the copy kept, nothing deleted, no error", c, emitted)
	}
}
