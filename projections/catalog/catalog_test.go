package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
)

func open(t testing.TB, dir string) *Catalog {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stream builds envelopes with consecutive sequences.
type stream struct {
	t   *testing.T
	c   *Catalog
	seq uint64
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func (s *stream) env(ev events.Event) events.Envelope {
	s.t.Helper()
	s.seq++
	env, err := events.New(events.NewID(ev.Kind(), strconv.FormatUint(s.seq, 10)), "/strata/test/x", t0.Add(time.Duration(s.seq)*time.Second), ev)
	if err != nil {
		s.t.Fatal(err)
	}
	env.Seq = s.seq
	return env
}

func (s *stream) apply(evs ...events.Event) {
	s.t.Helper()
	envs := make([]events.Envelope, len(evs))
	for i, ev := range evs {
		envs[i] = s.env(ev)
	}
	if err := s.c.Apply(envs); err != nil {
		s.t.Fatal(err)
	}
}

func (s *stream) file(id string) File {
	s.t.Helper()
	f, err := s.c.File(id)
	if err != nil {
		s.t.Fatal(err)
	}
	return f
}

const (
	fid  = "0123456789abcdef0123456789abcdef"
	fid2 = "fedcba9876543210fedcba9876543210"
)

var (
	obj1 = strings.Repeat("a1", 32)
	obj2 = strings.Repeat("b2", 32)
	sum  = strings.Repeat("cd", 32)
)

func stat(size int64) events.FileStat {
	return events.FileStat{Size: size, Mode: 0o100640, UID: 7, GID: 8, MtimeNS: 1700000000123456789, CtimeNS: 1700000000123456789, Inode: 99, Generation: 1}
}

func packed(id, path, obj string, size int64) *events.ObjectPacked {
	return &events.ObjectPacked{FileID: id, Path: path, ObjectID: obj, Stat: stat(size), Size: size,
		PackedSize: size/2 + 1, PackedSum: sum, FrameSize: 4 << 20, Frames: 1, Staging: "/stage/" + obj}
}

func stored(obj, tier string) *events.ObjectStored {
	e := &events.ObjectStored{ObjectID: obj, Tier: tier, TierKind: events.TierDirectory, Location: "/cold/" + obj + ".zst",
		Size: 100, PackedSize: 51, PackedSum: sum}
	if tier == "tape1" {
		e.TierKind, e.Location = events.TierTape, "VOL001/3"
		e.Tape = &events.TapePosition{Volume: "VOL001", TapeFile: 3, Block: 1234, Offset: 512}
	}
	return e
}

func TestTransitions(t *testing.T) {
	s := &stream{t: t, c: open(t, "")}
	wantState := func(id string, want State) File {
		t.Helper()
		f := s.file(id)
		if f.State != want {
			t.Fatalf("state %s, want %s", f.State, want)
		}
		if f.Seq != s.seq || !f.Updated.Equal(t0.Add(time.Duration(s.seq)*time.Second)) {
			t.Fatalf("record seq %d time %v, want seq %d", f.Seq, f.Updated, s.seq)
		}
		return f
	}
	byPath := func(p, want string) {
		t.Helper()
		f, err := s.c.FileByPath(p)
		if want == "" {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("FileByPath(%s) = %v, %v; want ErrNotFound", p, f.ID, err)
			}
			return
		}
		if err != nil || f.ID != want {
			t.Fatalf("FileByPath(%s) = %q, %v; want %s", p, f.ID, err, want)
		}
	}
	stubs := func(want ...string) {
		t.Helper()
		var got []string
		if err := s.c.Stubs(func(f File) error { got = append(got, f.ID); return nil }); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("stubs %v, want %v", got, want)
		}
	}

	// Unknown files: events that do not create records leave nothing.
	s.apply(&events.FileModified{FileID: fid, Path: "/d/a", ObjectID: obj1, Stat: stat(1)},
		&events.RecallCompleted{FileID: fid, Path: "/d/a", ObjectID: obj1, SourceTier: "disk"})
	if _, err := s.c.File(fid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("File of an unknown id: %v, want ErrNotFound", err)
	}

	s.apply(&events.FileSelected{FileID: fid, Path: "/d/a", Root: "/d", Stat: stat(100), Reason: events.ReasonPolicy})
	f := wantState(fid, StateArchiving)
	if f.Path != "/d/a" || f.Root != "/d" || f.Stat != stat(100) || f.Version != 0 || f.ObjectID != "" {
		t.Fatalf("after selected: %+v", f)
	}
	byPath("/d/a", fid)

	s.apply(packed(fid, "/d/a", obj1, 100))
	f = wantState(fid, StateArchiving)
	if f.Version != 1 || f.ObjectID != obj1 {
		t.Fatalf("after packed: version %d object %s", f.Version, f.ObjectID)
	}
	// The same object again is not a new version.
	s.apply(packed(fid, "/d/a", obj1, 100))
	if vs, err := s.c.Versions(fid); err != nil || len(vs) != 1 || vs[0].Number != 1 || vs[0].ObjectID != obj1 ||
		!vs[0].ArchivedAt.Equal(t0.Add(4*time.Second)) || vs[0].Stat != stat(100) || vs[0].PackedSize != 51 {
		t.Fatalf("versions %+v, %v", vs, err)
	}
	if o, err := s.c.Object(obj1); err != nil || o.Size != 100 || o.Staging != "/stage/"+obj1 || o.Seq != 4 {
		t.Fatalf("object %+v, %v", o, err)
	}

	s.apply(stored(obj1, "disk"), stored(obj1, "tape1"))
	cps, err := s.c.Copies(obj1)
	if err != nil || len(cps) != 2 || cps[0].Tier != "disk" || cps[1].Tier != "tape1" ||
		cps[0].State != CopyGood || cps[1].Tape == nil || cps[1].Tape.Block != 1234 || cps[0].Tape != nil ||
		!cps[1].StoredAt.Equal(t0.Add(7*time.Second)) {
		t.Fatalf("copies %+v, %v", cps, err)
	}
	if f := s.file(fid); f.State != StateArchiving || f.Seq != 5 { // copies do not change the file
		t.Fatalf("file after stored: %+v", f)
	}

	s.apply(&events.FileReleased{FileID: fid, Path: "/d/a", ObjectID: obj1, Stat: stat(100), Copies: 2})
	wantState(fid, StateReleased)
	stubs(fid)
	// A selection published after the release it raced with (a new
	// archive while a redelivered release finished) leaves the stub as it is.
	s.apply(&events.FileSelected{FileID: fid, Path: "/d/a", Root: "/d", Stat: stat(101), Reason: events.ReasonManual})
	if f := wantState(fid, StateReleased); f.Stat != stat(100) {
		t.Fatalf("stale selection changed the stub's stat: %+v", f.Stat)
	}
	stubs(fid)

	s.apply(&events.RecallRequested{FileID: fid, Path: "/d/a", ObjectID: obj1, Length: 10, Reason: events.RecallAccess})
	if f := wantState(fid, StateReleased); f.Recalls != 1 {
		t.Fatalf("recalls %d", f.Recalls)
	}
	s.apply(&events.RecallFailed{FileID: fid, Path: "/d/a", ObjectID: obj1, Reason: "no good copy"})
	if f := wantState(fid, StateReleased); f.RecallFailures != 1 {
		t.Fatalf("recall failures %d", f.RecallFailures)
	}
	s.apply(&events.RecallCompleted{FileID: fid, Path: "/d/a", ObjectID: obj1, Bytes: 100, SourceTier: "disk"})
	wantState(fid, StateArchived)
	stubs()

	// Released again without a new object, then recalled.
	s.apply(&events.FileReleased{FileID: fid, Path: "/d/a", ObjectID: obj1, Stat: stat(100), Copies: 2})
	wantState(fid, StateReleased)
	s.apply(&events.RecallCompleted{FileID: fid, Path: "/d/a", ObjectID: obj1, Bytes: 100, SourceTier: "disk"})
	wantState(fid, StateArchived)

	s.apply(&events.FileModified{FileID: fid, Path: "/d/a", ObjectID: obj1, Stat: stat(200)})
	if f := wantState(fid, StateDirty); f.Stat.Size != 200 {
		t.Fatalf("size %d after modified", f.Stat.Size)
	}
	// A fill that completes after a write into the stub (the write went
	// through once its range was filled) does not make the file clean.
	s.apply(&events.RecallCompleted{FileID: fid, Path: "/d/a", ObjectID: obj1, Bytes: 100, SourceTier: "disk"})
	wantState(fid, StateDirty)
	// A skipped release keeps a dirty file dirty.
	s.apply(&events.FileReleaseSkipped{FileID: fid, Path: "/d/a", ObjectID: obj1, Reason: "changed"})
	wantState(fid, StateDirty)

	// Renamed and archived again: same file id, new path, version 2.
	s.apply(&events.FileSelected{FileID: fid, Path: "/d/b", Root: "/d", Stat: stat(200), Reason: events.ReasonPolicy})
	wantState(fid, StateArchiving)
	byPath("/d/a", "")
	byPath("/d/b", fid)
	s.apply(packed(fid, "/d/b", obj2, 200))
	if f := s.file(fid); f.Version != 2 || f.ObjectID != obj2 {
		t.Fatalf("after second pack: %+v", f)
	}
	vs, err := s.c.Versions(fid)
	if err != nil || len(vs) != 2 || vs[1].Number != 2 || vs[1].ObjectID != obj2 || vs[1].Path != "/d/b" || vs[0].Path != "/d/a" {
		t.Fatalf("versions %+v, %v", vs, err)
	}
	s.apply(&events.FileReleaseSkipped{FileID: fid, Path: "/d/b", ObjectID: obj2, Reason: "busy"})
	wantState(fid, StateResident)

	// A second file with the same content as version 1 shares obj1.
	s.apply(packed(fid2, "/d/c", obj1, 100))
	wantState(fid2, StateArchiving)
	files, err := s.c.FilesByObject(obj1)
	if err != nil || len(files) != 2 || files[0].ID != fid || files[1].ID != fid2 {
		t.Fatalf("FilesByObject %+v, %v", files, err)
	}
	if files, _ := s.c.FilesByObject(obj2); len(files) != 1 {
		t.Fatalf("FilesByObject(obj2) = %d files", len(files))
	}

	// Copies: corrupt stops counting, verified counts again, deleted goes.
	st0, _ := s.c.Stats()
	if st0.Copies != 2 || st0.CorruptCopies != 0 || st0.Objects != 2 || st0.Versions != 3 {
		t.Fatalf("stats %+v", st0)
	}
	s.apply(&events.ObjectCorrupt{ObjectID: obj1, Tier: "disk", Reason: "frame 0 mismatch"})
	cps, _ = s.c.Copies(obj1)
	if cps[0].State != CopyCorrupt || cps[0].Reason != "frame 0 mismatch" {
		t.Fatalf("copy after corrupt %+v", cps[0])
	}
	if st, _ := s.c.Stats(); st.Copies != 1 || st.CorruptCopies != 1 {
		t.Fatalf("stats after corrupt %+v", st)
	}
	s.apply(&events.ObjectVerified{ObjectID: obj1, Tier: "disk"})
	cps, _ = s.c.Copies(obj1)
	if cps[0].State != CopyGood || cps[0].Reason != "" || !cps[0].VerifiedAt.Equal(t0.Add(time.Duration(s.seq)*time.Second)) {
		t.Fatalf("copy after verified %+v", cps[0])
	}
	s.apply(&events.ObjectDeleted{ObjectID: obj1, Tier: "tape1", Reason: "retention"},
		&events.ObjectCorrupt{ObjectID: obj2, Tier: "disk", Reason: "no such copy"}) // unknown copy: ignored
	cps, _ = s.c.Copies(obj1)
	if len(cps) != 1 || cps[0].Tier != "disk" {
		t.Fatalf("copies after delete %+v", cps)
	}
	if cps, _ := s.c.Copies(obj2); len(cps) != 0 {
		t.Fatalf("corrupt of an unknown copy created %+v", cps)
	}

	// Deleted: path index gone, record and versions kept; a late event
	// does not bring it back.
	s.apply(&events.FileDeleted{FileID: fid, Path: "/d/b"})
	wantState(fid, StateDeleted)
	byPath("/d/b", "")
	if vs, _ := s.c.Versions(fid); len(vs) != 2 {
		t.Fatalf("versions after delete: %d", len(vs))
	}
	s.apply(&events.FileModified{FileID: fid, Path: "/d/b", ObjectID: obj2, Stat: stat(5)})
	s.apply(&events.FileMoved{FileID: fid, Path: "/d/b2", From: "/d/b"})
	wantState(fid, StateDeleted)
	byPath("/d/b", "")
	byPath("/d/b2", "")
	// Selected again (same id): alive at its path.
	s.apply(&events.FileSelected{FileID: fid, Path: "/d/b", Root: "/d", Stat: stat(5), Reason: events.ReasonManual})
	wantState(fid, StateArchiving)
	byPath("/d/b", fid)

	// A released file deleted leaves the stub index; moved first, it is
	// found at its new path only, and stays a stub.
	s.apply(&events.FileReleased{FileID: fid2, Path: "/d/c", ObjectID: obj1, Stat: stat(100), Copies: 1})
	stubs(fid2)
	s.apply(&events.FileMoved{FileID: fid2, Path: "/d/moved/c", From: "/d/c"})
	byPath("/d/c", "")
	byPath("/d/moved/c", fid2)
	wantState(fid2, StateReleased)
	stubs(fid2)
	s.apply(&events.FileMoved{FileID: fid2, Path: "/d/c", From: "/d/moved/c"})
	byPath("/d/moved/c", "")
	s.apply(&events.FileDeleted{FileID: fid2, Path: "/d/c"})
	stubs()

	// file.released of an unknown file creates a stub record.
	const fid3 = "33333333333333333333333333333333"
	s.apply(&events.FileReleased{FileID: fid3, Path: "/d/e", ObjectID: obj2, Stat: stat(9), Copies: 1})
	if f := wantState(fid3, StateReleased); f.ObjectID != obj2 || f.Version != 0 {
		t.Fatalf("stub of an unknown file: %+v", f)
	}
	stubs(fid3)

	// Stats agree with the records.
	checkStats(t, s.c)
}

