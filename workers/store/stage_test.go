package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// lostReply is a directory target whose first Put stores the copy but
// reports a failure, as an upload whose reply was lost: the store stage's
// message is delivered again.
type lostReply struct {
	*dir.Target
	puts  atomic.Int32
	first atomic.Pointer[os.FileInfo] // the copy the first Put made
}

func (l *lostReply) Put(ctx context.Context, o tier.Object) (string, error) {
	loc, err := l.Target.Put(ctx, o)
	if l.puts.Add(1) == 1 && err == nil {
		fi, serr := os.Stat(loc)
		if serr != nil {
			return "", serr
		}
		l.first.Store(&fi)
		return "", errors.New("connection reset after the upload")
	}
	return loc, err
}

// checkCopy asserts that tgt holds exactly s's bytes and manifest.
func checkCopy(t *testing.T, tgt tier.Target, s staged) {
	t.Helper()
	if got := readBack(t, tgt, s.ev.ObjectID, s.ev.PackedSize); !bytes.Equal(got, s.data) {
		t.Fatalf("%s on %s: %d bytes read back differ from the %d staged", s.ev.ObjectID[:8], tgt.Name(), len(got), len(s.data))
	}
	m, err := tgt.Manifest(testCtx(t), s.ev.ObjectID)
	if err != nil || !bytes.Equal(m, s.manifest) {
		t.Fatalf("manifest of %s on %s = %q, %v; want %q", s.ev.ObjectID[:8], tgt.Name(), m, err, s.manifest)
	}
	if info, err := tgt.Verify(testCtx(t), s.ev.ObjectID); err != nil || info.PackedSum != s.ev.PackedSum {
		t.Fatalf("verify %s on %s: %+v, %v", s.ev.ObjectID[:8], tgt.Name(), info, err)
	}
}

// checkStoredEvent asserts that exactly one object.stored of s on tgt is on
// the stream and that it describes the copy, and returns it.
func (r *rig) checkStoredEvent(tgt tier.Target, s staged) *events.ObjectStored {
	r.t.Helper()
	got := r.storedOn(s.ev.ObjectID, tgt.Name())
	if len(got) != 1 {
		r.t.Fatalf("%d object.stored of %s on %s, want exactly 1", len(got), s.ev.ObjectID[:8], tgt.Name())
	}
	e := got[0]
	if err := e.Validate(); err != nil {
		r.t.Fatal(err)
	}
	if e.TierKind != events.TierDirectory || e.Size != s.ev.Size || e.PackedSize != s.ev.PackedSize ||
		e.PackedSum != s.ev.PackedSum || e.Tape != nil || e.Location == "" {
		r.t.Fatalf("object.stored %+v does not describe the copy of %+v", e, s.ev)
	}
	return e
}

func (r *rig) wantNoDeadLetters() {
	r.t.Helper()
	if dl := r.deadLetters(); len(dl) != 0 {
		r.t.Fatalf("dead letters: %+v", dl)
	}
}

// TestStoreOnceWhenDeliveredTwice: a packed object is copied, read back
// and verified, and object.stored is published exactly once, although its
// message is delivered twice (the first upload's reply was lost) and then
// once more from the start of the stream (the durable was recreated); the
// copy made by the first delivery is never written again.
func TestStoreOnceWhenDeliveredTwice(t *testing.T) {
	r := newRig(t)
	tgt := &lostReply{Target: openDir(t, "hdd")}
	s := r.stage(1, 700<<10, 1, "/hot/a.dat")
	r.publish(s)
	stop := r.run(r.storeStage(tgt, nil))
	checkFor(t, 30*time.Second, func() error {
		if n := len(r.storedOn(s.ev.ObjectID, "hdd")); n == 0 {
			return errors.New("no object.stored yet")
		}
		return nil
	})
	r.waitDrained(tier.StageName("hdd"))
	if n := tgt.puts.Load(); n != 2 {
		t.Fatalf("%d Puts, want 2 (the message delivered twice)", n)
	}
	e := r.checkStoredEvent(tgt, s)
	if want := filepath.Join(tgt.Root(), tier.ObjectKey(s.ev.ObjectID)); e.Location != want {
		t.Fatalf("location %q, want %q", e.Location, want)
	}
	checkCopy(t, tgt, s)
	unchanged := func() {
		t.Helper()
		fi, err := os.Stat(filepath.Join(tgt.Root(), tier.ObjectKey(s.ev.ObjectID)))
		if err != nil {
			t.Fatal(err)
		}
		if first := *tgt.first.Load(); !os.SameFile(first, fi) || !first.ModTime().Equal(fi.ModTime()) {
			t.Fatal("the copy was written again on redelivery")
		}
	}
	unchanged()

	// Delivered once more, after it was acknowledged.
	stop()
	r.deleteConsumer(tier.StageName("hdd"))
	r.run(r.storeStage(tgt, nil))
	checkFor(t, 30*time.Second, func() error {
		if n := tgt.puts.Load(); n != 3 {
			return fmt.Errorf("%d Puts, want 3", n)
		}
		return nil
	})
	r.waitDrained(tier.StageName("hdd"))
	r.checkStoredEvent(tgt, s)
	unchanged()
	r.wantNoDeadLetters()
}

