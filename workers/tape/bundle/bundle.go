// Package bundle is Strata's on-tape format, chosen so that mt, tar and
// zstd alone recover everything:
//
//   - tape file 0 is the label: a small pax tar holding VOLUME.json
//     (volume id, pool, block size, format version, sequence);
//   - every later tape file is one bundle: a POSIX pax tar of
//     STRATA-BUNDLE.json (bundle id, part, continuation), then per object
//     objects/<aa>/<id>.json (the manifest) and objects/<aa>/<id>.zst (the
//     packed object, a seekable zstd stream), exactly as in the directory
//     tier, with BLAKE3 sums and sizes in PAX records (STRATA.*), and, when
//     the bundle goes on on another volume, a STRATA-CONTINUED.json
//     trailer;
//   - every tape block is BlockSize bytes (512 KiB by default, 256 KiB to
//     1 MiB), the tar blocking factor: `tar -x -b 1024` reads 512 KiB
//     blocks.
//
// See docs/TAPE.md.
package bundle

import (
	"archive/tar"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
)

// Format constants.
const (
	FormatVersion    = 1
	DefaultBlockSize = 512 << 10
	MinBlockSize     = 256 << 10
	MaxBlockSize     = 1 << 20

	LabelName     = "VOLUME.json"
	HeaderName    = "STRATA-BUNDLE.json"
	ContinuedName = "STRATA-CONTINUED.json"

	// PAX records.
	PaxObjectID   = "STRATA.object_id"
	PaxBlake3     = "STRATA.blake3"      // BLAKE3 of the member's bytes
	PaxPackedSum  = "STRATA.packed_sum"  // BLAKE3 of the packed object (= STRATA.blake3 of .zst)
	PaxPackedSize = "STRATA.packed_size" // bytes of the packed object
)

// Errors.
var (
	// ErrChecksum: bytes read do not match their recorded BLAKE3.
	ErrChecksum = errors.New("bundle: checksum mismatch")
	// ErrFormat: the tape does not hold Strata's format.
	ErrFormat = errors.New("bundle: not a strata tape file")
)

// mtime is the fixed modification time of members: bundles are a pure
// function of their objects.
var mtime = time.Unix(0, 0).UTC()

// Label is VOLUME.json, the content of tape file 0.
type Label struct {
	Volume        string `json:"volume"`
	Pool          string `json:"pool"`
	BlockSize     int    `json:"block_size"`
	FormatVersion int    `json:"format_version"`
	Sequence      int    `json:"sequence"` // position in a multi-volume set, from 1
}

// Validate checks l.
func (l Label) Validate() error {
	switch {
	case l.Volume == "" || strings.ContainsAny(l.Volume, "/\x00") || len(l.Volume) > 64:
		return fmt.Errorf("label: bad volume id %q", l.Volume)
	case l.Pool == "" || len(l.Pool) > 64:
		return fmt.Errorf("label: bad pool %q", l.Pool)
	case l.BlockSize < MinBlockSize || l.BlockSize > MaxBlockSize || l.BlockSize%512 != 0:
		return fmt.Errorf("label: block size %d outside [%d, %d] or not a multiple of 512", l.BlockSize, MinBlockSize, MaxBlockSize)
	case l.FormatVersion != FormatVersion:
		return fmt.Errorf("label: format version %d, this build reads %d: %w", l.FormatVersion, FormatVersion, ErrFormat)
	case l.Sequence < 0:
		return fmt.Errorf("label: negative sequence %d", l.Sequence)
	}
	return nil
}

// Header is STRATA-BUNDLE.json, the first member of every bundle.
type Header struct {
	Bundle        string `json:"bundle"` // bundle id, shared by all its parts
	Part          int    `json:"part"`   // 1 for the first part
	FormatVersion int    `json:"format_version"`
	// ContinuesFrom is set on parts after the first: where the previous
	// part is.
	ContinuesFrom *Place `json:"continues_from,omitempty"`
}

