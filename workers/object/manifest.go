package object

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"sort"
)

// FormatVersion is the version of the object format and manifest that this
// package writes and reads (Manifest.Format).
const FormatVersion = 1

// Errors callers test with errors.Is.
var (
	// ErrCorrupt means an object's bytes do not match its manifest or the
	// format: a hash mismatch, a truncated object, a frame that does not
	// decode. Errors wrapping it are *CorruptError values naming the frame.
	ErrCorrupt = errors.New("object: corrupt")
	// ErrInvalidManifest means a manifest is not internally consistent.
	ErrInvalidManifest = errors.New("object: invalid manifest")
)

// CorruptError reports a corrupt object. errors.Is(err, ErrCorrupt) holds.
type CorruptError struct {
	// Frame is the index of the bad frame, or -1 when the fault is not in
	// one frame (seek table, whole-object hash, truncation past the frames).
	Frame  int
	Reason string
}

func (e *CorruptError) Error() string {
	if e.Frame >= 0 {
		return fmt.Sprintf("object: corrupt frame %d: %s", e.Frame, e.Reason)
	}
	return "object: corrupt: " + e.Reason
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Manifest describes one object: identity, hashes and the frame table. It is
// stored as JSON beside the object on every tier; field names are stable.
type Manifest struct {
	// Format is FormatVersion.
	Format int `json:"format"`
	// ObjectID is the BLAKE3-256 of the uncompressed content, 64 lowercase hex.
	ObjectID string `json:"object_id"`
	// Size is the uncompressed size in bytes.
	Size int64 `json:"size"`
	// PackedSize is the size of the object (frames + seek table) in bytes.
	PackedSize int64 `json:"packed_size"`
	// PackedSum is the BLAKE3-256 of the whole object, 64 lowercase hex.
	PackedSum string `json:"packed_sum"`
	// FrameSize is the uncompressed size of every frame but the last.
	FrameSize int64 `json:"frame_size"`
	// Level is the zstd compression level.
	Level int `json:"level"`
	// Frames lists every data frame in order (empty for an empty object).
	Frames []Frame `json:"frames"`
	// File describes the file the object was made from, when known.
	File *FileInfo `json:"file,omitempty"`
}

// Frame is one independent zstd frame of an object.
type Frame struct {
	Offset       int64  `json:"offset"`        // uncompressed offset
	Size         int64  `json:"size"`          // uncompressed size
	PackedOffset int64  `json:"packed_offset"` // offset in the object
	PackedSize   int64  `json:"packed_size"`   // size in the object
	BLAKE3       string `json:"blake3"`        // BLAKE3-256 of the uncompressed bytes
}

// FileInfo is the original file an object was made from.
type FileInfo struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	Mode    uint32 `json:"mode"`
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
	AtimeNS int64  `json:"atime_ns"`
	MtimeNS int64  `json:"mtime_ns"`
	CtimeNS int64  `json:"ctime_ns"`
}

