package object_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"testing/iotest"

	seekable "github.com/SaveTheRbtz/zstd-seekable-format-go/pkg"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/object/objecttest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

const fs = 64 << 10 // frame size used by most tests: small, so objects have many frames

func pack(t testing.TB, data []byte, opts object.Options) ([]byte, object.Manifest) {
	t.Helper()
	var buf bytes.Buffer
	m, err := object.Pack(context.Background(), bytes.NewReader(data), &buf, opts)
	if err != nil {
		t.Fatalf("Pack: %v", err)
	}
	return buf.Bytes(), m
}

func hexSum(b []byte) string {
	s := blake3.Sum256(b)
	return hex.EncodeToString(s[:])
}

func corruptFrame(t testing.TB, err error, frame int) {
	t.Helper()
	if !errors.Is(err, object.ErrCorrupt) {
		t.Fatalf("error %v does not wrap ErrCorrupt", err)
	}
	var ce *object.CorruptError
	if !errors.As(err, &ce) || ce.Frame != frame {
		t.Fatalf("error %v: want a CorruptError naming frame %d", err, frame)
	}
}

func TestRoundTrip(t *testing.T) {
	sizes := []int{0, 1, fs - 1, fs, fs + 1, 7*fs + 12345}
	kinds := map[string]func(int, uint64) []byte{"random": objecttest.Random, "text": objecttest.Text, "mixed": objecttest.Mixed}
	for kind, gen := range kinds {
		for _, size := range sizes {
			t.Run(fmt.Sprintf("%s/%d", kind, size), func(t *testing.T) {
				data := gen(size, uint64(size))
				packed, m := pack(t, data, object.Options{FrameSize: fs})
				if err := m.Validate(); err != nil {
					t.Fatal(err)
				}
				if m.ObjectID != hexSum(data) || m.PackedSum != hexSum(packed) {
					t.Fatalf("object_id/packed_sum do not match the bytes")
				}
				if m.Size != int64(size) || m.PackedSize != int64(len(packed)) || m.Level != 3 || m.FrameSize != fs {
					t.Fatalf("manifest size %d packed %d level %d frame %d; want %d %d 3 %d",
						m.Size, m.PackedSize, m.Level, m.FrameSize, size, len(packed), fs)
				}
				for i, f := range m.Frames {
					if f.BLAKE3 != hexSum(data[f.Offset:f.Offset+f.Size]) {
						t.Fatalf("frame %d hash wrong", i)
					}
				}
				// Manifest JSON round trip.
				js, err := m.Encode()
				if err != nil {
					t.Fatal(err)
				}
				m2, err := object.DecodeManifest(js)
				if err != nil || !reflect.DeepEqual(m, m2) {
					t.Fatalf("manifest JSON round trip: %v\n%+v\n%+v", err, m, m2)
				}
				// Whole read through every path.
				got := make([]byte, size)
				n, err := object.NewReader(bytes.NewReader(packed), m).ReadAt(got, 0)
				if n != size || (err != nil && err != io.EOF) || !bytes.Equal(got, data) {
					t.Fatalf("ReadAt: n=%d err=%v equal=%v", n, err, bytes.Equal(got, data))
				}
				first, _, poff, plen := m.FrameSpan(0, int64(size))
				dec, err := object.DecodeFrames(m, first, packed[poff:poff+plen])
				if err != nil || !bytes.Equal(dec, data) {
					t.Fatalf("DecodeFrames: %v", err)
				}
				if err := object.Verify(bytes.NewReader(packed), m); err != nil {
					t.Fatalf("Verify: %v", err)
				}
				st, err := object.ReadSeekTable(bytes.NewReader(packed), int64(len(packed)))
				if err != nil {
					t.Fatalf("ReadSeekTable: %v", err)
				}
				if err := m.CheckSeekTable(st); err != nil || st.Size() != int64(size) {
					t.Fatalf("seek table does not match manifest: %v (size %d)", err, st.Size())
				}
				// The klauspost stream decoder (a reader knowing nothing of
				// seek tables) restores the bytes too.
				zr, err := zstd.NewReader(bytes.NewReader(packed))
				if err != nil {
					t.Fatal(err)
				}
				defer zr.Close()
				plain, err := io.ReadAll(zr)
				if err != nil || !bytes.Equal(plain, data) {
					t.Fatalf("zstd stream decode: %v", err)
				}
			})
		}
	}
}

