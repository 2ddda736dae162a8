package volume

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// fuzzImage writes a real cartridge image (label, two bundles of a few
// objects) and returns its index and data files' bytes.
func fuzzImage(f *testing.F) (index, data []byte) {
	f.Helper()
	dir := filepath.Join(f.TempDir(), "V1")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 64 << 20}); err != nil {
		f.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, fuzzModel())
	if err != nil {
		f.Fatal(err)
	}
	const bs = bundle.MinBlockSize
	if err := Label(d, "V1", "pool", bs, 1, false); err != nil {
		f.Fatal(err)
	}
	if err := d.EndOfData(); err != nil {
		f.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		w, err := bundle.NewWriter(bs, bundle.Header{Bundle: "b", Part: n}, d.WriteBlock)
		if err != nil {
			f.Fatal(err)
		}
		for i := range 3 {
			b := bytes.Repeat([]byte{byte(n), byte(i)}, 1000*(i+1))
			id := hexsum(b)
			if _, err := w.Add(id, []byte(`{"n":1}`), int64(len(b)), id, bytes.NewReader(b)); err != nil {
				f.Fatal(err)
			}
		}
		if err := w.Close(nil); err != nil {
			f.Fatal(err)
		}
		if err := d.WriteFilemarks(1, true); err != nil {
			f.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		f.Fatal(err)
	}
	index, err = os.ReadFile(filepath.Join(dir, "index"))
	if err != nil {
		f.Fatal(err)
	}
	data, err = os.ReadFile(filepath.Join(dir, "data"))
	if err != nil {
		f.Fatal(err)
	}
	return index, data
}

func fuzzModel() tape.Model {
	m := tape.LTO9()
	m.LoadTime = time.Second
	return m
}

// FuzzScanImage loads a damaged emulated cartridge — its index (the
// block and filemark records) rewritten by the fuzzer, and one byte of its
// data changed — and reads it as `strata tape ls/verify/rebuild` do: the
// emulator refuses an index it cannot trust, Scan and Verify never panic
// or hang, and Rebuild returns only objects whose bytes, read back from the
// cartridge, hash to their recorded sum.
func FuzzScanImage(f *testing.F) {
	index, data := fuzzImage(f)
	f.Add(index, uint32(0), byte(0))
	f.Add(index, uint32(len(data)/2), byte(1))
	f.Add(index[:len(index)-16], uint32(bundle.MinBlockSize+600), byte(0x80)) // the last filemark lost
	var e [16]byte
	binary.LittleEndian.PutUint64(e[:], uint64(len(data)))
	binary.LittleEndian.PutUint64(e[8:], ^uint64(0))
	f.Add(append(bytes.Clone(index), e[:]...), uint32(3*bundle.MinBlockSize), byte(0xff))
	f.Add([]byte{}, uint32(0), byte(0))
	f.Fuzz(func(t *testing.T, idx []byte, at uint32, x byte) {
		if len(idx) > 64*16 {
			return
		}
		dir := filepath.Join(t.TempDir(), "V1")
		if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 64 << 20}); err != nil {
			t.Fatal(err)
		}
		img := bytes.Clone(data)
		if len(img) > 0 {
			img[int(at)%len(img)] ^= x
		}
		if err := os.WriteFile(filepath.Join(dir, "data"), img, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "index"), idx, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := tape.OpenEmulator(dir, fuzzModel())
		if err != nil {
			return // an index the emulator cannot trust: refused, clearly
		}
		defer d.Close()
		_, _ = Scan(d)
		_, _ = Verify(d)
		recs, info, err := Rebuild(d)
		if err != nil {
			return
		}
		for _, r := range recs {
			var got bytes.Buffer
			if err := bundle.ReadObject(d, info.Label.BlockSize, r.Pos, r.PackedSize, r.PackedSum, &got); err != nil {
				t.Fatalf("rebuild returned %s at %+v, which does not read back: %v", r.ObjectID, r.Pos, err)
			}
			if hexsum(got.Bytes()) != r.PackedSum {
				t.Fatalf("rebuild returned %s with sum %s; its bytes hash otherwise", r.ObjectID, r.PackedSum)
			}
		}
	})
}