// Place is a tape file on a volume.
type Place struct {
	Volume   string `json:"volume"`
	TapeFile int64  `json:"tape_file"`
}

// Continued is STRATA-CONTINUED.json, the trailer of a bundle part that
// goes on on another volume.
type Continued struct {
	Bundle   string `json:"bundle"`
	Part     int    `json:"part"`
	NextPart int    `json:"next_part"`
}

// BlockWriter cuts a byte stream into blocks of a fixed size and hands each
// to emit, which may keep it (a fresh buffer is used for the next block).
type BlockWriter struct {
	bs      int
	buf     []byte
	emit    func([]byte) error
	written int64
	err     error
}

// NewBlockWriter returns a writer of bs-byte blocks.
func NewBlockWriter(bs int, emit func([]byte) error) *BlockWriter {
	return &BlockWriter{bs: bs, buf: make([]byte, 0, bs), emit: emit}
}

// Offset returns the number of bytes written so far.
func (w *BlockWriter) Offset() int64 { return w.written }

func (w *BlockWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), w.bs-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		n += k
		w.written += int64(k)
		if len(w.buf) == w.bs {
			if err := w.emit(w.buf); err != nil {
				w.err = err
				return n, err
			}
			w.buf = make([]byte, 0, w.bs)
		}
	}
	return n, nil
}

// Close pads the last block with zeros and emits it.
func (w *BlockWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) > 0 {
		pad := w.bs - len(w.buf)
		w.written += int64(pad)
		w.buf = append(w.buf, make([]byte, pad)...)
		if err := w.emit(w.buf); err != nil {
			w.err = err
			return err
		}
		w.buf = nil
	}
	w.err = errors.New("bundle: block writer closed")
	return nil
}

func sum(b []byte) string {
	s := blake3.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ObjectPath is the member name of object id's packed bytes; its manifest
// is the same with .json.
func ObjectPath(id string) string { return "objects/" + id[:2] + "/" + id + ".zst" }

// ValidID checks an object id (64 lowercase hex characters).
func ValidID(id string) error {
	if len(id) != 64 {
		return fmt.Errorf("object id %q: want 64 hex characters", id)
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("object id %q: want lowercase hex", id)
		}
	}
	return nil
}

func writeJSONMember(tw *tar.Writer, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	h := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: mtime, Typeflag: tar.TypeReg,
		Format: tar.FormatPAX, PAXRecords: map[string]string{PaxBlake3: sum(b)}}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err = tw.Write(b)
	return err
}

// Writer writes one bundle (one tape file part) as a pax tar cut into
// blocks.
type Writer struct {
	bw     *BlockWriter
	tw     *tar.Writer
	broken error
}

// Entry is where an object went in a bundle: byte offsets from the start
// of the tape file.
type Entry struct {
	ID         string
	DataOffset int64 // first byte of the .zst member's data
	PackedSize int64
	PackedSum  string
	End        int64 // first byte after the .zst member (padding included)
}

// NewWriter starts a bundle with header h; blocks of bs bytes go to emit.
func NewWriter(bs int, h Header, emit func([]byte) error) (*Writer, error) {
	if bs < MinBlockSize || bs > MaxBlockSize || bs%512 != 0 {
		return nil, fmt.Errorf("bundle: block size %d outside [%d, %d]", bs, MinBlockSize, MaxBlockSize)
	}
	if h.Bundle == "" || h.Part < 1 {
		return nil, fmt.Errorf("bundle: header needs a bundle id and part >= 1")
	}
	h.FormatVersion = FormatVersion
	bw := NewBlockWriter(bs, emit)
	w := &Writer{bw: bw, tw: tar.NewWriter(bw)}
	if err := writeJSONMember(w.tw, HeaderName, h); err != nil {
		return nil, fmt.Errorf("bundle: write header: %w", err)
	}
	return w, nil
}