func TestDefaults(t *testing.T) {
	data := objecttest.Mixed(9<<20, 1)
	_, m := pack(t, data, object.Options{})
	if m.FrameSize != object.DefaultFrameSize || len(m.Frames) != 3 || m.Level != object.DefaultLevel {
		t.Fatalf("frame size %d, %d frames, level %d", m.FrameSize, len(m.Frames), m.Level)
	}
}

// slowReader returns reads of varying small sizes.
type choppyReader struct {
	r   io.Reader
	rnd *rand.Rand
}

func (c *choppyReader) Read(p []byte) (int, error) {
	n := 1 + c.rnd.IntN(min(len(p), 10000))
	return c.r.Read(p[:n])
}

func TestParallelMatchesSequential(t *testing.T) {
	data := objecttest.Mixed(40*fs+77, 2)
	seqPacked, seqM := pack(t, data, object.Options{FrameSize: fs, Concurrency: 1})
	for _, c := range []int{2, 3, 8} {
		parPacked, parM := pack(t, data, object.Options{FrameSize: fs, Concurrency: c})
		if !bytes.Equal(seqPacked, parPacked) || !reflect.DeepEqual(seqM, parM) {
			t.Fatalf("concurrency %d: output differs from sequential", c)
		}
	}
	var buf bytes.Buffer
	m, err := object.Pack(context.Background(), &choppyReader{bytes.NewReader(data), rand.New(rand.NewPCG(1, 2))}, &buf, object.Options{FrameSize: fs})
	if err != nil || !bytes.Equal(buf.Bytes(), seqPacked) || !reflect.DeepEqual(m, seqM) {
		t.Fatalf("short reads change the output: %v", err)
	}
	// A reusable Packer gives the same output on every call.
	p, err := object.NewPacker(object.Options{FrameSize: fs})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		buf.Reset()
		if _, err := p.Pack(context.Background(), iotest.HalfReader(bytes.NewReader(data)), &buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), seqPacked) {
			t.Fatal("Packer reuse changes the output")
		}
	}
}

func TestZstdCLI(t *testing.T) {
	zstdBin := stratatest.NeedTool(t, "zstd")
	dir := t.TempDir()
	cases := map[string][]byte{
		"empty":  nil,
		"one":    {42},
		"random": objecttest.Random(5*fs+3, 3),
		"text":   objecttest.Text(5*fs+3, 4),
		"mixed":  objecttest.Mixed(11*fs, 5),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			packed, _ := pack(t, data, object.Options{FrameSize: fs})
			p := filepath.Join(dir, name+".zst")
			if err := os.WriteFile(p, packed, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(zstdBin, "-dc", p).Output()
			if err != nil {
				t.Fatalf("zstd -dc: %v", err)
			}
			if !bytes.Equal(out, data) {
				t.Fatalf("zstd -dc restored %d bytes, want %d (equal=%v)", len(out), len(data), bytes.Equal(out, data))
			}
		})
	}
	// zstd -d notices a corrupt frame on its own (content checksum).
	data := objecttest.Mixed(4*fs, 6)
	packed, m := pack(t, data, object.Options{FrameSize: fs})
	for i, f := range m.Frames {
		bad := bytes.Clone(packed)
		bad[f.PackedOffset+f.PackedSize-6] ^= 0x55 // inside the last block's data
		p := filepath.Join(dir, fmt.Sprintf("bad%d.zst", i))
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(zstdBin, "-t", p).CombinedOutput(); err == nil {
			t.Fatalf("zstd -t accepted a corrupt frame %d: %s", i, out)
		}
	}
}