func TestPins(t *testing.T) {
	s := &stream{t: t, c: open(t, "")}
	pinned := func(p string, want bool) {
		t.Helper()
		got, err := s.c.Pinned(p)
		if err != nil || got != want {
			t.Fatalf("Pinned(%s) = %v, %v; want %v", p, got, err, want)
		}
	}
	pinned("/d/x", false)
	s.apply(&events.FilePinned{Path: "/d/keep"}, &events.FilePinned{Path: "/d/keep"})
	pinned("/d/keep", true)
	pinned("/d/keep/a/b", true)
	pinned("/d/keeper", false)
	pinned("/d", false)
	pinned("/", false)
	s.apply(&events.FilePinned{Path: "/"})
	pinned("/anything", true)
	s.apply(&events.FileUnpinned{Path: "/"}, &events.FileUnpinned{Path: "/d/keep/a"}) // not pinned itself: no-op
	pinned("/anything", false)
	pinned("/d/keep/a", true)
	var all []string
	s.c.Pins(func(p string) error { all = append(all, p); return nil })
	if fmt.Sprint(all) != "[/d/keep]" {
		t.Fatalf("pins %v", all)
	}
	if st, _ := s.c.Stats(); st.Pins != 1 {
		t.Fatalf("pins count %d", st.Pins)
	}
}

