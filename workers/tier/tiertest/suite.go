// Package tiertest is the conformance suite that every
// tier.Target passes (Run), plus helpers that start the real servers
// the targets are tested against on loopback: versitygw for S3 and
// `rclone serve webdav|sftp` for rclone.
//
// Only tests import this package.
package tiertest

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/tier"
)

// Damage is a way to damage a stored copy.
type Damage int

// Kinds of damage.
const (
	Truncate Damage = iota // cut the stored packed bytes short
	FlipByte               // change one byte in the middle, keeping the size
)

func (d Damage) String() string {
	if d == Truncate {
		return "truncate"
	}
	return "flip-byte"
}

// Suite configures Run for one kind of target.
type Suite struct {
	// New returns a fresh, empty target. Required.
	New func(t *testing.T) tier.Target
	// Damage damages the stored packed bytes of object id on tgt (a target
	// made by New) behind the target's back, in its backing store. Required.
	Damage func(t *testing.T, tgt tier.Target, id string, how Damage)
	// LargeSize is the size of the object used for interrupted uploads;
	// default 2 MiB. S3 sets it above its part size so the upload is
	// multipart.
	LargeSize int64
	// NoDelete declares a target that cannot remove what it stored (tape:
	// space comes back only by relabelling a whole volume). The suite
	// then checks the opposite of deletion instead: Delete of any valid
	// id, present or missing, fails with an error wrapping
	// tier.ErrNotSupported, and the object stays listed, readable and
	// verified, so a caller can never believe a copy is gone while it is
	// still there.
	NoDelete bool
}

// Run runs the conformance suite against targets made by s.New.
func Run(t *testing.T, s Suite) {
	if s.LargeSize == 0 {
		s.LargeSize = 2 << 20
	}
	// The cases are independent (each makes its own target) and mostly
	// wait on servers and child processes: run them in parallel.
	tests := []struct {
		name string
		fn   func(*testing.T, Suite)
	}{
		{"RoundTrip", testRoundTrip},
		{"Ranges", testRanges},
		{"Missing", testMissing},
		{"BadID", testBadID},
		{"Damaged/truncate", func(t *testing.T, s Suite) { testDamaged(t, s, Truncate) }},
		{"Damaged/flip-byte", func(t *testing.T, s Suite) { testDamaged(t, s, FlipByte) }},
		{"ConcurrentPuts", testConcurrentPuts},
		{"Interrupted", testInterrupted},
		{"WrongBytes", testWrongBytes},
		{"Replace", testReplace},
		{"ListDelete", testListDelete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, s)
		})
	}
}

// NewObject returns an object of size pseudo-random bytes (from seed) with
// a JSON manifest, and its bytes.
func NewObject(seed uint64, size int64) (tier.Object, []byte) {
	data := RandomBytes(seed, size)
	id := blake3.Sum256(append([]byte(fmt.Sprintf("id-%d-", seed)), data[:min(len(data), 64)]...))
	return ObjectOf(hex.EncodeToString(id[:]), data), data
}

// ObjectOf returns an object with the given id whose packed bytes are data.
func ObjectOf(id string, data []byte) tier.Object {
	sum := blake3.Sum256(data)
	return tier.Object{
		ID:         id,
		PackedSize: int64(len(data)),
		PackedSum:  hex.EncodeToString(sum[:]),
		Manifest:   []byte(fmt.Sprintf(`{"object_id":%q,"packed_size":%d}`, id, len(data))),
		Open:       func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
	}
}

// RandomBytes returns n deterministic pseudo-random bytes.
func RandomBytes(seed uint64, n int64) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	r := rand.NewChaCha8(s)
	_, _ = r.Read(b)
	return b
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func put(t *testing.T, tgt tier.Target, o tier.Object) {
	t.Helper()
	loc, err := tgt.Put(ctx(t), o)
	if err != nil {
		t.Fatalf("put %s: %v", o.ID, err)
	}
	if loc == "" {
		t.Fatalf("put %s: empty location", o.ID)
	}
}

