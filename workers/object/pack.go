package object

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// Incompressible-data detection: before compressing a frame, a sample of
// sampleChunks pieces of sampleChunk bytes spread over the frame is
// compressed at the fastest level; if that saves less than 3 %, the frame is
// stored raw. Frames too small to sample are compressed and then stored raw
// if compression did not make them smaller.
const (
	sampleChunk  = 8 << 10
	sampleChunks = 4
	minBufSize   = 64 << 10 // first read buffer; grows by doubling up to FrameSize
)

// Pack reads r to EOF and writes it to w as a seekable zstd object, and
// returns its manifest (without a File section). Up to opts.Concurrency
// frames are compressed in parallel; at most Concurrency+2 frames are held
// in memory. On error, w may hold a partial object: callers write to a
// temporary file and discard it. ctx cancels between frames.
func Pack(ctx context.Context, r io.Reader, w io.Writer, opts Options) (Manifest, error) {
	p, err := NewPacker(opts)
	if err != nil {
		return Manifest{}, err
	}
	return p.Pack(ctx, r, w)
}

// Packer packs objects with fixed options and keeps its encoders and buffers
// between calls, which matters for many small files. It is safe for
// concurrent use; each call has its own bound of Concurrency+2 frames.
type Packer struct {
	opts    Options
	workers sync.Pool // of *worker: idle encoders
	slots   sync.Pool // of *slot: frame buffers
	stats   packStats
}

// packStats counts how frames were packed (for tests and benchmarks).
type packStats struct {
	sampledRaw  atomic.Int64 // stored raw on the sample's verdict, never fully compressed
	compressed  atomic.Int64 // compressed and kept
	fallbackRaw atomic.Int64 // compressed, found no smaller, stored raw
}

// NewPacker returns a Packer for opts (zero fields take their defaults).
func NewPacker(opts Options) (*Packer, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Packer{opts: opts}, nil
}

// Options returns the options in force (defaults filled in).
func (p *Packer) Options() Options { return p.opts }

// slot is one frame in flight: read, then compressed, then written.
type slot struct {
	seq int
	src []byte // len(src) is the buffer's capacity; src[:n] is the frame
	n   int
	dst []byte // the packed frame
	sum [32]byte
	raw bool
}

// worker owns the encoders of one compressing goroutine.
type worker struct {
	stats  *packStats
	enc    *zstd.Encoder // at the configured level
	fast   *zstd.Encoder // fastest level, for the incompressibility sample
	sample []byte
	out    []byte
}

func (p *Packer) getWorker() (*worker, error) {
	if w, ok := p.workers.Get().(*worker); ok {
		return w, nil
	}
	common := []zstd.EOption{
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true),
		zstd.WithSingleSegment(true),
	}
	enc, err := zstd.NewWriter(nil, append(common, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(p.opts.Level)))...)
	if err != nil {
		return nil, fmt.Errorf("new zstd encoder: %w", err)
	}
	fast, err := zstd.NewWriter(nil, append(common, zstd.WithEncoderLevel(zstd.SpeedFastest))...)
	if err != nil {
		return nil, fmt.Errorf("new zstd encoder: %w", err)
	}
	return &worker{stats: &p.stats, enc: enc, fast: fast}, nil
}

// pack hashes and compresses s.src[:s.n] into s.dst.
func (wk *worker) pack(s *slot) {
	src := s.src[:s.n]
	s.sum = blake3.Sum256(src)
	if wk.incompressible(src) {
		wk.stats.sampledRaw.Add(1)
	} else {
		s.dst = wk.enc.EncodeAll(src, s.dst[:0])
		if len(s.dst) < rawFrameSize(len(src)) {
			wk.stats.compressed.Add(1)
			s.raw = false
			return
		}
		wk.stats.fallbackRaw.Add(1)
	}
	s.dst = appendRawFrame(s.dst[:0], src)
	s.raw = true
}

