package recall

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/tier"
)

// A stream decodes batches of at most streamBatchFrames frames and
// streamBatchBytes packed bytes, with one batch read ahead: memory stays
// within a few frames whatever the object's size.
const (
	streamBatchFrames = 8
	streamBatchBytes  = 16 << 20
)

// writeError is a failure of the caller's writer, not of a copy.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// WriteTo writes the whole content of objectID to w, in order, every frame
// verified before any of its bytes is written, and returns the tier that
// served the most bytes and the number of bytes written. When a copy fails
// midway, the rest comes from the next copy (a copy that fails after making
// progress is first resumed where it stopped, unless it is corrupt). At the
// end the content's BLAKE3 is checked against the object id.
//
// On error, w may have received a prefix of the content (verified frame by
// frame, but the whole is unconfirmed): callers write to a temporary file
// and keep it only on success.
func (r *Reader) WriteTo(ctx context.Context, objectID string, w io.Writer) (servedBy string, n int64, err error) {
	id := objectID
	srcs, skipped, err := r.plan(id)
	if err != nil {
		return "", 0, err
	}
	nc := &NoCopyError{ObjectID: id, Skipped: skipped}
	st := &streamState{size: -1, h: blake3.New(), served: make(map[string]int64)}
	for _, src := range srcs {
		for {
			got, err := r.streamCopy(ctx, src, id, st, w)
			st.pos += got
			st.served[src.tier] += got
			if err == nil {
				r.succeeded(id, src.tier)
				return st.finish(r, id)
			}
			if we := (*writeError)(nil); errors.As(err, &we) {
				return "", st.pos, fmt.Errorf("recall %s: %w", id, err)
			}
			if cerr := ctx.Err(); cerr != nil {
				return "", st.pos, fmt.Errorf("recall %s: %w", id, cerr)
			}
			if got > 0 && !errors.Is(err, tier.ErrCorrupt) {
				r.log.Warn("copy interrupted, resuming", "object", id, "tier", src.tier, "at", st.pos, "err", err)
				continue
			}
			r.failed(id, src.tier, err)
			nc.Failures = append(nc.Failures, CopyFailure{src.tier, err})
			break
		}
	}
	return "", st.pos, nc
}

type streamState struct {
	pos    int64 // bytes written so far
	size   int64 // content size, -1 until a manifest is known
	h      hash.Hash
	served map[string]int64
}

// finish checks the content hash and names the main tier.
func (st *streamState) finish(r *Reader, id string) (string, int64, error) {
	var main string
	for t, n := range st.served {
		if main == "" || n > st.served[main] || n == st.served[main] && t < main {
			main = t
		}
	}
	if got := hex.EncodeToString(st.h.Sum(nil)); got != id {
		err := fmt.Errorf("%w: content blake3 %s differs from the object id", tier.ErrCorrupt, got)
		if len(st.served) == 1 {
			r.failed(id, main, err)
		}
		return "", st.pos, fmt.Errorf("recall %s: %w", id, err)
	}
	return main, st.pos, nil
}

type packedBatch struct {
	first  int
	packed []byte
	err    error
}

// streamCopy writes the content from st.pos to the end from one copy, and
// returns the number of bytes written.
func (r *Reader) streamCopy(ctx context.Context, src source, id string, st *streamState, w io.Writer) (int64, error) {
	m, err := r.manifestOf(ctx, src, id)
	if err != nil {
		return 0, err
	}
	if st.size >= 0 && m.Size != st.size {
		return 0, fmt.Errorf("manifest: %w: size %d, other copies %d", tier.ErrCorrupt, m.Size, st.size)
	}
	st.size = m.Size
	if st.pos == m.Size {
		return 0, nil
	}
	first, last, poff, plen := m.FrameSpan(st.pos, m.Size-st.pos)
	rc, err := src.t.GetRange(ctx, id, poff, plen)
	if err != nil {
		return 0, classifyGet(poff, plen, err)
	}

	// Read ahead one batch while the previous one is decoded and written.
	batches := make(chan packedBatch, 1)
	stop := make(chan struct{})
	go func() {
		defer close(batches)
		for i := first; i <= last; {
			j := i
			size := m.Frames[i].PackedSize
			for j < last && j-i+1 < streamBatchFrames && size+m.Frames[j+1].PackedSize <= streamBatchBytes {
				j++
				size += m.Frames[j].PackedSize
			}
			b := packedBatch{first: i, packed: make([]byte, size)}
			if got, err := io.ReadFull(rc, b.packed); err != nil {
				b.packed = b.packed[:got]
				b.err = fmt.Errorf("read frames %d-%d at %d: %w", i, j, m.Frames[i].PackedOffset, err)
			}
			select {
			case batches <- b:
			case <-stop:
				return
			}
			if b.err != nil {
				return
			}
			i = j + 1
		}
	}()
	defer func() {
		close(stop)
		rc.Close() // unblocks a read in progress
		for range batches {
		}
	}()

	var written int64
	emit := func(first int, packed []byte) error {
		data, err := object.DecodeFrames(m, first, packed)
		if err != nil {
			return err
		}
		out := data[st.pos+written-m.Frames[first].Offset:]
		st.h.Write(out)
		if _, err := w.Write(out); err != nil {
			return &writeError{err}
		}
		written += int64(len(out))
		return nil
	}
	for b := range batches {
		// On a read error, the frames that arrived whole are still good.
		packed := b.packed[:wholeFrames(m, b.first, int64(len(b.packed)))]
		if len(packed) > 0 {
			if err := emit(b.first, packed); err != nil {
				var we *writeError
				if errors.As(err, &we) {
					return written, err
				}
				// Keep the verified frames before the bad one.
				var ce *object.CorruptError
				if errors.As(err, &ce) && ce.Frame > b.first && ce.Frame < len(m.Frames) {
					good := m.Frames[ce.Frame].PackedOffset - m.Frames[b.first].PackedOffset
					if werr := emit(b.first, packed[:good]); werr != nil && errors.As(werr, &we) {
						return written, werr
					}
				}
				return written, fmt.Errorf("frames at %d: %w", m.Frames[b.first].PackedOffset, corrupt(err))
			}
		}
		if b.err != nil {
			return written, b.err
		}
		if err := ctx.Err(); err != nil {
			return written, err
		}
	}
	if st.pos+written != m.Size {
		return written, fmt.Errorf("recall: internal error: stream ended at %d of %d bytes", st.pos+written, m.Size)
	}
	return written, nil
}

// wholeFrames returns how many of n packed bytes, starting at frame first,
// make whole frames.
func wholeFrames(m object.Manifest, first int, n int64) int64 {
	var whole int64
	for i := first; i < len(m.Frames) && whole+m.Frames[i].PackedSize <= n; i++ {
		whole += m.Frames[i].PackedSize
	}
	return whole
}