// DecodeManifest parses and validates a JSON manifest.
func DecodeManifest(data []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrInvalidManifest, err)
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// Encode returns m as indented JSON (people read manifests when recovering
// files by hand).
func (m Manifest) Encode() ([]byte, error) {
	if m.Frames == nil {
		m.Frames = []Frame{}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// Validate checks that m is internally consistent: format version, hash
// syntax, frame table contiguous and covering exactly Size bytes with frames
// of FrameSize (the last one 1..FrameSize), packed frames contiguous from 0,
// and PackedSize equal to the frames plus the seek table. Errors wrap
// ErrInvalidManifest.
func (m Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidManifest, fmt.Sprintf(format, args...))
	}
	switch {
	case m.Format != FormatVersion:
		return bad("format %d, this version reads %d", m.Format, FormatVersion)
	case !isHash(m.ObjectID):
		return bad("object_id %q is not 64 lowercase hex digits", m.ObjectID)
	case !isHash(m.PackedSum):
		return bad("packed_sum %q is not 64 lowercase hex digits", m.PackedSum)
	case m.Size < 0:
		return bad("negative size %d", m.Size)
	case m.FrameSize < MinFrameSize || m.FrameSize > MaxFrameSize:
		return bad("frame_size %d outside [%d, %d]", m.FrameSize, MinFrameSize, MaxFrameSize)
	case m.Level < MinLevel || m.Level > MaxLevel:
		return bad("level %d outside [%d, %d]", m.Level, MinLevel, MaxLevel)
	}
	want := (m.Size + m.FrameSize - 1) / m.FrameSize
	if int64(len(m.Frames)) != want {
		return bad("%d frames, want %d for size %d and frame_size %d", len(m.Frames), want, m.Size, m.FrameSize)
	}
	var off, poff int64
	for i, f := range m.Frames {
		switch {
		case f.Offset != off:
			return bad("frame %d: offset %d, want %d", i, f.Offset, off)
		case f.PackedOffset != poff:
			return bad("frame %d: packed_offset %d, want %d", i, f.PackedOffset, poff)
		case f.Size <= 0 || f.Size > m.FrameSize:
			return bad("frame %d: size %d outside [1, %d]", i, f.Size, m.FrameSize)
		case i < len(m.Frames)-1 && f.Size != m.FrameSize:
			return bad("frame %d: size %d, want frame_size %d (only the last frame is shorter)", i, f.Size, m.FrameSize)
		case f.PackedSize <= 0 || f.PackedSize > math.MaxUint32:
			return bad("frame %d: packed_size %d outside [1, %d]", i, f.PackedSize, uint32(math.MaxUint32))
		case !isHash(f.BLAKE3):
			return bad("frame %d: blake3 %q is not 64 lowercase hex digits", i, f.BLAKE3)
		}
		off += f.Size
		poff += f.PackedSize
	}
	if off != m.Size {
		return bad("frames cover %d bytes, size is %d", off, m.Size)
	}
	if p := poff + SeekTableSize(len(m.Frames)); p != m.PackedSize {
		return bad("packed_size %d, frames and seek table make %d", m.PackedSize, p)
	}
	if f := m.File; f != nil {
		switch {
		case f.Path == "" || !filepath.IsAbs(f.Path):
			return bad("file.path %q is not absolute", f.Path)
		case f.Size != m.Size:
			return bad("file.size %d differs from size %d", f.Size, m.Size)
		}
	}
	return nil
}

// FrameSpan returns the frames first..last (inclusive) that hold the
// uncompressed bytes [off, off+n), and the byte range of the object holding
// those frames: fetch object bytes [packedOff, packedOff+packedLen) and give
// them to DecodeFrames(m, first, …). The range is clipped to [0, Size); when
// nothing is left, it returns last < first and packedLen 0.
func (m Manifest) FrameSpan(off, n int64) (first, last int, packedOff, packedLen int64) {
	end := off + n
	if n < 0 || end < off { // negative length or overflow
		end = off
	}
	off, end = max(off, 0), min(end, m.Size)
	if off >= end || len(m.Frames) == 0 {
		return 0, -1, 0, 0
	}
	first = m.frameAt(off)
	last = m.frameAt(end - 1)
	ff, lf := m.Frames[first], m.Frames[last]
	return first, last, ff.PackedOffset, lf.PackedOffset + lf.PackedSize - ff.PackedOffset
}

// frameAt returns the index of the frame holding uncompressed offset off,
// which must be in [0, Size).
func (m Manifest) frameAt(off int64) int {
	return sort.Search(len(m.Frames), func(i int) bool {
		f := m.Frames[i]
		return f.Offset+f.Size > off
	})
}

// CheckSeekTable reports whether the seek table read from the object (see
// ReadSeekTable) describes the same frames as m. A difference wraps
// ErrCorrupt.
func (m Manifest) CheckSeekTable(t SeekTable) error {
	if len(t.Entries) != len(m.Frames) {
		return &CorruptError{Frame: -1, Reason: fmt.Sprintf("seek table lists %d frames, manifest %d", len(t.Entries), len(m.Frames))}
	}
	for i, e := range t.Entries {
		f := m.Frames[i]
		if int64(e.Size) != f.Size || int64(e.PackedSize) != f.PackedSize {
			return &CorruptError{Frame: i, Reason: fmt.Sprintf("seek table says %d bytes packed in %d, manifest %d in %d",
				e.Size, e.PackedSize, f.Size, f.PackedSize)}
		}
	}
	var end int64
	if len(m.Frames) > 0 {
		lf := m.Frames[len(m.Frames)-1]
		end = lf.PackedOffset + lf.PackedSize
	}
	if end+t.encodedSize() != m.PackedSize {
		return &CorruptError{Frame: -1, Reason: fmt.Sprintf("frames and seek table make %d bytes, manifest packed_size %d",
			end+t.encodedSize(), m.PackedSize)}
	}
	return nil
}

func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
