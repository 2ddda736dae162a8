package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
)

// TestReadObjectHeader: for objects of every size, and manifests from a
// few bytes to several blocks, ReadObjectHeader finds the manifest and the
// packed size and sum reading backwards from the recorded position; a
// wrong id or a position that is not the start of the packed bytes is an
// error, never another object's manifest.
func TestReadObjectHeader(t *testing.T) {
	const bs = MinBlockSize
	dir := filepath.Join(t.TempDir(), "vol")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 256 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, model())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := WriteLabel(d, Label{Volume: "V1", Pool: "p", BlockSize: bs, Sequence: 1}); err != nil {
		t.Fatal(err)
	}
	start, _ := d.Tell()
	w, err := NewWriter(bs, Header{Bundle: "b1", Part: 1}, d.WriteBlock)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	type placed struct {
		id, sum  string
		size     int64
		manifest []byte
		pos      events.TapePosition
	}
	var objs []placed
	for i, n := range []int{1, 511, 512, 4000, bs - 700, bs, 3*bs + 17, 100} {
		data := randBytes(r, n, false)
		id := hexsum(append([]byte{byte(i)}, data...))
		// Manifests of 50 bytes to 1.5 blocks.
		m := []byte(fmt.Sprintf(`{"object_id":%q,"pad":%q}`, id, bytes.Repeat([]byte("x"), (i*197_003)%(bs+bs/2))))
		e, err := w.Add(id, m, int64(n), hexsum(data), bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, placed{id, hexsum(data), int64(n), m, Position("V1", 1, start, bs, e.DataOffset)})
	}
	if err := w.Close(nil); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFilemarks(1, true); err != nil {
		t.Fatal(err)
	}
	rr := NewRangeReader(d, bs)
	for _, o := range objs {
		h, err := rr.ReadObjectHeader(o.pos, o.id)
		if err != nil {
			t.Fatalf("object %s (%d bytes, manifest %d): %v", o.id[:8], o.size, len(o.manifest), err)
		}
		if !bytes.Equal(h.Manifest, o.manifest) || h.PackedSize != o.size || h.PackedSum != o.sum {
			t.Fatalf("object %s: header %d %s, manifest equal %v", o.id[:8], h.PackedSize, h.PackedSum, bytes.Equal(h.Manifest, o.manifest))
		}
	}
	// Another object's id at this position, or a position off by a byte:
	// an error, never a wrong manifest.
	if _, err := rr.ReadObjectHeader(objs[3].pos, objs[2].id); !errors.Is(err, ErrFormat) {
		t.Fatalf("wrong id: %v", err)
	}
	bad := objs[4].pos
	bad.Offset++
	if _, err := rr.ReadObjectHeader(bad, objs[4].id); !errors.Is(err, ErrFormat) {
		t.Fatalf("wrong offset: %v", err)
	}
}