// TestStoreRedeliveryWithoutStaging: a message delivered again after the
// staged object was removed publishes object.stored only when the target
// holds a good copy of exactly that packing; otherwise it is dead-lettered
// with a reason that says so, and nothing is published.
func TestStoreRedeliveryWithoutStaging(t *testing.T) {
	r := newRig(t)
	tgt := openDir(t, "hdd")
	ctx := testCtx(t)

	good := r.stage(10, 300<<10, 10, "/hot/good.dat")
	if _, err := tgt.Put(ctx, good.object()); err != nil {
		t.Fatal(err)
	}
	missing := r.stage(11, 300<<10, 11, "/hot/missing.dat")
	damaged := r.stage(12, 300<<10, 12, "/hot/damaged.dat")
	if _, err := tgt.Put(ctx, damaged.object()); err != nil {
		t.Fatal(err)
	}
	zst := filepath.Join(tgt.Root(), tier.ObjectKey(damaged.ev.ObjectID))
	b, err := os.ReadFile(zst)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(zst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	other := r.stage(13, 300<<10, 13, "/hot/other.dat")
	if _, err := tgt.Put(ctx, tiertest.ObjectOf(other.ev.ObjectID, tiertest.RandomBytes(99, 200<<10))); err != nil {
		t.Fatal(err)
	}
	for _, s := range []staged{good, missing, damaged, other} {
		r.unstageFiles(s)
		r.publish(s)
	}
	r.run(r.storeStage(tgt, nil))
	r.waitDrained(tier.StageName("hdd"))

	r.checkStoredEvent(tgt, good)
	checkCopy(t, tgt, good)
	want := map[string][]string{
		missing.ev.ObjectID: {"staged object is gone and the target has no good copy", "not found"},
		damaged.ev.ObjectID: {"staged object is gone and the target has no good copy", "corrupt"},
		other.ev.ObjectID:   {"staged object is gone and the target holds another packing"},
	}
	dls := r.deadLetters()
	if len(dls) != len(want) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dls), len(want), dls)
	}
	for _, dl := range dls {
		p, ok := dl.ev.(*events.ObjectPacked)
		if !ok || dl.stage != tier.StageName("hdd") || dl.subject != events.DeadLetterSubject(host, tier.StageName("hdd")) || dl.deliveries != "1" {
			t.Fatalf("dead letter %+v; want the object.packed, at its first delivery", dl)
		}
		for _, w := range want[p.ObjectID] {
			if !strings.Contains(dl.reason, w) {
				t.Errorf("dead letter of %s: reason %q does not say %q", p.ObjectID[:8], dl.reason, w)
			}
		}
		delete(want, p.ObjectID)
		if n := len(r.storedOn(p.ObjectID, "hdd")); n != 0 {
			t.Errorf("%d object.stored of dead-lettered %s", n, p.ObjectID[:8])
		}
	}
	if len(want) != 0 {
		t.Fatalf("not dead-lettered: %v", want)
	}
	// The bad copies were left as they were: only a Put from good bytes
	// may replace them.
	if _, err := tgt.Verify(ctx, damaged.ev.ObjectID); !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("verify of the damaged copy after the stage: %v, want ErrCorrupt", err)
	}
}

// countingVerify counts the target's Verify calls.
type countingVerify struct {
	*dir.Target
	n atomic.Int32
}

