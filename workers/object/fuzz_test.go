package object_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/object/objecttest"
)

// fuzzMaxFrame bounds the frame size of the manifests the reader fuzzer
// follows: a manifest may ask for frames of up to 256 MiB (the format's
// limit), which the reader then allocates; that is by design, and it would
// only make every fuzz execution slow.
const fuzzMaxFrame = 1 << 20

// fuzzSeedObjects packs a few small objects (empty, one frame, several
// frames, text and random) with a small frame size.
func fuzzSeedObjects(f *testing.F) []struct {
	obj []byte
	m   object.Manifest
} {
	var out []struct {
		obj []byte
		m   object.Manifest
	}
	for i, data := range [][]byte{nil, []byte("x"), objecttest.Text(5000, 1), objecttest.Random(3000, 2), objecttest.Text(1024, 3)} {
		obj, m := pack(f, data, object.Options{FrameSize: 1 << 10, Concurrency: 1 + i%2})
		if i == 4 {
			m.File = &object.FileInfo{Path: "/srv/hot/a b", Size: m.Size, Mode: 0o100644, MtimeNS: 1}
		}
		out = append(out, struct {
			obj []byte
			m   object.Manifest
		}{obj, m})
	}
	return out
}

// FuzzDecodeManifest feeds arbitrary bytes to the manifest decoder: it
// never panics, every refusal wraps ErrInvalidManifest, and an accepted
// manifest is internally consistent: it re-encodes to a manifest that
// decodes equal, and FrameSpan of any range stays inside the object.
func FuzzDecodeManifest(f *testing.F) {
	for _, s := range fuzzSeedObjects(f) {
		b, err := s.m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, int64(0), int64(100))
	}
	f.Add([]byte(`{"format":1}`), int64(-1), int64(-1))
	f.Add([]byte(`not json`), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, data []byte, off, n int64) {
		m, err := object.DecodeManifest(data)
		if err != nil {
			if !errors.Is(err, object.ErrInvalidManifest) {
				t.Fatalf("refused without ErrInvalidManifest: %v", err)
			}
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
		m2, err := object.DecodeManifest(enc)
		if err != nil {
			t.Fatalf("re-encoded manifest refused: %v\n%s", err, enc)
		}
		if m.Frames == nil {
			m.Frames = []object.Frame{}
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("manifest changed through encode/decode:\n%+v\n%+v", m, m2)
		}
		first, last, poff, plen := m.FrameSpan(off, n)
		if last < first {
			if plen != 0 {
				t.Fatalf("FrameSpan(%d, %d) = empty with %d packed bytes", off, n, plen)
			}
			return
		}
		if first < 0 || last >= len(m.Frames) || poff < 0 || plen <= 0 || poff+plen > m.PackedSize {
			t.Fatalf("FrameSpan(%d, %d) = %d..%d, [%d, +%d) outside %d frames / %d packed bytes",
				off, n, first, last, poff, plen, len(m.Frames), m.PackedSize)
		}
	})
}