func TestSeekableGoReader(t *testing.T) {
	data := objecttest.Mixed(13*fs+999, 7)
	packed, _ := pack(t, data, object.Options{FrameSize: fs})
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	sr, err := seekable.NewReader(bytes.NewReader(packed), dec)
	if err != nil {
		t.Fatalf("seekable.NewReader: %v", err)
	}
	defer sr.Close()
	rnd := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		off := rnd.Int64N(int64(len(data)))
		n := 1 + rnd.IntN(3*fs)
		n = min(n, len(data)-int(off))
		got := make([]byte, n)
		if _, err := sr.ReadAt(got, off); err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
		}
		if !bytes.Equal(got, data[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d, %d) differs", n, off)
		}
	}
	for _, data := range [][]byte{nil, {1}} { // the empty object is the seek table alone
		packed, _ := pack(t, data, object.Options{FrameSize: fs})
		sr, err := seekable.NewReader(bytes.NewReader(packed), dec)
		if err != nil {
			t.Fatalf("seekable.NewReader of %d bytes: %v", len(data), err)
		}
		got, err := io.ReadAll(sr)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("seekable read of %d bytes: %v", len(data), err)
		}
	}
}

func TestReaderRandomRanges(t *testing.T) {
	data := objecttest.Mixed(37*fs+4321, 8)
	packed, m := pack(t, data, object.Options{FrameSize: fs})
	r := object.NewReader(bytes.NewReader(packed), m)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 9))
			for range 300 {
				off := rnd.Int64N(int64(len(data)) + 10)
				n := rnd.IntN(5 * fs)
				if rnd.IntN(4) == 0 {
					n = rnd.IntN(100)
				}
				got := make([]byte, n)
				k, err := r.ReadAt(got, off)
				wantN := max(0, min(n, len(data)-int(off)))
				switch {
				case k != wantN:
					errs <- fmt.Errorf("ReadAt(%d @%d) = %d bytes, want %d (%v)", n, off, k, wantN, err)
					return
				case k < n && err != io.EOF:
					errs <- fmt.Errorf("ReadAt(%d @%d) short without io.EOF: %v", n, off, err)
					return
				case k == n && err != nil:
					errs <- fmt.Errorf("ReadAt(%d @%d): %v", n, off, err)
					return
				case !bytes.Equal(got[:k], data[min(off, int64(len(data))):min(off, int64(len(data)))+int64(k)]):
					errs <- fmt.Errorf("ReadAt(%d @%d) returned wrong bytes", n, off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, err := r.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	// FrameSpan + DecodeFrames serve the same ranges.
	rnd := rand.New(rand.NewPCG(10, 10))
	for range 100 {
		off := rnd.Int64N(int64(len(data)))
		n := 1 + rnd.Int64N(4*fs)
		first, last, poff, plen := m.FrameSpan(off, n)
		got, err := object.DecodeFrames(m, first, packed[poff:poff+plen])
		if err != nil {
			t.Fatal(err)
		}
		start := m.Frames[first].Offset
		if end := m.Frames[last].Offset + m.Frames[last].Size; int64(len(got)) != end-start || !bytes.Equal(got, data[start:end]) {
			t.Fatalf("DecodeFrames(%d..%d) wrong", first, last)
		}
		if start > off || start+int64(len(got)) < min(off+n, int64(len(data))) {
			t.Fatalf("FrameSpan(%d, %d) = frames %d..%d do not cover the range", off, n, first, last)
		}
	}
}

func TestCorruptFrame(t *testing.T) {
	data := objecttest.Mixed(6*fs, 11) // frames 0-2 random (raw), 3-5 text (compressed)
	packed, m := pack(t, data, object.Options{FrameSize: fs})
	for _, frame := range []int{1, 4} {
		t.Run(fmt.Sprint(frame), func(t *testing.T) {
			f := m.Frames[frame]
			bad := bytes.Clone(packed)
			bad[f.PackedOffset+f.PackedSize/2] ^= 0x01
			r := object.NewReader(bytes.NewReader(bad), m)
			// The corrupt frame fails…
			_, err := r.ReadAt(make([]byte, 10), f.Offset+100)
			corruptFrame(t, err, frame)
			// …a range across it returns exactly the verified bytes before it…
			buf := make([]byte, 3*fs)
			n, err := r.ReadAt(buf, f.Offset-fs/2)
			corruptFrame(t, err, frame)
			if n != fs/2 || !bytes.Equal(buf[:n], data[f.Offset-fs/2:f.Offset]) {
				t.Fatalf("ReadAt across the corrupt frame returned %d bytes, want %d verified", n, fs/2)
			}
			// …and every other frame still reads.
			for i, g := range m.Frames {
				if i == frame {
					continue
				}
				got := make([]byte, g.Size)
				if _, err := r.ReadAt(got, g.Offset); err != nil || !bytes.Equal(got, data[g.Offset:g.Offset+g.Size]) {
					t.Fatalf("frame %d unreadable after corrupting frame %d: %v", i, frame, err)
				}
			}
			_, err = object.DecodeFrames(m, frame, bad[f.PackedOffset:f.PackedOffset+f.PackedSize])
			corruptFrame(t, err, frame)
			corruptFrame(t, object.Verify(bytes.NewReader(bad), m), frame)
		})
	}
	t.Run("manifest-hash", func(t *testing.T) {
		// The bytes decode fine but the recorded hash differs: still refused.
		m2 := m
		m2.Frames = append([]object.Frame(nil), m.Frames...)
		m2.Frames[2].BLAKE3 = hexSum([]byte("other"))
		_, err := object.NewReader(bytes.NewReader(packed), m2).ReadAt(make([]byte, 1), m2.Frames[2].Offset)
		corruptFrame(t, err, 2)
	})
	t.Run("seek-table", func(t *testing.T) {
		bad := bytes.Clone(packed)
		bad[len(bad)-16] ^= 0xFF // the last seek table entry's packed size
		corruptFrame(t, object.Verify(bytes.NewReader(bad), m), -1)
		if _, err := object.ReadSeekTable(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, object.ErrCorrupt) {
			t.Fatalf("ReadSeekTable of a damaged table: %v", err)
		}
	})
	t.Run("trailing", func(t *testing.T) {
		corruptFrame(t, object.Verify(bytes.NewReader(append(bytes.Clone(packed), 0)), m), -1)
	})
}

func TestTruncated(t *testing.T) {
	data := objecttest.Mixed(5*fs, 12)
	packed, m := pack(t, data, object.Options{FrameSize: fs})
	for _, cut := range []int64{0, 1, m.Frames[2].PackedOffset + 5, m.Frames[4].PackedOffset + m.Frames[4].PackedSize, m.PackedSize - 1} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			short := packed[:cut]
			if err := object.Verify(bytes.NewReader(short), m); !errors.Is(err, object.ErrCorrupt) {
				t.Fatalf("Verify of a truncated object: %v", err)
			}
			if _, err := object.ReadSeekTable(bytes.NewReader(short), cut); !errors.Is(err, object.ErrCorrupt) {
				t.Fatalf("ReadSeekTable of a truncated object: %v", err)
			}
			r := object.NewReader(bytes.NewReader(short), m)
			got := make([]byte, m.Size)
			n, err := r.ReadAt(got, 0)
			if cut >= m.Frames[4].PackedOffset+m.Frames[4].PackedSize {
				// All frames are present; only the seek table is cut.
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("frames intact but ReadAt failed: %v", err)
				}
				return
			}
			if !errors.Is(err, object.ErrCorrupt) {
				t.Fatalf("ReadAt of a truncated object: %v", err)
			}
			if !bytes.Equal(got[:n], data[:n]) {
				t.Fatal("ReadAt returned wrong bytes before the truncation")
			}
			var ce *object.CorruptError
			errors.As(err, &ce)
			if want := n / fs; ce.Frame != want {
				t.Fatalf("truncation names frame %d, want %d", ce.Frame, want)
			}
		})
	}
}