func (c *countingVerify) Verify(ctx context.Context, id string) (tier.Info, error) {
	c.n.Add(1)
	return c.Target.Verify(ctx, id)
}

// TestStoreRedeliveryTargetUnreachable: when the staged object is gone and
// the target cannot be reached, nothing is known about the copy: the
// message is retried, not dead-lettered, and once the target is back with
// its copy, object.stored is published.
func TestStoreRedeliveryTargetUnreachable(t *testing.T) {
	r := newRig(t)
	tgt := &countingVerify{Target: openDir(t, "hdd")}
	s := r.stage(20, 100<<10, 20, "/hot/a.dat")
	if _, err := tgt.Target.Put(testCtx(t), s.object()); err != nil {
		t.Fatal(err)
	}
	r.unstageFiles(s)
	// The disk holding the tier (and the copy) is not mounted.
	objects := filepath.Join(tgt.Root(), "objects")
	if err := os.Rename(objects, objects+".unmounted"); err != nil {
		t.Fatal(err)
	}
	r.publish(s)
	r.run(r.storeStage(tgt, nil))
	checkFor(t, 30*time.Second, func() error {
		if n := tgt.n.Load(); n < 3 {
			return fmt.Errorf("%d attempts", n)
		}
		return nil
	})
	r.wantNoDeadLetters()
	if n := len(r.stored()); n != 0 {
		t.Fatalf("%d object.stored while the target is unreachable", n)
	}
	// Mounted again, with the copy.
	if err := os.Rename(objects+".unmounted", objects); err != nil {
		t.Fatal(err)
	}
	r.waitDrained(tier.StageName("hdd"))
	r.checkStoredEvent(tgt, s)
	r.wantNoDeadLetters()
}

// slowVerify is a directory target whose Verify takes until its context
// ends (a slow remote), then answers as the target does.
type slowVerify struct {
	*dir.Target
	entered chan struct{}
}

func (s *slowVerify) Verify(ctx context.Context, id string) (tier.Info, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return s.Target.Verify(ctx, id)
}

// TestStoreRedeliveryInterrupted: a check of the target cut short by
// shutdown (the handler's context cancelled after the drain timeout) says
// nothing about the copy: the message is left for the next run, never
// dead-lettered, and the next run publishes object.stored.
func TestStoreRedeliveryInterrupted(t *testing.T) {
	r := newRig(t)
	base := openDir(t, "hdd")
	s := r.stage(30, 100<<10, 30, "/hot/a.dat")
	if _, err := base.Put(testCtx(t), s.object()); err != nil {
		t.Fatal(err)
	}
	r.unstageFiles(s)
	r.publish(s)
	slow := &slowVerify{Target: base, entered: make(chan struct{}, 1)}
	st := r.storeStage(slow, nil)
	st.DrainTimeout = 100 * time.Millisecond
	stop := r.run(st)
	select {
	case <-slow.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the stage never checked the target")
	}
	stop()
	r.wantNoDeadLetters()
	if n := len(r.stored()); n != 0 {
		t.Fatalf("%d object.stored after an interrupted check", n)
	}
	r.run(r.storeStage(base, nil))
	r.waitDrained(tier.StageName("hdd"))
	r.checkStoredEvent(base, s)
	r.wantNoDeadLetters()
}