// FuzzReader gives the reader arbitrary object bytes with an arbitrary
// manifest (seeded with real objects and their manifests): it never
// panics, and it hands out only verified bytes — whatever it returns
// without error hashes, frame by frame, to the BLAKE3 the manifest
// records, and a whole object it accepts hashes to its id. Verify and
// DecodeFrames agree with it: Verify accepts only an object the reader
// reads whole, byte for byte.
func FuzzReader(f *testing.F) {
	for _, s := range fuzzSeedObjects(f) {
		b, err := s.m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, s.obj, int64(0), int64(s.m.Size))
		f.Add(b, s.obj, int64(1500), int64(10))
		if len(s.obj) > 10 {
			bad := bytes.Clone(s.obj)
			bad[len(bad)/2] ^= 0x40
			f.Add(b, bad, int64(0), int64(s.m.Size))
			f.Add(b, s.obj[:len(s.obj)-7], int64(0), int64(s.m.Size))
		}
	}
	f.Fuzz(func(t *testing.T, manifest, obj []byte, off, n int64) {
		m, err := object.DecodeManifest(manifest)
		if err != nil || m.FrameSize > fuzzMaxFrame {
			return
		}
		if n < 0 || n > 4*fuzzMaxFrame {
			n = 4 * fuzzMaxFrame
		}
		n = min(n, max(m.Size-max(off, 0), 0))
		r := object.NewReader(bytes.NewReader(obj), m)
		p := make([]byte, n)
		got, err := r.ReadAt(p, off)
		if off < 0 {
			if err == nil {
				t.Fatalf("ReadAt at %d: no error", off)
			}
			return
		}
		if got < 0 || int64(got) > n {
			t.Fatalf("ReadAt returned %d of %d bytes", got, n)
		}
		if err == nil && int64(got) != n {
			t.Fatalf("ReadAt returned %d of %d bytes and no error", got, n)
		}
		if err != nil && !errors.Is(err, object.ErrCorrupt) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ReadAt error is neither corruption nor EOF: %v", err)
		}
		checkVerified(t, m, obj, p[:got], off)

		verr := object.Verify(bytes.NewReader(obj), m)
		if verr == nil {
			whole := make([]byte, m.Size)
			if k, err := object.NewReader(bytes.NewReader(obj), m).ReadAt(whole, 0); err != nil || int64(k) != m.Size {
				t.Fatalf("Verify accepted an object the reader cannot read whole: %d, %v", k, err)
			}
			if sum := blake3.Sum256(whole); hex.EncodeToString(sum[:]) != m.ObjectID {
				t.Fatalf("Verify accepted content that does not hash to the object id")
			}
		} else if !errors.Is(verr, object.ErrCorrupt) && !errors.Is(verr, io.ErrUnexpectedEOF) {
			t.Fatalf("Verify error is not corruption: %v", verr)
		}

		first, last, poff, plen := m.FrameSpan(off, n)
		if last < first || poff+plen > int64(len(obj)) {
			return
		}
		content, err := object.DecodeFrames(m, first, obj[poff:poff+plen])
		if err != nil {
			if !errors.Is(err, object.ErrCorrupt) {
				t.Fatalf("DecodeFrames error is not corruption: %v", err)
			}
			return
		}
		checkVerified(t, m, obj, content, m.Frames[first].Offset)
	})
}

// checkVerified fails t unless every whole frame inside b (content bytes
// from uncompressed offset off) hashes to the frame's recorded BLAKE3, and
// every partial frame at either end is a prefix or suffix of bytes that do.
// Since the fuzzer cannot forge BLAKE3, this means: no unverified byte.
func checkVerified(t *testing.T, m object.Manifest, obj, b []byte, off int64) {
	t.Helper()
	end := off + int64(len(b))
	for i, fr := range m.Frames {
		if fr.Offset+fr.Size <= off || fr.Offset >= end {
			continue
		}
		lo, hi := max(fr.Offset, off), min(fr.Offset+fr.Size, end)
		if hi <= lo {
			continue
		}
		part := b[lo-off : hi-off]
		if lo == fr.Offset && hi == fr.Offset+fr.Size {
			if sum := blake3.Sum256(part); hex.EncodeToString(sum[:]) != fr.BLAKE3 {
				t.Fatalf("frame %d returned with bytes that do not hash to its BLAKE3", i)
			}
			continue
		}
		// A partial frame: decode the frame independently of the reader
		// and compare.
		if fr.PackedOffset+fr.PackedSize > int64(len(obj)) {
			t.Fatalf("frame %d returned though the object is cut short before its end", i)
		}
		whole, err := object.DecodeFrames(m, i, obj[fr.PackedOffset:fr.PackedOffset+fr.PackedSize])
		if err != nil {
			t.Fatalf("frame %d: returned part of a frame that does not decode verified: %v", i, err)
		}
		if !bytes.Equal(whole[lo-fr.Offset:hi-fr.Offset], part) {
			t.Fatalf("frame %d: returned bytes differ from the verified frame", i)
		}
	}
}