// byteEntropy is the Shannon entropy of b's byte distribution, in bits
// per byte (8 for uniformly random bytes).
func byteEntropy(b []byte) float64 {
	var hist [256]int
	for _, c := range b {
		hist[c]++
	}
	n := float64(len(b))
	h := 0.0
	for _, k := range hist {
		if k > 0 {
			p := float64(k) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}

// incompressible reports whether a sample of src compresses by less than 3 %
// at the fastest level. It returns false for frames too small to sample.
func (wk *worker) incompressible(src []byte) bool {
	if len(src) < 2*sampleChunks*sampleChunk {
		return false
	}
	step := len(src) / sampleChunks
	wk.sample = wk.sample[:0]
	for i := range sampleChunks {
		wk.sample = append(wk.sample, src[i*step:i*step+sampleChunk]...)
	}
	// Bytes that are far from uniform always compress (entropy coding
	// alone gains), even when the fast encoder finds no match in a small
	// sample (it stores, say, a column of numbers raw): only a sample whose
	// byte entropy is near 8 bits is tried with the encoder.
	if byteEntropy(wk.sample) < 7.5 {
		return false
	}
	wk.out = wk.fast.EncodeAll(wk.sample, wk.out[:0])
	return len(wk.out)*100 >= len(wk.sample)*97
}

func (p *Packer) getSlot(hint int) *slot {
	s, ok := p.slots.Get().(*slot)
	if !ok {
		s = &slot{}
	}
	if len(s.src) < hint {
		s.src = make([]byte, hint)
	}
	return s
}

// fill reads up to size bytes of r into s, growing s.src as needed. It
// reports eof when r ended before size bytes.
func fill(r io.Reader, s *slot, size int) (eof bool, err error) {
	s.n = 0
	for s.n < size {
		if s.n == len(s.src) {
			nb := make([]byte, min(max(2*len(s.src), minBufSize), size))
			copy(nb, s.src[:s.n])
			s.src = nb
		}
		n, err := r.Read(s.src[s.n:min(len(s.src), size)])
		s.n += n
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
	return false, nil
}

// Pack is the package-level Pack with p's options and reused encoders.
func (p *Packer) Pack(ctx context.Context, r io.Reader, w io.Writer) (Manifest, error) {
	if err := ctx.Err(); err != nil {
		return Manifest{}, fmt.Errorf("pack: %w", err)
	}
	fs := p.opts.FrameSize
	inflight := p.opts.Concurrency + 2
	tokens := make(chan struct{}, inflight) // one per slot in flight
	jobs := make(chan *slot)
	results := make(chan *slot, inflight) // never blocks a worker
	whole := blake3.New()
	packedSum := blake3.New()
	var size int64

	release := func(s *slot) {
		s.n = 0
		p.slots.Put(s)
		<-tokens
	}

	g, gctx := errgroup.WithContext(ctx)

	// Reader: reads frames in order, hashes the whole content, hands frames
	// to the workers. It always closes jobs.
	g.Go(func() error {
		defer close(jobs)
		hint := 0
		for seq := 0; ; seq++ {
			select {
			case tokens <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			s := p.getSlot(hint)
			eof, err := fill(r, s, fs)
			if err != nil {
				release(s)
				return fmt.Errorf("read input: %w", err)
			}
			if s.n == 0 {
				release(s)
				return nil
			}
			if seq >= MaxFrames {
				release(s)
				return fmt.Errorf("input larger than %d frames of %d bytes", MaxFrames, fs)
			}
			whole.Write(s.src[:s.n])
			size += int64(s.n)
			s.seq = seq
			select {
			case jobs <- s:
			case <-gctx.Done():
				release(s)
				return gctx.Err()
			}
			if eof {
				return nil
			}
			hint = fs // the input is at least one frame long: allocate whole frames
		}
	})

	// Workers: compress frames; at most Concurrency, each with its own
	// encoders, started all at once but creating encoders only when a frame
	// arrives.
	var wg sync.WaitGroup
	var workerErr error
	var workerErrOnce sync.Once
	for range p.opts.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var wk *worker
			for s := range jobs {
				if wk == nil {
					var err error
					if wk, err = p.getWorker(); err != nil {
						workerErrOnce.Do(func() { workerErr = err })
						results <- nil
						continue
					}
				}
				wk.pack(s)
				results <- s
			}
			if wk != nil {
				p.workers.Put(wk)
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	// Writer: writes frames in order, hashes the packed bytes.
	var frames []Frame
	g.Go(func() error {
		pending := make(map[int]*slot, inflight)
		var off, poff int64
		for s := range results {
			if s == nil {
				return workerErr
			}
			pending[s.seq] = s
			for {
				s, ok := pending[len(frames)]
				if !ok {
					break
				}
				delete(pending, s.seq)
				if err := gctx.Err(); err != nil {
					release(s)
					return err
				}
				if _, err := w.Write(s.dst); err != nil {
					release(s)
					return fmt.Errorf("write object: %w", err)
				}
				packedSum.Write(s.dst)
				frames = append(frames, Frame{
					Offset:       off,
					Size:         int64(s.n),
					PackedOffset: poff,
					PackedSize:   int64(len(s.dst)),
					BLAKE3:       hex.EncodeToString(s.sum[:]),
				})
				off += int64(s.n)
				poff += int64(len(s.dst))
				release(s)
			}
		}
		return nil
	})

	err := g.Wait()
	// Drain what the writer left if it stopped early, so buffers go back.
	for s := range results {
		if s != nil {
			release(s)
		}
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("pack: %w", err)
	}

	table := appendSeekTable(nil, frames)
	if _, err := w.Write(table); err != nil {
		return Manifest{}, fmt.Errorf("pack: write seek table: %w", err)
	}
	packedSum.Write(table)
	if frames == nil {
		frames = []Frame{}
	}
	var last int64
	if n := len(frames); n > 0 {
		last = frames[n-1].PackedOffset + frames[n-1].PackedSize
	}
	m := Manifest{
		Format:     FormatVersion,
		ObjectID:   hex.EncodeToString(whole.Sum(nil)),
		Size:       size,
		PackedSize: last + int64(len(table)),
		PackedSum:  hex.EncodeToString(packedSum.Sum(nil)),
		FrameSize:  int64(fs),
		Level:      p.opts.Level,
		Frames:     frames,
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("pack: internal error: %w", err)
	}
	return m, nil
}