// ReadRange reads bytes [off, off+n) of object id.
func ReadRange(t *testing.T, tgt tier.Target, id string, off, n int64) ([]byte, error) {
	t.Helper()
	rc, err := tgt.GetRange(ctx(t), id, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// checkStored asserts that tgt holds exactly data and manifest for o.
func checkStored(t *testing.T, tgt tier.Target, o tier.Object, data []byte) {
	t.Helper()
	info, err := tgt.Stat(ctx(t), o.ID)
	if err != nil {
		t.Fatalf("stat %s: %v", o.ID, err)
	}
	want := tier.Info{ID: o.ID, PackedSize: o.PackedSize, PackedSum: o.PackedSum}
	if info != want {
		t.Fatalf("stat %s = %+v, want %+v", o.ID, info, want)
	}
	if info, err = tgt.Verify(ctx(t), o.ID); err != nil || info != want {
		t.Fatalf("verify %s = %+v, %v; want %+v", o.ID, info, err, want)
	}
	got, err := ReadRange(t, tgt, o.ID, 0, o.PackedSize)
	if err != nil {
		t.Fatalf("read %s: %v", o.ID, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %s: %d bytes differ from the %d put", o.ID, len(got), len(data))
	}
	m, err := tgt.Manifest(ctx(t), o.ID)
	if err != nil || !bytes.Equal(m, o.Manifest) {
		t.Fatalf("manifest %s = %q, %v; want %q", o.ID, m, err, o.Manifest)
	}
}

func listAll(t *testing.T, tgt tier.Target) map[string]tier.Info {
	t.Helper()
	out := make(map[string]tier.Info)
	err := tgt.List(ctx(t), func(i tier.Info) error {
		if _, dup := out[i.ID]; dup {
			return fmt.Errorf("object %s listed twice", i.ID)
		}
		out[i.ID] = i
		return nil
	})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	return out
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func testRoundTrip(t *testing.T, s Suite) {
	tgt := s.New(t)
	if tgt.Name() == "" || tgt.Kind() == "" {
		t.Fatalf("name %q kind %q: want both set", tgt.Name(), tgt.Kind())
	}
	for i, size := range []int64{1, 1<<20 + 17} {
		o, data := NewObject(uint64(100+i), size)
		put(t, tgt, o)
		checkStored(t, tgt, o, data)
		// A second put of the same object is a no-op that still succeeds.
		put(t, tgt, o)
		checkStored(t, tgt, o, data)
	}
}

func testRanges(t *testing.T, s Suite) {
	tgt := s.New(t)
	const frame = 256 << 10
	size := int64(4*frame + 1000)
	o, data := NewObject(7, size)
	put(t, tgt, o)
	for _, r := range []struct{ off, n int64 }{
		{0, 1}, {size - 1, 1}, {0, size}, {0, 0}, {size, 0}, {size / 2, 0},
		{frame, frame}, {frame - 1, 2}, {2 * frame, 2*frame + 1000}, {frame + 12345, 777},
		{3*frame - 10, frame + 20},
	} {
		got, err := ReadRange(t, tgt, o.ID, r.off, r.n)
		if err != nil {
			t.Fatalf("range %d+%d: %v", r.off, r.n, err)
		}
		if !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Fatalf("range %d+%d: got %d bytes that differ from the original", r.off, r.n, len(got))
		}
	}
	for _, r := range []struct{ off, n int64 }{{size - 10, 11}, {size, 1}, {size + 5, 1}, {0, size + 1}} {
		got, err := ReadRange(t, tgt, o.ID, r.off, r.n)
		wantErr(t, fmt.Sprintf("range %d+%d past the end (got %d bytes)", r.off, r.n, len(got)), err, tier.ErrRange)
	}
	for _, r := range []struct{ off, n int64 }{{-1, 1}, {0, -1}} {
		if _, err := ReadRange(t, tgt, o.ID, r.off, r.n); err == nil {
			t.Fatalf("range %d+%d: no error", r.off, r.n)
		}
	}
}

func testMissing(t *testing.T, s Suite) {
	tgt := s.New(t)
	o, _ := NewObject(9, 100)
	_, err := tgt.GetRange(ctx(t), o.ID, 0, 1)
	wantErr(t, "get missing", err, tier.ErrNotFound)
	_, err = tgt.Manifest(ctx(t), o.ID)
	wantErr(t, "manifest missing", err, tier.ErrNotFound)
	_, err = tgt.Stat(ctx(t), o.ID)
	wantErr(t, "stat missing", err, tier.ErrNotFound)
	_, err = tgt.Verify(ctx(t), o.ID)
	wantErr(t, "verify missing", err, tier.ErrNotFound)
	if s.NoDelete {
		wantErr(t, "delete missing on a target without delete", tgt.Delete(ctx(t), o.ID), tier.ErrNotSupported)
	} else if err := tgt.Delete(ctx(t), o.ID); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
	if got := listAll(t, tgt); len(got) != 0 {
		t.Fatalf("empty target lists %v", got)
	}
}

func testBadID(t *testing.T, s Suite) {
	tgt := s.New(t)
	for _, id := range []string{"", "../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789", "zz"} {
		if _, err := tgt.GetRange(ctx(t), id, 0, 1); err == nil {
			t.Errorf("get %q: no error", id)
		}
		if _, err := tgt.Stat(ctx(t), id); err == nil {
			t.Errorf("stat %q: no error", id)
		}
		if err := tgt.Delete(ctx(t), id); err == nil {
			t.Errorf("delete %q: no error", id)
		}
		o := ObjectOf(id, []byte("x"))
		if _, err := tgt.Put(ctx(t), o); err == nil {
			t.Errorf("put %q: no error", id)
		}
	}
}

func testDamaged(t *testing.T, s Suite, how Damage) {
	tgt := s.New(t)
	o, data := NewObject(11, 300<<10)
	put(t, tgt, o)
	s.Damage(t, tgt, o.ID, how)
	_, err := tgt.Verify(ctx(t), o.ID)
	wantErr(t, "verify damaged", err, tier.ErrCorrupt)
	// Put of the good object repairs the copy.
	put(t, tgt, o)
	checkStored(t, tgt, o, data)
}

func testConcurrentPuts(t *testing.T, s Suite) {
	tgt := s.New(t)
	o, data := NewObject(13, 700<<10)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { _, errs[i] = tgt.Put(ctx(t), o) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("put %d: %v", i, err)
		}
	}
	checkStored(t, tgt, o, data)
	if got := listAll(t, tgt); len(got) != 1 {
		t.Fatalf("list after concurrent puts: %v, want one object", got)
	}
}

// failingReader returns the first n bytes of data, then calls fail and
// returns its error (if non-nil) or keeps serving bytes.
type failingReader struct {
	data []byte
	off  int
	n    int
	fail func() error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.off >= f.n && f.fail != nil {
		if err := f.fail(); err != nil {
			return 0, err
		}
		f.fail = nil
	}
	if f.off >= len(f.data) {
		return 0, io.EOF
	}
	end := len(f.data)
	if f.fail != nil && end > f.n {
		end = f.n
	}
	k := copy(p, f.data[f.off:end])
	f.off += k
	return k, nil
}

func (f *failingReader) Close() error { return nil }

func checkAbsent(t *testing.T, tgt tier.Target, id string) {
	t.Helper()
	_, err := tgt.Stat(ctx(t), id)
	wantErr(t, "stat after failed put", err, tier.ErrNotFound)
	_, err = tgt.GetRange(ctx(t), id, 0, 1)
	wantErr(t, "get after failed put", err, tier.ErrNotFound)
	if got := listAll(t, tgt); len(got) != 0 {
		t.Fatalf("list after failed put: %v, want nothing", got)
	}
}

func testInterrupted(t *testing.T, s Suite) {
	t.Run("ReaderFails", func(t *testing.T) {
		tgt := s.New(t)
		o, data := NewObject(17, s.LargeSize)
		bad := o
		boom := errors.New("disk read error")
		bad.Open = func() (io.ReadCloser, error) {
			return &failingReader{data: data, n: len(data) * 2 / 3, fail: func() error { return boom }}, nil
		}
		_, err := tgt.Put(ctx(t), bad)
		if err == nil {
			t.Fatal("put with a failing reader succeeded")
		}
		checkAbsent(t, tgt, o.ID)
		put(t, tgt, o)
		checkStored(t, tgt, o, data)
	})
	t.Run("ContextCancelled", func(t *testing.T) {
		tgt := s.New(t)
		o, data := NewObject(19, s.LargeSize)
		c, cancel := context.WithCancel(ctx(t))
		defer cancel()
		bad := o
		bad.Open = func() (io.ReadCloser, error) {
			return &failingReader{data: data, n: len(data) * 2 / 3, fail: func() error { cancel(); return nil }}, nil
		}
		_, err := tgt.Put(c, bad)
		if err == nil {
			t.Fatal("put with a cancelled context succeeded")
		}
		checkAbsent(t, tgt, o.ID)
		put(t, tgt, o)
		checkStored(t, tgt, o, data)
	})
	t.Run("OpenFails", func(t *testing.T) {
		tgt := s.New(t)
		o, _ := NewObject(23, 1000)
		o.Open = func() (io.ReadCloser, error) { return nil, errors.New("staging gone") }
		if _, err := tgt.Put(ctx(t), o); err == nil {
			t.Fatal("put with a failing Open succeeded")
		}
		checkAbsent(t, tgt, o.ID)
	})
}

func testWrongBytes(t *testing.T, s Suite) {
	tgt := s.New(t)
	o, data := NewObject(29, 500<<10)
	cases := map[string][]byte{
		"flipped": append([]byte{data[0] ^ 1}, data[1:]...),
		"short":   data[:len(data)-1],
		"long":    append(append([]byte{}, data...), 0),
	}
	for name, b := range cases {
		bad := o
		bad.Open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		_, err := tgt.Put(ctx(t), bad)
		wantErr(t, "put of "+name+" bytes", err, tier.ErrCorrupt)
		checkAbsent(t, tgt, o.ID)
	}
	put(t, tgt, o)
	checkStored(t, tgt, o, data)
}

func testReplace(t *testing.T, s Suite) {
	tgt := s.New(t)
	o, data := NewObject(31, 200<<10)
	put(t, tgt, o)
	// Same object, new manifest: the manifest is rewritten.
	o2 := o
	o2.Manifest = []byte(`{"object_id":"` + o.ID + `","note":"second"}`)
	put(t, tgt, o2)
	checkStored(t, tgt, o2, data)
	// Same id packed differently (another frame size or level): the copy
	// is replaced, so the target holds what the last Put promised.
	other := RandomBytes(32, 150<<10)
	o3 := ObjectOf(o.ID, other)
	put(t, tgt, o3)
	checkStored(t, tgt, o3, other)
}

func testListDelete(t *testing.T, s Suite) {
	tgt := s.New(t)
	want := make(map[string]tier.Info)
	var ids []string
	var objs []tier.Object
	var datas [][]byte
	for i := range 3 {
		o, data := NewObject(uint64(40+i), int64(1000*(i+1)))
		put(t, tgt, o)
		want[o.ID] = tier.Info{ID: o.ID, PackedSize: o.PackedSize, PackedSum: o.PackedSum}
		ids = append(ids, o.ID)
		objs, datas = append(objs, o), append(datas, data)
	}
	got := listAll(t, tgt)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list = %v, want %v", got, want)
	}
	stop := errors.New("stop")
	n := 0
	if err := tgt.List(ctx(t), func(tier.Info) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("list with a failing callback: %v after %d calls, want stop after 1", err, n)
	}
	if s.NoDelete {
		// The copy cannot go: Delete says so, and the object is still
		// listed, readable and verified, byte for byte.
		for range 2 {
			wantErr(t, "delete on a target without delete", tgt.Delete(ctx(t), ids[1]), tier.ErrNotSupported)
		}
		if got := listAll(t, tgt); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("list after a refused delete = %v, want %v", got, want)
		}
		checkStored(t, tgt, objs[1], datas[1])
		return
	}
	if err := tgt.Delete(ctx(t), ids[1]); err != nil {
		t.Fatalf("delete: %v", err)
	}
	delete(want, ids[1])
	if got := listAll(t, tgt); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list after delete = %v, want %v", got, want)
	}
	_, err := tgt.Stat(ctx(t), ids[1])
	wantErr(t, "stat deleted", err, tier.ErrNotFound)
	_, err = tgt.Manifest(ctx(t), ids[1])
	wantErr(t, "manifest deleted", err, tier.ErrNotFound)
	if err := tgt.Delete(ctx(t), ids[1]); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}