func TestIncompressibleFramesAreRaw(t *testing.T) {
	data := objecttest.Mixed(8<<20, 13)
	packed, m := pack(t, data, object.Options{FrameSize: 1 << 20})
	for i, f := range m.Frames {
		isRaw := f.PackedSize > f.Size // raw frames carry a few bytes of headers
		if wantRaw := i < 4; isRaw != wantRaw {
			t.Fatalf("frame %d: packed %d of %d bytes; want raw=%v", i, f.PackedSize, f.Size, wantRaw)
		}
		if isRaw && f.PackedSize > f.Size+64 {
			t.Fatalf("raw frame %d has %d bytes of overhead", i, f.PackedSize-f.Size)
		}
		if !isRaw && f.PackedSize > f.Size/2 {
			t.Fatalf("text frame %d compressed only to %d of %d", i, f.PackedSize, f.Size)
		}
	}
	if err := object.Verify(bytes.NewReader(packed), m); err != nil {
		t.Fatal(err)
	}
}

func TestPackErrors(t *testing.T) {
	ctx := context.Background()
	data := objecttest.Random(10*fs, 14)
	boom := errors.New("boom")
	if _, err := object.Pack(ctx, iotest.ErrReader(boom), io.Discard, object.Options{}); !errors.Is(err, boom) {
		t.Fatalf("reader error: %v", err)
	}
	if _, err := object.Pack(ctx, io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), io.Discard, object.Options{FrameSize: fs}); !errors.Is(err, boom) {
		t.Fatalf("reader error after data: %v", err)
	}
	if _, err := object.Pack(ctx, bytes.NewReader(data), &failWriter{after: 3, err: boom}, object.Options{FrameSize: fs}); !errors.Is(err, boom) {
		t.Fatalf("writer error: %v", err)
	}
	if _, err := object.Pack(ctx, bytes.NewReader(nil), &failWriter{err: boom}, object.Options{}); !errors.Is(err, boom) {
		t.Fatalf("writer error on the seek table: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := object.Pack(cctx, bytes.NewReader(data), io.Discard, object.Options{FrameSize: fs}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled context: %v", err)
	}
	for _, o := range []object.Options{{FrameSize: 100}, {FrameSize: object.MaxFrameSize + 1}, {Level: 23}, {Level: -1}, {Concurrency: -2}} {
		var oe *pipeline.ConfigError
		if _, err := object.Pack(ctx, bytes.NewReader(data), io.Discard, o); !errors.As(err, &oe) {
			t.Fatalf("options %+v: %v", o, err)
		}
	}
}

