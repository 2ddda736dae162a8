package object

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// Frames decoded together: a batch's packed bytes are fetched with one read
// and its frames decoded in parallel.
const (
	maxBatchFrames = 16
	maxBatchBytes  = 64 << 20
)

// newDecoder returns a zstd decoder for the frames of m: DecodeAll is safe
// for concurrent use, output is capped at the destination's capacity (so a
// corrupt frame cannot inflate beyond its recorded size), and windows are
// limited to what m's frames can need.
func newDecoder(m *Manifest) (*zstd.Decoder, error) {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(uint64(m.FrameSize)),
		zstd.WithDecoderMaxWindow(uint64(max(m.FrameSize, 8<<20))),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		return nil, fmt.Errorf("new zstd decoder: %w", err)
	}
	return d, nil
}

// decodeFrame decodes frame i of m from packed (exactly its bytes) into
// target (len(target) == frame size) and verifies its BLAKE3. On error
// target holds unverified bytes and must not be used.
func decodeFrame(dec *zstd.Decoder, m *Manifest, i int, packed, target []byte) error {
	f := &m.Frames[i]
	if int64(len(packed)) != f.PackedSize || int64(len(target)) != f.Size {
		return fmt.Errorf("object: internal error: frame %d buffers of %d/%d bytes, want %d/%d",
			i, len(packed), len(target), f.PackedSize, f.Size)
	}
	// target's capacity must end where the frame does: the decoder may use
	// all of it, and the next frame may be decoded there concurrently.
	target = target[:len(target):len(target)]
	out, err := dec.DecodeAll(packed, target[:0])
	if err != nil {
		return &CorruptError{Frame: i, Reason: fmt.Sprintf("decode: %v", err)}
	}
	if len(out) != len(target) {
		return &CorruptError{Frame: i, Reason: fmt.Sprintf("decodes to %d bytes, want %d", len(out), len(target))}
	}
	if len(out) > 0 && &out[0] != &target[0] {
		copy(target, out)
	}
	sum := blake3.Sum256(target)
	if hex.EncodeToString(sum[:]) != f.BLAKE3 {
		return &CorruptError{Frame: i, Reason: "blake3 mismatch"}
	}
	return nil
}

// decodeBatch decodes frames first..first+len(targets)-1, whose packed bytes
// are concatenated in packed, into targets, in parallel. It returns the
// first failing frame's index and error, or -1 and nil.
func decodeBatch(dec *zstd.Decoder, m *Manifest, first int, packed []byte, targets [][]byte) (int, error) {
	base := m.Frames[first].PackedOffset
	part := func(k int) []byte {
		f := m.Frames[first+k]
		return packed[f.PackedOffset-base : f.PackedOffset-base+f.PackedSize]
	}
	if len(targets) == 1 {
		if err := decodeFrame(dec, m, first, part(0), targets[0]); err != nil {
			return first, err
		}
		return -1, nil
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for k := range targets {
		wg.Go(func() { errs[k] = decodeFrame(dec, m, first+k, part(k), targets[k]) })
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			return first + k, err
		}
	}
	return -1, nil
}

// batchEnd returns the last frame of a batch starting at first, ending at
// last at the latest.
func batchEnd(m *Manifest, first, last int) int {
	j := first
	size := m.Frames[first].PackedSize
	for j < last && j-first+1 < maxBatchFrames && size+m.Frames[j+1].PackedSize <= maxBatchBytes {
		j++
		size += m.Frames[j].PackedSize
	}
	return j
}

// Reader reads ranges of an object's content, decompressing only the frames
// needed and verifying each frame's BLAKE3 before any of its bytes are
// returned. It is safe for concurrent use.
type Reader struct {
	ra io.ReaderAt
	m  Manifest

	init    sync.Once
	initErr error
	dec     *zstd.Decoder

	mu struct {
		sync.Mutex
		// idx is the frame held verified in data, or -1. Protected by mu.
		idx   int
		data  []byte
		spare []byte // a free buffer to decode the next edge frame into
	}
}

// NewReader returns a Reader of the object in ra described by m. An invalid
// manifest makes every ReadAt fail with an error wrapping ErrInvalidManifest.
func NewReader(ra io.ReaderAt, m Manifest) *Reader {
	r := &Reader{ra: ra, m: m}
	r.mu.idx = -1
	return r
}

// Size returns the uncompressed size of the object.
func (r *Reader) Size() int64 { return r.m.Size }

// Manifest returns the manifest r reads by.
func (r *Reader) Manifest() Manifest { return r.m }

func (r *Reader) setup() error {
	r.init.Do(func() {
		if err := r.m.Validate(); err != nil {
			r.initErr = err
			return
		}
		r.dec, r.initErr = newDecoder(&r.m)
	})
	return r.initErr
}

