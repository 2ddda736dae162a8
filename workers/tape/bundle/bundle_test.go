package bundle

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/zeebo/blake3"
)

func model() tape.Model {
	return tape.Model{Rate: 100e6, MinRate: 40e6, Buffer: 8 << 20, Backhitch: 2 * time.Second,
		FlushTime: 10 * time.Millisecond, Wraps: 8, EndToEnd: 12 * time.Second, DirectionChange: 2 * time.Second}
}

type obj struct {
	id, sum  string
	raw, zst []byte
	manifest []byte
}

func hexsum(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }

// zstdObject compresses raw with the zstd CLI (objects are opaque to this
// package; the CLI stands in for the compressor).
func zstdObject(t *testing.T, raw []byte) obj {
	t.Helper()
	cmd := exec.Command(stratatest.NeedTool(t, "zstd"), "-q", "-c", "-3")
	cmd.Stdin = bytes.NewReader(raw)
	zst, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	id := hexsum(raw)
	return obj{id: id, sum: hexsum(zst), raw: raw, zst: zst,
		manifest: []byte(`{"object_id":"` + id + `","size":` + strconv.Itoa(len(raw)) + "}\n")}
}

func randBytes(r *rand.Rand, n int, compressible bool) []byte {
	b := make([]byte, n)
	for i := range b {
		if compressible {
			b[i] = byte('a' + r.IntN(4))
		} else {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

func TestLabelAndBundleRoundTripWithTar(t *testing.T) {
	tarBin := stratatest.NeedTool(t, "tar")
	zstdBin := stratatest.NeedTool(t, "zstd")
	dir := filepath.Join(t.TempDir(), "vol")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 256 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, model())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	lbl := Label{Volume: "VOL001", Pool: "p1", BlockSize: DefaultBlockSize, Sequence: 1}
	if err := WriteLabel(d, lbl); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var objs []obj
	for _, n := range []int{0, 1, 1000, 700 << 10, 3 << 20} {
		objs = append(objs, zstdObject(t, randBytes(r, n, n%2 == 0)))
	}
	start, err := d.Tell()
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(lbl.BlockSize, Header{Bundle: "b1", Part: 1}, d.WriteBlock)
	if err != nil {
		t.Fatal(err)
	}
	var entries []Entry
	for _, o := range objs {
		e, err := w.Add(o.id, o.manifest, int64(len(o.zst)), o.sum, bytes.NewReader(o.zst))
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	if err := w.Close(nil); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFilemarks(1, true); err != nil {
		t.Fatal(err)
	}

	got, err := ReadLabel(d)
	if err != nil || got != (Label{Volume: "VOL001", Pool: "p1", BlockSize: DefaultBlockSize, Sequence: 1, FormatVersion: FormatVersion}) {
		t.Fatalf("label = %+v, %v", got, err)
	}
	// Strata's reader: every hash checks.
	c, err := ReadBundle(NewFileReader(d))
	if err != nil {
		t.Fatal(err)
	}
	if c.Header.Bundle != "b1" || len(c.Objects) != len(objs) || c.Continued != nil {
		t.Fatalf("contents = %+v", c)
	}
	for i, o := range c.Objects {
		if o.Err != nil || o.ID != objs[i].id || !bytes.Equal(o.Manifest, objs[i].manifest) || o.DataOffset != entries[i].DataOffset {
			t.Fatalf("object %d = %+v", i, o)
		}
	}
	// Positioned reads.
	for i, o := range objs {
		pos := Position("VOL001", 1, start, lbl.BlockSize, entries[i].DataOffset)
		var buf bytes.Buffer
		if err := ReadObject(d, lbl.BlockSize, pos, int64(len(o.zst)), o.sum, &buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), o.zst) {
			t.Fatalf("object %d read back differs", i)
		}
		if len(o.zst) > 10 {
			buf.Reset()
			if err := ReadRange(d, lbl.BlockSize, pos, 3, 7, &buf); err != nil || !bytes.Equal(buf.Bytes(), o.zst[3:10]) {
				t.Fatalf("range read = %x, %v", buf.Bytes(), err)
			}
		}
	}

	// The easy exit: dump tape file 1 as a byte stream (what
	// `dd if=/dev/nst0 bs=512k` after `mt fsf 1` would give) and let GNU
	// tar and the zstd CLI restore it.
	if err := tape.SeekFile(d, 1); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "file1.tar")
	f, err := os.Create(dump)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MaxBlockSize)
	for {
		n, err := d.ReadBlock(buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if n != lbl.BlockSize {
			t.Fatalf("record of %d bytes, want %d", n, lbl.BlockSize)
		}
		f.Write(buf[:n])
	}
	f.Close()
	out := t.TempDir()
	if b, err := exec.Command(tarBin, "-x", "-b", "1024", "-f", dump, "-C", out).CombinedOutput(); err != nil {
		t.Fatalf("tar -x -b 1024: %v\n%s", err, b)
	}
	for _, o := range objs {
		p := filepath.Join(out, ObjectPath(o.id))
		zst, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(zst, o.zst) {
			t.Fatalf("tar extracted %s: %v", p, err)
		}
		man, err := os.ReadFile(p[:len(p)-4] + ".json")
		if err != nil || !bytes.Equal(man, o.manifest) {
			t.Fatalf("manifest of %s: %v", o.id, err)
		}
		raw, err := exec.Command(zstdBin, "-d", "-c", p).Output()
		if err != nil || !bytes.Equal(raw, o.raw) {
			t.Fatalf("zstd -d %s: %v (len %d, want %d)", p, err, len(raw), len(o.raw))
		}
	}
	// The PAX records are visible to tar.
	lst, err := exec.Command(tarBin, "--list", "-v", "--pax-option=", "-b", "1024", "-f", dump).CombinedOutput()
	if err != nil || !bytes.Contains(lst, []byte(ObjectPath(objs[4].id))) {
		t.Fatalf("tar --list: %v\n%s", err, lst)
	}
}

func TestReadObjectDetectsCorruption(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, model())
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteLabel(d, Label{Volume: "V", Pool: "p", BlockSize: MinBlockSize}); err != nil {
		t.Fatal(err)
	}
	raw := randBytes(rand.New(rand.NewPCG(3, 4)), 100000, false)
	id, s := hexsum(raw), hexsum(raw) // an "object" stored raw: opaque bytes
	start, _ := d.Tell()
	w, _ := NewWriter(MinBlockSize, Header{Bundle: "b", Part: 1}, d.WriteBlock)
	e, err := w.Add(id, []byte("{}"), int64(len(raw)), s, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	// A wrong sum is caught while writing.
	bad := bytes.Clone(raw)
	bad[5] ^= 1
	if _, err := w.Add(hexsum(bad), []byte("{}"), int64(len(bad)), s, bytes.NewReader(bad)); !errors.Is(err, ErrChecksum) {
		t.Fatalf("add with wrong sum = %v", err)
	}
	// A short source is padded and reported.
	if _, err := w.Add(hexsum(raw[:10]), []byte("{}"), 20, hexsum(raw[:10]), bytes.NewReader(raw[:10])); err == nil {
		t.Fatal("short source accepted")
	}
	w.Close(nil)
	d.WriteFilemarks(1, true)
	d.Close()
	// Flip a byte on the medium.
	df, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(MinBlockSize) + e.DataOffset + 77
	b := []byte{0}
	df.ReadAt(b, off)
	b[0] ^= 0xff
	df.WriteAt(b, off)
	df.Close()
	d, err = tape.OpenEmulator(dir, model())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var buf bytes.Buffer
	if err := ReadObject(d, MinBlockSize, Position("V", 1, start, MinBlockSize, e.DataOffset), int64(len(raw)), s, &buf); !errors.Is(err, ErrChecksum) {
		t.Fatalf("read corrupted = %v, want ErrChecksum", err)
	}
	if err := tape.SeekFile(d, 1); err != nil {
		t.Fatal(err)
	}
	c, err := ReadBundle(NewFileReader(d))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Objects) != 3 || !errors.Is(c.Objects[0].Err, ErrChecksum) || !errors.Is(c.Objects[1].Err, ErrChecksum) || c.Objects[2].Err == nil {
		t.Fatalf("scan of a damaged bundle = %+v", c.Objects)
	}
}