// Offset returns the bytes written so far (headers included).
func (w *Writer) Offset() int64 { return w.bw.Offset() }

// Add writes the manifest and the packed bytes of an object, read from r
// (exactly packedSize bytes), and checks them against packedSum. On
// ErrChecksum or a short r the member is complete on tape (padded with
// zeros when short) but its bytes do not match its STRATA.packed_sum: the
// object must not be reported stored (verify and rebuild skip it). Any
// other error leaves the Writer unusable.
func (w *Writer) Add(id string, manifest []byte, packedSize int64, packedSum string, r io.Reader) (Entry, error) {
	if w.broken != nil {
		return Entry{}, w.broken
	}
	if err := ValidID(id); err != nil {
		return Entry{}, fmt.Errorf("bundle: %w", err)
	}
	if err := ValidID(packedSum); err != nil {
		return Entry{}, fmt.Errorf("bundle: packed sum: %w", err)
	}
	if packedSize < 0 {
		return Entry{}, fmt.Errorf("bundle: object %s: negative packed size", id)
	}
	base := strings.TrimSuffix(ObjectPath(id), ".zst")
	mh := &tar.Header{Name: base + ".json", Mode: 0o644, Size: int64(len(manifest)), ModTime: mtime,
		Typeflag: tar.TypeReg, Format: tar.FormatPAX,
		PAXRecords: map[string]string{PaxObjectID: id, PaxBlake3: sum(manifest)}}
	if err := w.tw.WriteHeader(mh); err != nil {
		return Entry{}, w.fail(err)
	}
	if _, err := w.tw.Write(manifest); err != nil {
		return Entry{}, w.fail(err)
	}
	zh := &tar.Header{Name: base + ".zst", Mode: 0o644, Size: packedSize, ModTime: mtime,
		Typeflag: tar.TypeReg, Format: tar.FormatPAX,
		PAXRecords: map[string]string{PaxObjectID: id, PaxBlake3: packedSum, PaxPackedSum: packedSum,
			PaxPackedSize: strconv.FormatInt(packedSize, 10)}}
	if err := w.tw.WriteHeader(zh); err != nil {
		return Entry{}, w.fail(err)
	}
	e := Entry{ID: id, DataOffset: w.bw.Offset(), PackedSize: packedSize, PackedSum: packedSum}
	h := blake3.New()
	n, err := io.Copy(io.MultiWriter(w.tw, h), io.LimitReader(r, packedSize))
	var srcErr error
	if err != nil {
		if w.bw.err != nil {
			return Entry{}, w.fail(err)
		}
		srcErr = fmt.Errorf("bundle: read object %s: %w", id, err)
	}
	if n < packedSize {
		// Keep the tar stream valid: pad the member with zeros.
		if _, err := io.CopyN(w.tw, zeroReader{}, packedSize-n); err != nil {
			return Entry{}, w.fail(err)
		}
		if srcErr == nil {
			srcErr = fmt.Errorf("bundle: object %s: %d of %d bytes: %w", id, n, packedSize, io.ErrUnexpectedEOF)
		}
	}
	if err := w.tw.Flush(); err != nil {
		return Entry{}, w.fail(err)
	}
	e.End = w.bw.Offset()
	if srcErr != nil {
		return e, srcErr
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != packedSum {
		return e, fmt.Errorf("bundle: object %s: packed BLAKE3 %s, want %s: %w", id, got, packedSum, ErrChecksum)
	}
	return e, nil
}

func (w *Writer) fail(err error) error {
	w.broken = fmt.Errorf("bundle: write: %w", err)
	return w.broken
}

// Close ends the bundle: the continuation trailer when c is not nil, the
// tar end, and zero padding to a whole block.
func (w *Writer) Close(c *Continued) error {
	if w.broken != nil {
		return w.broken
	}
	if c != nil {
		if err := writeJSONMember(w.tw, ContinuedName, c); err != nil {
			return w.fail(err)
		}
	}
	if err := w.tw.Close(); err != nil {
		return w.fail(err)
	}
	if err := w.bw.Close(); err != nil {
		return w.fail(err)
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// WriteLabel writes the label as tape file 0 of the cartridge in d
// (erasing whatever the tape held), with a flushing filemark.
func WriteLabel(d tape.Drive, l Label) error {
	if l.FormatVersion == 0 {
		l.FormatVersion = FormatVersion
	}
	if err := l.Validate(); err != nil {
		return err
	}
	if err := d.Rewind(); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	if err := d.SetBlockSize(0); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	if err := d.SetCompression(false); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	bw := NewBlockWriter(l.BlockSize, d.WriteBlock)
	tw := tar.NewWriter(bw)
	if err := writeJSONMember(tw, LabelName, l); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	if err := bw.Close(); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	if err := d.WriteFilemarks(1, true); err != nil {
		return fmt.Errorf("label %s: %w", l.Volume, err)
	}
	return nil
}

// ReadLabel rewinds d and reads its label. The tape is left at the start
// of tape file 1.
func ReadLabel(d tape.Drive) (Label, error) {
	if err := d.Rewind(); err != nil {
		return Label{}, fmt.Errorf("read label: %w", err)
	}
	fr := NewFileReader(d)
	l, err := DecodeLabel(fr)
	if err != nil {
		return Label{}, err
	}
	if err := fr.Skip(); err != nil {
		return Label{}, fmt.Errorf("read label: %w", err)
	}
	return l, nil
}

// DecodeLabel reads a label from r, the bytes of tape file 0 (a pax tar
// whose first member is VOLUME.json), and checks its BLAKE3 and fields.
// It reads r only up to the end of that member.
func DecodeLabel(r io.Reader) (Label, error) {
	tr := tar.NewReader(r)
	h, err := tr.Next()
	if err != nil {
		return Label{}, fmt.Errorf("read label: %w: %w", ErrFormat, err)
	}
	if h.Name != LabelName || h.Size > 64<<10 {
		return Label{}, fmt.Errorf("read label: first member %q: %w", h.Name, ErrFormat)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		return Label{}, fmt.Errorf("read label: %w", err)
	}
	if want := h.PAXRecords[PaxBlake3]; want != sum(b) {
		return Label{}, fmt.Errorf("read label: %w", ErrChecksum)
	}
	var l Label
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&l); err != nil {
		return Label{}, fmt.Errorf("read label: %w: %w", ErrFormat, err)
	}
	if err := l.Validate(); err != nil {
		return Label{}, fmt.Errorf("read label: %w", err)
	}
	return l, nil
}

// FileReader reads one tape file as a byte stream, block by block, until
// its filemark (io.EOF after it; the tape is then at the next file).
type FileReader struct {
	d    tape.Drive
	buf  []byte
	data []byte
	eof  bool
}

// NewFileReader reads the tape file at d's position.
func NewFileReader(d tape.Drive) *FileReader {
	return &FileReader{d: d, buf: make([]byte, MaxBlockSize)}
}

func (r *FileReader) Read(p []byte) (int, error) {
	for len(r.data) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		n, err := r.d.ReadBlock(r.buf)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			r.eof = true
			return 0, io.EOF
		}
		r.data = r.buf[:n]
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// Skip reads to the end of the tape file (past its filemark).
func (r *FileReader) Skip() error {
	if r.eof {
		return nil
	}
	r.data = nil
	_, err := io.Copy(io.Discard, r)
	return err
}

// Position converts a byte offset in a tape file that starts at logical
// block start into a TapePosition.
func Position(volume string, tapeFile, start int64, bs int, off int64) events.TapePosition {
	return events.TapePosition{Volume: volume, TapeFile: tapeFile, Block: start + off/int64(bs), Offset: off % int64(bs)}
}