func TestFilesUnderPrefix(t *testing.T) {
	s := &stream{t: t, c: open(t, "")}
	paths := []string{"/data", "/data/a", "/data/b/c", "/data.txt", "/data2/x", "/dat"}
	for i, p := range paths {
		id := fmt.Sprintf("%032x", i+1)
		s.apply(&events.FileSelected{FileID: id, Path: p, Root: "/", Stat: stat(1), Reason: events.ReasonPolicy})
	}
	list := func(prefix string) string {
		var got []string
		if err := s.c.Files(prefix, func(f File) error { got = append(got, f.Path); return nil }); err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, " ")
	}
	for prefix, want := range map[string]string{
		"/data":   "/data /data/a /data/b/c",
		"/data/":  "/data /data/a /data/b/c",
		"/data/b": "/data/b/c",
		"/":       "/dat /data /data.txt /data/a /data/b/c /data2/x",
		"/nope":   "",
	} {
		if got := list(prefix); got != want {
			t.Errorf("Files(%q) = %q, want %q", prefix, got, want)
		}
	}
	stop := errors.New("stop")
	if err := s.c.Files("/", func(File) error { return stop }); err != stop {
		t.Fatalf("error from fn: %v", err)
	}
}

func TestRedeliveryIsNoOp(t *testing.T) {
	envs := catalogtest.Generate(3000, 1, catalogtest.Options{Invalid: 0.02})
	a, b := open(t, ""), open(t, "")
	if err := a.Apply(envs); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(envs[:2000]); err != nil {
		t.Fatal(err)
	}
	// Redeliver everything applied so far, in odd slices, then the rest.
	for _, r := range [][2]int{{0, 2000}, {1500, 1501}, {10, 1990}} {
		if err := b.Apply(envs[r[0]:r[1]]); err != nil {
			t.Fatal(err)
		}
		if b.LastSeq() != 2000 {
			t.Fatalf("LastSeq %d after redelivery", b.LastSeq())
		}
	}
	if err := b.Apply(envs[1000:]); err != nil {
		t.Fatal(err)
	}
	if d, err := Diff(a, b); err != nil || d != "" {
		t.Fatalf("after redelivery: %q, %v", d, err)
	}
	// A redelivered batch of only old events writes nothing at all.
	st, _ := a.Stats()
	if err := a.Apply(envs); err != nil || a.LastSeq() != 3000 {
		t.Fatal(err)
	}
	if st2, _ := a.Stats(); fmt.Sprint(st) != fmt.Sprint(st2) {
		t.Fatalf("stats changed by redelivery: %+v → %+v", st, st2)
	}
	if st.Skipped == 0 {
		t.Fatal("no invalid events were skipped; the generator should make some")
	}
}

