package object

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/strata-hsm/strata/workers/object/objecttest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// Raw frames are built by hand: check each header size boundary against the
// reference decoder and klauspost's.
func TestRawFrame(t *testing.T) {
	zstdBin := stratatest.NeedTool(t, "zstd")
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	dir := t.TempDir()
	for _, n := range []int{0, 1, 255, 256, 65535, 65791, 65792, maxRawBlock - 1, maxRawBlock, maxRawBlock + 1, 3*maxRawBlock + 7, 1 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			src := objecttest.Random(n, uint64(n))
			frame := appendRawFrame(nil, src)
			if len(frame) != rawFrameSize(n) {
				t.Fatalf("frame is %d bytes, rawFrameSize says %d", len(frame), rawFrameSize(n))
			}
			got, err := dec.DecodeAll(frame, nil)
			if err != nil || !bytes.Equal(got, src) {
				t.Fatalf("klauspost decode: %v", err)
			}
			p := filepath.Join(dir, fmt.Sprint(n))
			if err := os.WriteFile(p, frame, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(zstdBin, "-dc", p).Output()
			if err != nil || !bytes.Equal(out, src) {
				t.Fatalf("zstd -dc: %v (%d bytes)", err, len(out))
			}
			if n > 0 { // the content checksum is checked
				frame[len(frame)-5] ^= 1
				if err := os.WriteFile(p, frame, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := exec.Command(zstdBin, "-t", "-q", p).Run(); err == nil {
					t.Fatal("zstd -t accepted a raw frame with a flipped byte")
				}
			}
		})
	}
}

func TestIncompressibleSample(t *testing.T) {
	p, err := NewPacker(Options{})
	if err != nil {
		t.Fatal(err)
	}
	wk, err := p.getWorker()
	if err != nil {
		t.Fatal(err)
	}
	if !wk.incompressible(objecttest.Random(4<<20, 1)) {
		t.Fatal("random frame not detected as incompressible")
	}
	if wk.incompressible(objecttest.Text(4<<20, 1)) {
		t.Fatal("text frame detected as incompressible")
	}
	zeros := make([]byte, 4<<20)
	if wk.incompressible(zeros) {
		t.Fatal("zero frame detected as incompressible")
	}
}

// Random frames must be stored raw on the sample's verdict alone: the full
// encoder never runs on them (that is the CPU the detection saves).
func TestIncompressibleSkipsEncoder(t *testing.T) {
	p, err := NewPacker(Options{FrameSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := objecttest.Mixed(8<<20, 2) // 4 random frames, then 4 text frames
	if _, err := p.Pack(context.Background(), bytes.NewReader(data), io.Discard); err != nil {
		t.Fatal(err)
	}
	if s, c, f := p.stats.sampledRaw.Load(), p.stats.compressed.Load(), p.stats.fallbackRaw.Load(); s != 4 || c != 4 || f != 0 {
		t.Fatalf("frames: %d raw by sample, %d compressed, %d raw after compressing; want 4, 4, 0", s, c, f)
	}
}

func TestSeekTableEncoding(t *testing.T) {
	frames := []Frame{{PackedSize: 10, Size: 100}, {PackedSize: 0x01020304, Size: 0x0A0B0C0D}}
	got := appendSeekTable(nil, frames)
	want := []byte{
		0x5E, 0x2A, 0x4D, 0x18, // skippable magic
		25, 0, 0, 0, // 2*8 + 9
		10, 0, 0, 0, 100, 0, 0, 0,
		0x04, 0x03, 0x02, 0x01, 0x0D, 0x0C, 0x0B, 0x0A,
		2, 0, 0, 0, // frames
		0,                      // descriptor
		0xB1, 0xEA, 0x92, 0x8F, // seekable magic
	}
	if !bytes.Equal(got, want) || int64(len(got)) != SeekTableSize(2) {
		t.Fatalf("seek table\n got %x\nwant %x", got, want)
	}
}

// seekTableObject builds an object of fake frames and a seek table, with
// optional per-entry checksums.
func seekTableObject(entries []SeekEntry, checksums bool) []byte {
	var b []byte
	for _, e := range entries {
		b = append(b, make([]byte, e.PackedSize)...)
	}
	es := seekEntrySize
	if checksums {
		es = seekEntryCkSize
	}
	b = binary.LittleEndian.AppendUint32(b, skippableMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)*es+seekFooterSize))
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, e.PackedSize)
		b = binary.LittleEndian.AppendUint32(b, e.Size)
		if checksums {
			b = binary.LittleEndian.AppendUint32(b, e.Checksum)
		}
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	desc := byte(0)
	if checksums {
		desc = checksumFlag
	}
	b = append(b, desc)
	return binary.LittleEndian.AppendUint32(b, seekableMagic)
}

func TestReadSeekTableChecksums(t *testing.T) {
	entries := []SeekEntry{{PackedSize: 5, Size: 9, Checksum: 0xdeadbeef}, {PackedSize: 3, Size: 1, Checksum: 7}}
	obj := seekTableObject(entries, true)
	st, err := ReadSeekTable(bytes.NewReader(obj), int64(len(obj)))
	if err != nil || !st.Checksums || len(st.Entries) != 2 || st.Entries[0] != entries[0] || st.Entries[1] != entries[1] {
		t.Fatalf("ReadSeekTable = %+v, %v", st, err)
	}
}

// FuzzReadSeekTable feeds arbitrary objects to the parser: it must never
// panic or allocate wildly, and whatever it accepts must be self-consistent.
func FuzzReadSeekTable(f *testing.F) {
	f.Add(seekTableObject(nil, false))
	f.Add(seekTableObject([]SeekEntry{{PackedSize: 4, Size: 8}}, false))
	f.Add(seekTableObject([]SeekEntry{{PackedSize: 4, Size: 8, Checksum: 1}, {PackedSize: 1, Size: 0}}, true))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, obj []byte) {
		st, err := ReadSeekTable(bytes.NewReader(obj), int64(len(obj)))
		if err != nil {
			return
		}
		var packed int64
		for _, e := range st.Entries {
			packed += int64(e.PackedSize)
		}
		if packed+st.encodedSize() != int64(len(obj)) {
			t.Fatalf("accepted table: frames %d + table %d != object %d", packed, st.encodedSize(), len(obj))
		}
		if !st.Checksums {
			frames := make([]Frame, len(st.Entries))
			for i, e := range st.Entries {
				frames[i] = Frame{PackedSize: int64(e.PackedSize), Size: int64(e.Size)}
			}
			// Strata writes the descriptor's unused bits as 0; readers ignore them.
			tail := bytes.Clone(obj[len(obj)-int(SeekTableSize(len(frames))):])
			tail[len(tail)-5] &^= 0x03
			if enc := appendSeekTable(nil, frames); !bytes.Equal(enc, tail) {
				t.Fatalf("re-encoded table differs")
			}
		}
	})
}
