package bundle

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// fuzzBundle writes a real bundle of objects (id, manifest, packed bytes)
// and returns its tar stream without the block padding after the tar end
// (ReadBundle reads a stream; the padding only makes fuzzing slower).
func fuzzBundle(tb testing.TB, objs [][3][]byte, c *Continued) []byte {
	tb.Helper()
	var out bytes.Buffer
	w, err := NewWriter(MinBlockSize, Header{Bundle: "b1", Part: 1}, func(b []byte) error { out.Write(b); return nil })
	if err != nil {
		tb.Fatal(err)
	}
	for _, o := range objs {
		if _, err := w.Add(string(o[0]), o[1], int64(len(o[2])), hexsum(o[2]), bytes.NewReader(o[2])); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Close(c); err != nil {
		tb.Fatal(err)
	}
	return trimPadding(out.Bytes())
}

// trimPadding cuts the zero blocks after a tar stream's end to the two
// 512-byte zero records that end it.
func trimPadding(b []byte) []byte {
	end := len(b)
	for end >= 512 && bytes.Count(b[end-512:end], []byte{0}) == 512 {
		end -= 512
	}
	return b[:min(len(b), end+1024)]
}

func fuzzObjects() [][3][]byte {
	r := rand.New(rand.NewPCG(7, 8))
	var objs [][3][]byte
	for i, n := range []int{0, 1, 700, 3000} {
		data := randBytes(r, n, i%2 == 0)
		id := hexsum(append([]byte{byte(i)}, data...))
		m := []byte(fmt.Sprintf(`{"object_id":%q,"size":%d}`, id, n))
		objs = append(objs, [3][]byte{[]byte(id), m, data})
	}
	return objs
}

// FuzzReadBundle feeds arbitrary tape files to the bundle reader: it never
// panics or hangs; a stream it cannot read as a bundle is an error; and
// every object it reports intact (Err nil) is exactly what the stream
// holds at its DataOffset — PackedSize bytes hashing to PackedSum under a
// member named after its id, with its manifest — so a damaged object can
// never be taken for a good one.
func FuzzReadBundle(f *testing.F) {
	objs := fuzzObjects()
	f.Add(fuzzBundle(f, objs, nil))
	f.Add(fuzzBundle(f, objs[:1], &Continued{Bundle: "b1", Part: 1, NextPart: 2}))
	f.Add(fuzzBundle(f, nil, nil))
	whole := fuzzBundle(f, objs, nil)
	f.Add(whole[:len(whole)/2])
	bad := bytes.Clone(whole)
	bad[len(bad)-1600] ^= 1
	f.Add(bad)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ReadBundle(bytes.NewReader(data))
		if err == nil && c.Header.Bundle == "" && c.Header.Part == 0 && len(data) == 0 {
			t.Fatal("an empty stream read as a bundle")
		}
		for _, o := range c.Objects {
			if o.Err != nil {
				if !errors.Is(o.Err, ErrFormat) && !errors.Is(o.Err, ErrChecksum) {
					t.Fatalf("object %q: error is neither format nor checksum: %v", o.ID, o.Err)
				}
				continue
			}
			if ValidID(o.ID) != nil || ValidID(o.PackedSum) != nil {
				t.Fatalf("intact object with id %q, sum %q", o.ID, o.PackedSum)
			}
			if o.DataOffset < 0 || o.PackedSize < 0 || o.DataOffset+o.PackedSize > int64(len(data)) {
				t.Fatalf("intact object %s at %d+%d outside a stream of %d bytes", o.ID, o.DataOffset, o.PackedSize, len(data))
			}
			if got := hexsum(data[o.DataOffset : o.DataOffset+o.PackedSize]); got != o.PackedSum {
				t.Fatalf("intact object %s: the stream's bytes hash to %s, not %s", o.ID, got, o.PackedSum)
			}
			if o.Manifest == nil {
				t.Fatalf("intact object %s without a manifest", o.ID)
			}
		}
	})
}

// FuzzDecodeLabel feeds arbitrary bytes as tape file 0: no panic, a clear
// error for anything but a valid label, and an accepted label is valid
// and written back it reads the same.
func FuzzDecodeLabel(f *testing.F) {
	for _, l := range []Label{
		{Volume: "VOL001", Pool: "p1", BlockSize: DefaultBlockSize, FormatVersion: FormatVersion, Sequence: 1},
		{Volume: "T2", Pool: "main", BlockSize: MinBlockSize, FormatVersion: FormatVersion},
	} {
		f.Add(labelTar(f, l))
	}
	f.Add(labelTar(f, Label{Volume: "a/b", Pool: "p", BlockSize: 1, FormatVersion: 9}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := DecodeLabel(bytes.NewReader(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "read label: ") {
				t.Fatalf("unclear error: %v", err)
			}
			return
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("accepted an invalid label %+v: %v", l, err)
		}
		l2, err := DecodeLabel(bytes.NewReader(labelTar(t, l)))
		if err != nil || l2 != l {
			t.Fatalf("label %+v written back reads %+v, %v", l, l2, err)
		}
	})
}

// labelTar is tape file 0 as WriteLabel writes it, without block padding.
func labelTar(tb testing.TB, l Label) []byte {
	tb.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := writeJSONMember(tw, LabelName, l); err != nil {
		tb.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// FuzzObjectHeader feeds arbitrary bytes to the parser that recall uses to
// find an object's manifest and sizes just before its packed bytes on
// tape (reading backwards from the recorded position): no panic, and it
// accepts only the members of that very object, with a manifest whose
// BLAKE3 matches its PAX record.
func FuzzObjectHeader(f *testing.F) {
	objs := fuzzObjects()
	b := fuzzBundle(f, objs, nil)
	c, err := ReadBundle(bytes.NewReader(b))
	if err != nil || len(c.Objects) != len(objs) {
		f.Fatalf("seed bundle: %v, %d objects", err, len(c.Objects))
	}
	for i, o := range c.Objects {
		// The members before object i's data: from the first record of
		// its manifest's pax header (after the previous object's data).
		var start int64
		if i > 0 {
			p := c.Objects[i-1]
			start = (p.DataOffset + p.PackedSize + 511) / 512 * 512
		} else {
			start = headerEnd(f, b)
		}
		f.Add(b[start:o.DataOffset], o.ID)
	}
	f.Add([]byte{}, string(objs[0][0]))
	f.Fuzz(func(t *testing.T, p []byte, id string) {
		if ValidID(id) != nil {
			return
		}
		h, ok := tryHeader(p, id)
		if !ok {
			return
		}
		if h.ID != id || hexsum(h.Manifest) == "" || ValidID(h.PackedSum) != nil || h.PackedSize < 0 {
			t.Fatalf("accepted header %+v for %s", h, id)
		}
		tr := tar.NewReader(bytes.NewReader(p))
		mh, err := tr.Next()
		if err != nil || mh.PAXRecords[PaxBlake3] != hexsum(h.Manifest) || mh.PAXRecords[PaxObjectID] != id {
			t.Fatalf("accepted a manifest whose PAX records do not match: %v", err)
		}
	})
}

// headerEnd returns the offset just after the STRATA-BUNDLE.json member.
func headerEnd(tb testing.TB, b []byte) int64 {
	tb.Helper()
	cr := &countingReader{r: bytes.NewReader(b)}
	tr := tar.NewReader(cr)
	h, err := tr.Next()
	if err != nil {
		tb.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, tr); err != nil || n != h.Size {
		tb.Fatalf("header member: %d bytes, %v", n, err)
	}
	return (cr.n + 511) / 512 * 512
}