// CheckUnavailable asserts that every operation on tgt, a target whose
// backing store is gone or unreachable, fails with ErrUnavailable.
func CheckUnavailable(t *testing.T, tgt tier.Target) {
	t.Helper()
	o, _ := NewObject(50, 1000)
	_, err := tgt.Put(ctx(t), o)
	wantErr(t, "put", err, tier.ErrUnavailable)
	_, err = tgt.GetRange(ctx(t), o.ID, 0, 1)
	wantErr(t, "get", err, tier.ErrUnavailable)
	_, err = tgt.Stat(ctx(t), o.ID)
	wantErr(t, "stat", err, tier.ErrUnavailable)
	_, err = tgt.Verify(ctx(t), o.ID)
	wantErr(t, "verify", err, tier.ErrUnavailable)
	_, err = tgt.Manifest(ctx(t), o.ID)
	wantErr(t, "manifest", err, tier.ErrUnavailable)
	err = tgt.List(ctx(t), func(tier.Info) error { return nil })
	wantErr(t, "list", err, tier.ErrUnavailable)
	err = tgt.Delete(ctx(t), o.ID)
	wantErr(t, "delete", err, tier.ErrUnavailable)
}

// GoodCopies answers a recall's question "which copies of this object are
// good" with one good copy on each tier named.
type GoodCopies []string

// Copies implements recall's catalog lookup.
func (g GoodCopies) Copies(id string) ([]catalog.Copy, error) {
	out := make([]catalog.Copy, 0, len(g))
	for _, name := range g {
		out = append(out, catalog.Copy{ObjectID: id, Tier: name, State: catalog.CopyGood})
	}
	return out, nil
}