func TestApplyErrors(t *testing.T) {
	c := open(t, "")
	env := catalogtest.Generate(1, 1, catalogtest.Options{})[0]
	env.Seq = 0
	if err := c.Apply([]events.Envelope{env}); err == nil || !strings.Contains(err.Error(), "no stream sequence") {
		t.Fatalf("Seq 0: %v", err)
	}
	// Invalid payloads are skipped but advance the sequence.
	bad := events.Envelope{SpecVersion: "1.0", ID: "x", Source: "/x", Type: events.KindObjectStored.Type(),
		DataContentType: events.ContentType, Time: t0, Data: json.RawMessage(`{"object_id":"short"}`), Seq: 7}
	if err := c.Apply([]events.Envelope{bad}); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Stats(); c.LastSeq() != 7 || st.Skipped != 1 {
		t.Fatalf("seq %d skipped %d", c.LastSeq(), st.Skipped)
	}
	c.Close()
	if err := c.Apply([]events.Envelope{bad}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: %v", err)
	}
	if _, err := c.File(fid); !errors.Is(err, ErrClosed) {
		t.Fatalf("File after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestWaitSeq(t *testing.T) {
	c := open(t, "")
	envs := catalogtest.Generate(10, 1, catalogtest.Options{})
	done := make(chan error, 1)
	go func() { done <- c.WaitSeq(context.Background(), 5) }()
	if err := c.Apply(envs[:3]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitSeq(5) returned %v at seq 3", err)
	default:
	}
	if err := c.Apply(envs[3:6]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitSeq(5) still blocked at seq 6")
	}
	if err := c.WaitSeq(context.Background(), 6); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := c.WaitSeq(ctx, 100); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSeq with a deadline: %v", err)
	}
	go func() { done <- c.WaitSeq(context.Background(), 100) }()
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("WaitSeq after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitSeq not woken by Close")
	}
}