type failWriter struct {
	after int
	err   error
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after == 0 {
		return 0, w.err
	}
	w.after--
	return len(p), nil
}

// countingReader counts what Pack has read; TestMemoryBound checks on every
// frame written that Pack never got more than Concurrency+2 frames ahead.
type countingReader struct {
	r    io.Reader
	read int64
	mu   sync.Mutex
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mu.Lock()
	c.read += int64(n)
	c.mu.Unlock()
	return n, err
}

func TestMemoryBound(t *testing.T) {
	const frames, conc = 200, 2
	src := &countingReader{r: objecttest.Reader(frames*fs, fs, 15)}
	written := 0
	maxAhead := int64(0)
	w := writerFunc(func(p []byte) (int, error) {
		written++
		src.mu.Lock()
		ahead := src.read/fs - int64(written)
		src.mu.Unlock()
		maxAhead = max(maxAhead, ahead)
		return len(p), nil
	})
	m, err := object.Pack(context.Background(), src, w, object.Options{FrameSize: fs, Concurrency: conc})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Frames) != frames {
		t.Fatalf("%d frames", len(m.Frames))
	}
	if maxAhead > conc+2 {
		t.Fatalf("Pack read %d frames ahead of what it wrote; bound is %d", maxAhead, conc+2)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestManifestValidate(t *testing.T) {
	data := objecttest.Text(3*fs+5, 16)
	_, good := pack(t, data, object.Options{FrameSize: fs})
	good.File = &object.FileInfo{Path: "/hot/a", Size: good.Size}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	mutations := map[string]func(m *object.Manifest){
		"format":          func(m *object.Manifest) { m.Format = 2 },
		"object_id":       func(m *object.Manifest) { m.ObjectID = "ABC" },
		"object_id upper": func(m *object.Manifest) { m.ObjectID = string(bytes.ToUpper([]byte(m.ObjectID))) },
		"packed_sum":      func(m *object.Manifest) { m.PackedSum = "" },
		"size":            func(m *object.Manifest) { m.Size++ },
		"packed_size":     func(m *object.Manifest) { m.PackedSize-- },
		"frame_size":      func(m *object.Manifest) { m.FrameSize = 0 },
		"level":           func(m *object.Manifest) { m.Level = 99 },
		"missing frame":   func(m *object.Manifest) { m.Frames = m.Frames[:len(m.Frames)-1] },
		"offset":          func(m *object.Manifest) { m.Frames[1].Offset++ },
		"packed_offset":   func(m *object.Manifest) { m.Frames[2].PackedOffset-- },
		"short middle":    func(m *object.Manifest) { m.Frames[1].Size--; m.Frames[2].Offset--; m.Frames[3].Offset-- },
		"frame hash":      func(m *object.Manifest) { m.Frames[0].BLAKE3 = "x" },
		"zero packed":     func(m *object.Manifest) { m.Frames[3].PackedSize = 0 },
		"file path":       func(m *object.Manifest) { m.File.Path = "rel/a" },
		"file size":       func(m *object.Manifest) { m.File.Size = 1 },
	}
	for name, mut := range mutations {
		t.Run(name, func(t *testing.T) {
			m := good
			m.Frames = append([]object.Frame(nil), good.Frames...)
			f := *good.File
			m.File = &f
			mut(&m)
			if err := m.Validate(); !errors.Is(err, object.ErrInvalidManifest) {
				t.Fatalf("Validate = %v, want ErrInvalidManifest", err)
			}
			if _, err := object.NewReader(bytes.NewReader(nil), m).ReadAt(make([]byte, 1), 0); !errors.Is(err, object.ErrInvalidManifest) {
				t.Fatalf("ReadAt with an invalid manifest: %v", err)
			}
		})
	}
	if _, err := object.DecodeManifest([]byte("{")); !errors.Is(err, object.ErrInvalidManifest) {
		t.Fatalf("DecodeManifest of bad JSON: %v", err)
	}
}

func TestFrameSpan(t *testing.T) {
	data := objecttest.Text(4*fs+10, 17) // frames 0..4, last of 10 bytes
	_, m := pack(t, data, object.Options{FrameSize: fs})
	f := m.Frames
	end := func(i int) int64 { return f[i].PackedOffset + f[i].PackedSize }
	cases := []struct {
		off, n      int64
		first, last int
	}{
		{0, 1, 0, 0},
		{0, fs, 0, 0},
		{0, fs + 1, 0, 1},
		{fs - 1, 2, 0, 1},
		{fs, fs, 1, 1},
		{3 * fs, 1 << 40, 3, 4},
		{4*fs + 9, 1, 4, 4},
		{-5, 10, 0, 0},
		{0, 4*fs + 10, 0, 4},
	}
	for _, c := range cases {
		first, last, poff, plen := m.FrameSpan(c.off, c.n)
		if first != c.first || last != c.last || poff != f[c.first].PackedOffset || plen != end(c.last)-poff {
			t.Errorf("FrameSpan(%d, %d) = %d, %d, %d, %d; want frames %d..%d", c.off, c.n, first, last, poff, plen, c.first, c.last)
		}
	}
	for _, c := range [][2]int64{{4*fs + 10, 1}, {0, 0}, {5, -1}, {1 << 50, 1 << 62}, {-10, 5}} {
		if first, last, _, plen := m.FrameSpan(c[0], c[1]); last >= first || plen != 0 {
			t.Errorf("FrameSpan(%d, %d) = %d..%d len %d, want empty", c[0], c[1], first, last, plen)
		}
	}
	// DecodeFrames refuses ranges that do not hold whole frames.
	if _, err := object.DecodeFrames(m, 0, make([]byte, f[0].PackedSize+1)); !errors.Is(err, object.ErrCorrupt) {
		t.Fatalf("misaligned range: %v", err)
	}
	if _, err := object.DecodeFrames(m, 5, make([]byte, 1)); err == nil {
		t.Fatal("frame out of range accepted")
	}
}

func BenchmarkPack(b *testing.B) {
	for _, kind := range []string{"random", "text", "mixed"} {
		var data []byte
		switch kind {
		case "random":
			data = objecttest.Random(64<<20, 1)
		case "text":
			data = objecttest.Text(64<<20, 1)
		default:
			data = objecttest.Mixed(64<<20, 1)
		}
		b.Run(kind, func(b *testing.B) {
			p, err := object.NewPacker(object.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			var packed int64
			for b.Loop() {
				m, err := p.Pack(context.Background(), bytes.NewReader(data), io.Discard)
				if err != nil {
					b.Fatal(err)
				}
				packed = m.PackedSize
			}
			b.ReportMetric(float64(packed)/float64(len(data)), "ratio")
		})
	}
}

func BenchmarkReadAt(b *testing.B) {
	data := objecttest.Mixed(64<<20, 2)
	packed, m := pack(b, data, object.Options{})
	r := object.NewReader(bytes.NewReader(packed), m)
	buf := make([]byte, 16<<20)
	b.SetBytes(int64(len(buf)))
	for i := 0; b.Loop(); i++ {
		if _, err := r.ReadAt(buf, int64(i%4)*int64(len(buf))); err != nil {
			b.Fatal(err)
		}
	}
}

// TestEveryByteFlip flips each bit position of a small object in turn:
// Verify must refuse every damaged copy (packed_sum covers every byte), and
// ReadAt must return either the original bytes or ErrCorrupt — never other
// bytes. (Some flips in a compressed block decode to the same content; ReadAt
// may then serve it, since it hashes right.)
func TestEveryByteFlip(t *testing.T) {
	data := append(objecttest.Text(2500, 18), objecttest.Random(2100, 18)...)
	packed, m := pack(t, data, object.Options{FrameSize: 1024})
	got := make([]byte, len(data))
	for i := range packed {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(packed)
			bad[i] ^= bit
			if err := object.Verify(bytes.NewReader(bad), m); !errors.Is(err, object.ErrCorrupt) {
				t.Fatalf("flip %#x at %d: Verify = %v", bit, i, err)
			}
			n, err := object.NewReader(bytes.NewReader(bad), m).ReadAt(got, 0)
			if err != nil && !errors.Is(err, object.ErrCorrupt) {
				t.Fatalf("flip %#x at %d: ReadAt error %v does not wrap ErrCorrupt", bit, i, err)
			}
			if !bytes.Equal(got[:n], data[:n]) {
				t.Fatalf("flip %#x at %d: ReadAt returned wrong bytes", bit, i)
			}
			if err == nil && n != len(data) {
				t.Fatalf("flip %#x at %d: ReadAt returned %d bytes and no error", bit, i, n)
			}
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	data := objecttest.Mixed(64<<20, 3)
	packed, m := pack(b, data, object.Options{})
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := object.Verify(bytes.NewReader(packed), m); err != nil {
			b.Fatal(err)
		}
	}
}