// ReadAt reads len(p) bytes of content at off, as io.ReaderAt. Bytes are
// returned only from frames whose BLAKE3 matched; a mismatch, a frame that
// does not decode or a truncated object gives an error wrapping ErrCorrupt
// that names the frame, with n counting the verified bytes before it.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("object: read at negative offset %d", off)
	}
	if err := r.setup(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= r.m.Size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), r.m.Size-off)
	end := off + want
	first, last, _, _ := r.m.FrameSpan(off, want)
	m := &r.m
	// done returns how many bytes of p are filled once frames before i are.
	done := func(i int) int { return int(max(m.Frames[i].Offset-off, 0)) }

	for i := first; i <= last; {
		if r.copyCached(i, p, off) {
			i++
			continue
		}
		j := batchEnd(m, i, last)
		for k := i + 1; k <= j; k++ {
			if r.isCached(k) {
				j = k - 1
				break
			}
		}
		fi, fj := m.Frames[i], m.Frames[j]
		pb := getPacked(int(fj.PackedOffset + fj.PackedSize - fi.PackedOffset))
		packed := *pb
		got, rerr := r.ra.ReadAt(packed, fi.PackedOffset)
		if got < len(packed) {
			if rerr == nil || errors.Is(rerr, io.EOF) {
				rerr = io.ErrUnexpectedEOF
			}
			// Decode the frames that arrived whole; fail on the first that
			// did not (k <= j: frame j is incomplete).
			k := i
			for m.Frames[k].PackedOffset+m.Frames[k].PackedSize-fi.PackedOffset <= int64(got) {
				k++
			}
			var ferr error
			if errors.Is(rerr, io.ErrUnexpectedEOF) {
				ferr = &CorruptError{Frame: k, Reason: fmt.Sprintf("truncated: object ends inside the frame (read %d of %d bytes at %d)",
					got, len(packed), fi.PackedOffset)}
			} else {
				ferr = fmt.Errorf("read frame %d of object: %w", k, rerr)
			}
			if k > i {
				fk := m.Frames[k-1]
				if bad, err := r.decodeInto(i, k-1, packed[:fk.PackedOffset+fk.PackedSize-fi.PackedOffset], p, off, end); err != nil {
					packedPool.Put(pb)
					return done(bad), err
				}
			}
			packedPool.Put(pb)
			return done(k), ferr
		}
		bad, err := r.decodeInto(i, j, packed, p, off, end)
		packedPool.Put(pb) // decodeInto keeps no reference to packed
		if err != nil {
			return done(bad), err
		}
		i = j + 1
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return len(p), nil
}

// packedPool holds buffers for packed frames (up to maxBatchBytes): a
// recall reads a GiB in 4 MiB calls, and a fresh buffer per call cost ~10 %
// of its CPU in allocation and zeroing.
var packedPool sync.Pool

// getPacked returns a buffer of n bytes from packedPool.
func getPacked(n int) *[]byte {
	if b, ok := packedPool.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

// decodeInto decodes frames i..j from packed and copies their part of
// [off, end) into p. Frames wholly inside the range are decoded straight
// into p; edge frames go through a buffer and are kept as the cached frame.
func (r *Reader) decodeInto(i, j int, packed, p []byte, off, end int64) (int, error) {
	m := &r.m
	targets := make([][]byte, j-i+1)
	edge := make([]bool, j-i+1)
	for k := range targets {
		f := m.Frames[i+k]
		if f.Offset >= off && f.Offset+f.Size <= end {
			targets[k] = p[f.Offset-off : f.Offset-off+f.Size : f.Offset-off+f.Size]
			continue
		}
		edge[k] = true
		targets[k] = r.scratch(int(f.Size))
	}
	bad, err := decodeBatch(r.dec, m, i, packed, targets)
	for k, t := range targets {
		if !edge[k] {
			continue
		}
		if err != nil && i+k >= bad {
			r.putSpare(t)
			continue
		}
		f := m.Frames[i+k]
		lo, hi := max(off, f.Offset), min(end, f.Offset+f.Size)
		copy(p[lo-off:hi-off], t[lo-f.Offset:hi-f.Offset])
		r.setCached(i+k, t)
	}
	return bad, err
}

func (r *Reader) isCached(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.idx == i
}

// copyCached copies frame i's part of the read into p if it is cached.
func (r *Reader) copyCached(i int, p []byte, off int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.idx != i {
		return false
	}
	f := r.m.Frames[i]
	end := off + int64(len(p))
	lo, hi := max(off, f.Offset), min(end, f.Offset+f.Size)
	copy(p[lo-off:hi-off], r.mu.data[lo-f.Offset:hi-f.Offset])
	return true
}

func (r *Reader) scratch(n int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b := r.mu.spare; cap(b) >= n {
		r.mu.spare = nil
		return b[:n]
	}
	return make([]byte, n)
}

func (r *Reader) putSpare(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.spare = b
}

// setCached keeps the verified frame i in data.
func (r *Reader) setCached(i int, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.data != nil {
		r.mu.spare = r.mu.data
	}
	r.mu.idx, r.mu.data = i, data
}

// DecodeFrames decodes the frames first, first+1, … whose packed bytes are
// concatenated in packed (as fetched from the object range FrameSpan
// returned), verifies each, and returns their content. packed must hold
// whole frames; a short or misaligned range wraps ErrCorrupt.
func DecodeFrames(m Manifest, first int, packed []byte) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if len(packed) == 0 {
		return []byte{}, nil
	}
	if first < 0 || first >= len(m.Frames) {
		return nil, fmt.Errorf("object: frame %d out of range [0, %d)", first, len(m.Frames))
	}
	base := m.Frames[first].PackedOffset
	last := first
	for {
		f := m.Frames[last]
		pend := f.PackedOffset + f.PackedSize - base
		if pend > int64(len(packed)) {
			return nil, &CorruptError{Frame: last, Reason: fmt.Sprintf("truncated: %d packed bytes end inside the frame", len(packed))}
		}
		if pend == int64(len(packed)) {
			break
		}
		if last+1 == len(m.Frames) {
			return nil, &CorruptError{Frame: -1, Reason: fmt.Sprintf("%d packed bytes run past the last frame", len(packed))}
		}
		last++
	}
	dec, err := newDecoder(&m)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	ff, lf := m.Frames[first], m.Frames[last]
	out := make([]byte, lf.Offset+lf.Size-ff.Offset)
	for i := first; i <= last; {
		j := batchEnd(&m, i, last)
		targets := make([][]byte, j-i+1)
		for k := range targets {
			f := m.Frames[i+k]
			targets[k] = out[f.Offset-ff.Offset : f.Offset-ff.Offset+f.Size : f.Offset-ff.Offset+f.Size]
		}
		fi, fj := m.Frames[i], m.Frames[j]
		if _, err := decodeBatch(dec, &m, i, packed[fi.PackedOffset-base:fj.PackedOffset+fj.PackedSize-base], targets); err != nil {
			return nil, err
		}
		i = j + 1
	}
	return out, nil
}