func TestLabelValidate(t *testing.T) {
	for _, l := range []Label{
		{Volume: "", Pool: "p", BlockSize: DefaultBlockSize, FormatVersion: 1},
		{Volume: "a/b", Pool: "p", BlockSize: DefaultBlockSize, FormatVersion: 1},
		{Volume: "v", Pool: "", BlockSize: DefaultBlockSize, FormatVersion: 1},
		{Volume: "v", Pool: "p", BlockSize: 128 << 10, FormatVersion: 1},
		{Volume: "v", Pool: "p", BlockSize: 2 << 20, FormatVersion: 1},
		{Volume: "v", Pool: "p", BlockSize: DefaultBlockSize, FormatVersion: 2},
	} {
		if l.Validate() == nil {
			t.Errorf("%+v accepted", l)
		}
	}
}

// TestReadRangeRejectsShortBlocks: a block shorter than the block size
// (a damaged or cut record) is ErrFormat, never bytes read on from the
// next block as if they followed.
func TestReadRangeRejectsShortBlocks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, model())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	raw := randBytes(rand.New(rand.NewPCG(5, 6)), 3*MinBlockSize, false)
	for i := range 3 {
		blk := raw[i*MinBlockSize : (i+1)*MinBlockSize]
		if i == 1 {
			blk = blk[:1000]
		}
		if err := d.WriteBlock(blk); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.WriteFilemarks(1, true); err != nil {
		t.Fatal(err)
	}
	pos := Position("V", 0, 0, MinBlockSize, 100)
	var buf bytes.Buffer
	if err := ReadRange(d, MinBlockSize, pos, 0, 50, &buf); err != nil || !bytes.Equal(buf.Bytes(), raw[100:150]) {
		t.Fatalf("range in the first, whole block: %v", err)
	}
	buf.Reset()
	err = ReadRange(d, MinBlockSize, pos, 0, 2*MinBlockSize, &buf)
	if !errors.Is(err, ErrFormat) {
		t.Fatalf("range over a short block = %v, want ErrFormat", err)
	}
}