// TestStoreRefusesBadStagedBytes: staged bytes that do not match their
// packed size and sum are never stored: the message is dead-lettered at
// once, the target holds nothing and nothing is published.
func TestStoreRefusesBadStagedBytes(t *testing.T) {
	r := newRig(t)
	tgt := openDir(t, "hdd")
	flipped := r.stage(40, 300<<10, 40, "/hot/flipped.dat")
	b := bytes.Clone(flipped.data)
	b[1234] ^= 1
	short := r.stage(41, 300<<10, 41, "/hot/short.dat")
	for _, c := range []struct {
		s    staged
		data []byte
	}{{flipped, b}, {short, short.data[:len(short.data)-1]}} {
		if err := os.WriteFile(c.s.ev.Staging, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		r.publish(c.s)
	}
	r.run(r.storeStage(tgt, nil))
	r.waitDrained(tier.StageName("hdd"))
	dls := r.deadLetters()
	if len(dls) != 2 {
		t.Fatalf("%d dead letters, want 2: %+v", len(dls), dls)
	}
	for _, dl := range dls {
		if !strings.Contains(dl.reason, tier.ErrCorrupt.Error()) || dl.deliveries != "1" {
			t.Errorf("dead letter after %s deliveries, reason %q; want at the first, saying the object is corrupt", dl.deliveries, dl.reason)
		}
	}
	for _, s := range []staged{flipped, short} {
		if _, err := tgt.Stat(testCtx(t), s.ev.ObjectID); !errors.Is(err, tier.ErrNotFound) {
			t.Errorf("stat of %s: %v, want ErrNotFound", s.ev.ObjectID[:8], err)
		}
	}
	if n := len(r.stored()); n != 0 {
		t.Fatalf("%d object.stored of bad staged bytes", n)
	}
	if err := tgt.List(testCtx(t), func(i tier.Info) error { return fmt.Errorf("listed %s", i.ID) }); err != nil {
		t.Fatal(err)
	}
}

// TestStoreFilter: a tier whose filter does not want a file acknowledges
// its object without a copy; the files it wants are stored.
func TestStoreFilter(t *testing.T) {
	r := newRig(t)
	tgt := openDir(t, "logs")
	f, err := tier.NewFilter([]string{"*.log"}, nil, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	notLog := r.stage(50, 1000, 50, "/hot/a.dat")
	small := r.stage(51, 1000, 51, "/hot/sub/b.log")
	big := r.stage(52, 400<<10, 52, "/hot/c.log") // 1.2 MiB unpacked: above max_size
	for _, s := range []staged{notLog, small, big} {
		r.publish(s)
	}
	r.run(r.storeStage(tgt, f))
	r.waitDrained(tier.StageName("logs"))
	r.checkStoredEvent(tgt, small)
	checkCopy(t, tgt, small)
	for _, s := range []staged{notLog, big} {
		if _, err := tgt.Stat(testCtx(t), s.ev.ObjectID); !errors.Is(err, tier.ErrNotFound) {
			t.Errorf("%s: stat %v, want ErrNotFound (not wanted by the filter)", s.ev.Path, err)
		}
		if n := len(r.storedOn(s.ev.ObjectID, "logs")); n != 0 {
			t.Errorf("%s: %d object.stored, want none", s.ev.Path, n)
		}
		if _, err := os.Stat(s.ev.Staging); err != nil {
			t.Errorf("%s: staged object: %v; the store stage never removes it", s.ev.Path, err)
		}
	}
	r.wantNoDeadLetters()
}

// TestStoreRedeliveryLocationS3: when the staged object is gone and the
// S3 target already holds a good copy, object.stored records the copy
// where it is — s3://bucket/prefix/objects/… — as a first store does
// (regression: it recorded "<tier>:objects/…", without bucket or prefix,
// and a restore from the export's location could not find the object).
func TestStoreRedeliveryLocationS3(t *testing.T) {
	srv := tiertest.StartS3(t)
	r := newRig(t)
	tgt, err := s3.Open(s3.Config{Name: "s3", Endpoint: srv.Endpoint, Bucket: srv.NewBucket(t), Prefix: "pre/fix",
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, NoTLS: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	first := r.stage(20, 300<<10, 20, "/hot/first.dat")
	again := r.stage(21, 200<<10, 21, "/hot/again.dat")
	if _, err := tgt.Put(ctx, again.object()); err != nil {
		t.Fatal(err)
	}
	r.unstageFiles(again)
	r.publish(first)
	r.publish(again)
	r.run(r.storeStage(tgt, nil))
	r.waitDrained(tier.StageName("s3"))
	r.wantNoDeadLetters()
	for _, s := range []staged{first, again} {
		got := r.storedOn(s.ev.ObjectID, "s3")
		if len(got) != 1 {
			t.Fatalf("%d object.stored of %s", len(got), s.ev.ObjectID[:8])
		}
		want := "s3://" + tgt.Bucket() + "/pre/fix/" + tier.ObjectKey(s.ev.ObjectID)
		if got[0].Location != want || tgt.Location(s.ev.ObjectID) != want {
			t.Fatalf("%s: location %q (target says %q), want %q", s.ev.ObjectID[:8], got[0].Location, tgt.Location(s.ev.ObjectID), want)
		}
	}
}