// Verify reads a whole object from r and checks it against m: every frame
// decodes to its recorded size and BLAKE3, the content hashes to the object
// id, the seek table is the one m implies, nothing follows it, and the
// object's bytes hash to packed_sum. Corruption wraps ErrCorrupt; read
// errors are returned wrapped.
func Verify(r io.Reader, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	dec, err := newDecoder(&m)
	if err != nil {
		return err
	}
	defer dec.Close()
	whole, packedSum := blake3.New(), blake3.New()
	// Double buffers: batch k is hashed (in order, one goroutine) while
	// batch k+1 is read and decoded (in parallel).
	var packed, out [2][]byte
	var hashing sync.WaitGroup
	defer hashing.Wait()
	readExact := func(buf []byte, frame int, what string) error {
		n, err := io.ReadFull(r, buf)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return &CorruptError{Frame: frame, Reason: fmt.Sprintf("truncated: %s ends after %d of %d bytes", what, n, len(buf))}
		default:
			return fmt.Errorf("verify: read %s: %w", what, err)
		}
	}
	last := len(m.Frames) - 1
	for i, b := 0, 0; i <= last; b ^= 1 {
		j := batchEnd(&m, i, last)
		fi, fj := m.Frames[i], m.Frames[j]
		pk := grow(packed[b], int(fj.PackedOffset+fj.PackedSize-fi.PackedOffset))
		ok := grow(out[b], int(fj.Offset+fj.Size-fi.Offset))
		packed[b], out[b] = pk, ok
		// Read frame by frame so a truncation names its frame.
		for k := i; k <= j; k++ {
			f := m.Frames[k]
			if err := readExact(pk[f.PackedOffset-fi.PackedOffset:f.PackedOffset-fi.PackedOffset+f.PackedSize], k, fmt.Sprintf("frame %d", k)); err != nil {
				return err
			}
		}
		targets := make([][]byte, j-i+1)
		for k := range targets {
			f := m.Frames[i+k]
			targets[k] = ok[f.Offset-fi.Offset : f.Offset-fi.Offset+f.Size : f.Offset-fi.Offset+f.Size]
		}
		if _, err := decodeBatch(dec, &m, i, pk, targets); err != nil {
			return err
		}
		hashing.Wait() // the previous batch is hashed; its buffers are free
		hashing.Go(func() {
			packedSum.Write(pk)
			whole.Write(ok)
		})
		i = j + 1
	}
	hashing.Wait()
	want := appendSeekTable(nil, m.Frames)
	got := make([]byte, len(want))
	if err := readExact(got, -1, "seek table"); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return &CorruptError{Frame: -1, Reason: "seek table differs from the manifest"}
	}
	packedSum.Write(got)
	var one [1]byte
	if n, err := io.ReadFull(r, one[:]); n > 0 {
		return &CorruptError{Frame: -1, Reason: "bytes after the seek table"}
	} else if !errors.Is(err, io.EOF) {
		return fmt.Errorf("verify: read past seek table: %w", err)
	}
	if hex.EncodeToString(whole.Sum(nil)) != m.ObjectID {
		return &CorruptError{Frame: -1, Reason: "content blake3 differs from object_id"}
	}
	if hex.EncodeToString(packedSum.Sum(nil)) != m.PackedSum {
		return &CorruptError{Frame: -1, Reason: "packed blake3 differs from packed_sum"}
	}
	return nil
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

var _ io.ReaderAt = (*Reader)(nil)