func TestFormatVersion(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.mu.db.Set(keyFormat, []byte("0"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = Open(dir, Options{})
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "strata replay") || !strings.Contains(err.Error(), `"0"`) {
		t.Fatalf("open of format 0: %v", err)
	}

	// A Pebble database that is not a catalog.
	dir2 := t.TempDir()
	db, err := pebble.Open(dir2, &pebble.Options{Logger: pebbleLogger{&Catalog{log: slog.New(slog.DiscardHandler)}}})
	if err != nil {
		t.Fatal(err)
	}
	db.Set([]byte("something"), []byte("else"), pebble.Sync)
	db.Close()
	if _, err := Open(dir2, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("open of a foreign database: %v", err)
	}
}

// checkStats recomputes the counters from the records and compares.
func checkStats(t *testing.T, c *Catalog) {
	t.Helper()
	var want stats
	db := c.mu.db
	count := func(pfx string) (n uint64) {
		scan(db, pfx, func(k, v []byte) error { n++; return nil })
		return n
	}
	scan(db, pfxFile, func(k, v []byte) error {
		f, err := decodeFile(string(k[len(pfxFile):]), v)
		if err != nil {
			t.Fatal(err)
		}
		want.addFile(f, +1)
		return nil
	})
	scan(db, pfxCopy, func(k, v []byte) error {
		obj, tier, _ := strings.Cut(string(k[len(pfxCopy):]), "/")
		cp, err := decodeCopy(obj, tier, v)
		if err != nil {
			t.Fatal(err)
		}
		want.addCopy(cp, +1)
		return nil
	})
	want.versions, want.objects, want.pins = count(pfxVersion), count(pfxObject), count(pfxPin)
	got, _ := c.Stats()
	w := want.public(c.LastSeq())
	w.Skipped = got.Skipped
	if fmt.Sprint(got) != fmt.Sprint(w) {
		t.Fatalf("stats %+v\nrecomputed %+v", got, w)
	}
	// Every released file is in the stub index and vice versa; every live
	// file is found by its path.
	var released, live uint64
	scan(db, pfxFile, func(k, v []byte) error {
		f, _ := decodeFile(string(k[len(pfxFile):]), v)
		if f.State == StateReleased {
			released++
		}
		if f.State != StateDeleted {
			live++
		}
		return nil
	})
	if n := count(pfxStub); n != released {
		t.Fatalf("%d stub keys, %d released files", n, released)
	}
	if n := count(pfxPath); n != live {
		t.Fatalf("%d path keys, %d live files", n, live)
	}
}

// TestConcurrentReaders runs queries while batches are applied and while the
// catalog closes: readers see committed state, never an error other than
// ErrNotFound or (after Close) ErrClosed, and never a panic.
func TestConcurrentReaders(t *testing.T) {
	c := open(t, "")
	envs := catalogtest.Generate(20_000, 9, catalogtest.Options{Invalid: 0.01})
	var ids []string
	for _, env := range envs {
		if env.Type == events.KindFileSelected.Type() {
			if ev, err := events.DecodeData(env.Type, env.Data); err == nil {
				ids = append(ids, ev.(*events.FileSelected).FileID)
			}
		}
	}
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for r := range 3 {
		go func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				var err error
				switch i % 4 {
				case 0:
					_, err = c.File(ids[(i*7+r)%len(ids)])
				case 1:
					err = c.Files("/data/d001", func(File) error { return nil })
				case 2:
					_, err = c.Stats()
				case 3:
					err = c.Stubs(func(File) error { return nil })
				}
				if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrClosed) {
					errs <- err
					return
				}
			}
		}()
	}
	// Read-your-writes: once WaitSeq returns, the event is visible.
	waited := make(chan error, 1)
	go func() {
		if err := c.WaitSeq(context.Background(), 15_000); err != nil {
			waited <- err
			return
		}
		if c.LastSeq() < 15_000 {
			waited <- fmt.Errorf("WaitSeq returned at %d", c.LastSeq())
			return
		}
		waited <- nil
	}()
	for lo := 0; lo < len(envs); lo += 500 {
		if err := c.Apply(envs[lo : lo+500]); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	c.Close()
	close(stop)
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestRecallStormIgnored: recall.storm is about a process, not a file. A
// log with storms interleaved gives the same catalog as the log without
// them (but for the sequence), nothing is counted as skipped, and a
// redelivery of the storms changes nothing.
func TestRecallStormIgnored(t *testing.T) {
	with, without := &stream{t: t, c: open(t, "")}, &stream{t: t, c: open(t, "")}
	storm := &events.RecallStorm{PID: 4242, Process: "tar", Exe: "/usr/bin/tar", UID: 34, Recalls: 50,
		WithinNS: 300e6, WindowNS: 1e9, Total: 50, Rule: "backup", Action: events.RuleRecall, Path: "/d/a"}
	evs := []events.Event{packed(fid, "/d/a", obj1, 100), stored(obj1, "hdd"),
		&events.FileReleased{FileID: fid, Path: "/d/a", ObjectID: obj1, Stat: stat(100), Copies: 1},
		&events.RecallRequested{FileID: fid, Path: "/d/a", ObjectID: obj1, Length: 100, PID: 4242, Process: "tar", Reason: events.RecallAccess}}
	for _, ev := range evs {
		with.apply(ev, storm)
		without.apply(ev)
		without.seq++ // the storm's sequence: both logs end at the same one
	}
	if with.c.LastSeq() != without.seq || without.c.LastSeq() != without.seq-1 {
		t.Fatalf("sequences %d and %d", with.c.LastSeq(), without.c.LastSeq())
	}
	st, err := with.c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 0 {
		t.Fatalf("%d events skipped: a storm must not count as an unknown event", st.Skipped)
	}
	// Bring the other catalog to the same sequence with an event that
	// changes nothing, then compare every key.
	without.seq--
	without.apply(storm)
	if d, err := Diff(with.c, without.c); err != nil || d != "" {
		t.Fatalf("catalog with storms differs from the one without: %q %v", d, err)
	}
	if f := with.file(fid); f.State != StateReleased || f.Recalls != 1 {
		t.Fatalf("file %+v", f)
	}
}
