package bundle

import (
	"archive/tar"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/zeebo/blake3"
)

// Object is an object found in a bundle by ReadBundle.
type Object struct {
	ID         string
	Manifest   []byte
	PackedSize int64
	PackedSum  string
	DataOffset int64 // from the start of the tape file
	// Err is nil when the manifest and the packed bytes match their
	// recorded BLAKE3 (and, for the packed bytes, size); otherwise it
	// says why (wrapping ErrChecksum or ErrFormat).
	Err error
}

// Contents is what ReadBundle found in one tape file.
type Contents struct {
	Header    Header
	Continued *Continued // the part goes on on another volume
	Objects   []Object
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadBundle reads a whole bundle from r (a tape file as a byte stream),
// checking every BLAKE3. A damaged object is reported in its Object.Err; an
// error is returned only when the stream cannot be read as a bundle (then
// Contents holds what was read before).
func ReadBundle(r io.Reader) (Contents, error) {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	var c Contents
	h, err := tr.Next()
	if err != nil {
		return c, fmt.Errorf("read bundle: %w: %w", ErrFormat, err)
	}
	if h.Name != HeaderName {
		return c, fmt.Errorf("read bundle: first member %q: %w", h.Name, ErrFormat)
	}
	if err := readJSONMember(tr, h, &c.Header); err != nil {
		return c, fmt.Errorf("read bundle header: %w", err)
	}
	var manifest []byte
	var manifestID string
	var manifestErr error
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return c, nil
		}
		if err != nil {
			return c, fmt.Errorf("read bundle %s: %w", c.Header.Bundle, err)
		}
		switch {
		case h.Name == ContinuedName:
			var k Continued
			if err := readJSONMember(tr, h, &k); err != nil {
				return c, fmt.Errorf("read bundle trailer: %w", err)
			}
			c.Continued = &k
		case strings.HasPrefix(h.Name, "objects/") && strings.HasSuffix(h.Name, ".json"):
			manifestID = h.PAXRecords[PaxObjectID]
			manifest, manifestErr = readMember(tr, h, 64<<20)
		case strings.HasPrefix(h.Name, "objects/") && strings.HasSuffix(h.Name, ".zst"):
			o := Object{ID: h.PAXRecords[PaxObjectID], PackedSum: h.PAXRecords[PaxPackedSum], DataOffset: cr.n}
			if ValidID(o.ID) != nil || h.Name != ObjectPath(o.ID) {
				o.Err = fmt.Errorf("member %s: bad %s %q: %w", h.Name, PaxObjectID, o.ID, ErrFormat)
			}
			size, perr := strconv.ParseInt(h.PAXRecords[PaxPackedSize], 10, 64)
			o.PackedSize = h.Size
			if o.Err == nil && (perr != nil || size != h.Size) {
				o.Err = fmt.Errorf("member %s: %s %q vs size %d: %w", h.Name, PaxPackedSize, h.PAXRecords[PaxPackedSize], h.Size, ErrFormat)
			}
			if manifestID == o.ID {
				o.Manifest = manifest
				if o.Err == nil {
					o.Err = manifestErr
				}
			} else if o.Err == nil {
				o.Err = fmt.Errorf("member %s: no manifest before it: %w", h.Name, ErrFormat)
			}
			hh := blake3.New()
			if _, err := io.Copy(hh, tr); err != nil {
				return c, fmt.Errorf("read bundle %s: object %s: %w", c.Header.Bundle, o.ID, err)
			}
			if got := hex.EncodeToString(hh.Sum(nil)); o.Err == nil && got != o.PackedSum {
				o.Err = fmt.Errorf("object %s: BLAKE3 %s, want %s: %w", o.ID, got, o.PackedSum, ErrChecksum)
			}
			c.Objects = append(c.Objects, o)
			manifestID, manifest, manifestErr = "", nil, nil
		default:
			// Unknown members are skipped (forward compatibility).
		}
	}
}

func readMember(tr *tar.Reader, h *tar.Header, max int64) ([]byte, error) {
	if h.Size > max {
		return nil, fmt.Errorf("member %s: %d bytes: %w", h.Name, h.Size, ErrFormat)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", h.Name, err)
	}
	if want := h.PAXRecords[PaxBlake3]; want != sum(b) {
		return b, fmt.Errorf("member %s: %w", h.Name, ErrChecksum)
	}
	return b, nil
}

func readJSONMember(tr *tar.Reader, h *tar.Header, v any) error {
	b, err := readMember(tr, h, 1<<20)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("member %s: %w: %w", h.Name, ErrFormat, err)
	}
	return nil
}

// RangeReader reads ranges of objects from one volume. It remembers the
// last block it read and where the tape is, so that reads in tape order
// (see package recall) never move the tape backwards to re-read a block.
// It assumes nobody else moves the drive's tape between its calls.
type RangeReader struct {
	d      tape.Drive
	bs     int
	buf    []byte
	cached int64 // logical block in buf[:n], -1 none
	n      int
	pos    int64 // logical block under the head, -1 unknown
}

// NewRangeReader reads from d, whose volume has block size bs.
func NewRangeReader(d tape.Drive, bs int) *RangeReader {
	return &RangeReader{d: d, bs: bs, buf: make([]byte, MaxBlockSize), cached: -1, pos: -1}
}

func (rr *RangeReader) block(b int64) ([]byte, error) {
	if b == rr.cached {
		return rr.buf[:rr.n], nil
	}
	rr.cached = -1
	if b != rr.pos {
		if err := rr.d.Locate(b); err != nil {
			rr.pos = -1
			return nil, err
		}
	}
	n, err := rr.d.ReadBlock(rr.buf)
	rr.pos = b + 1
	if err != nil {
		rr.pos = -1
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("block %d is a filemark: %w", b, io.ErrUnexpectedEOF)
	}
	rr.cached, rr.n = b, n
	return rr.buf[:n], nil
}

// ReadRange copies n bytes, starting off bytes into the object at pos, to
// w, reading only the blocks that hold them.
func (rr *RangeReader) ReadRange(pos events.TapePosition, off, n int64, w io.Writer) error {
	bs := rr.bs
	if bs <= 0 || bs > MaxBlockSize || pos.Block < 0 || pos.Offset < 0 || pos.Offset >= int64(bs) || off < 0 || n < 0 {
		return fmt.Errorf("read range %+v +%d/%d: bad position or range (block size %d)", pos, off, n, bs)
	}
	start := pos.Offset + off
	b := pos.Block + start/int64(bs)
	skip := start % int64(bs)
	for n > 0 {
		data, err := rr.block(b)
		if err != nil {
			return fmt.Errorf("read range: %w", err)
		}
		if len(data) != bs {
			// Every block of a bundle is whole (the last one is zero
			// padded): a short one is damage, and reading on would
			// shift every later byte.
			return fmt.Errorf("read range: block %d has %d bytes, want %d: %w", b, len(data), bs, ErrFormat)
		}
		data = data[skip:]
		skip = 0
		if int64(len(data)) > n {
			data = data[:n]
		}
		if _, err := w.Write(data); err != nil {
			return fmt.Errorf("read range: %w", err)
		}
		n -= int64(len(data))
		b++
	}
	return nil
}

// ReadObject is ReadRange of a whole object plus a BLAKE3 check (see the
// package function ReadObject).
func (rr *RangeReader) ReadObject(pos events.TapePosition, size int64, packedSum string, w io.Writer) error {
	h := blake3.New()
	if err := rr.ReadRange(pos, 0, size, io.MultiWriter(w, h)); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != packedSum {
		return fmt.Errorf("read object at %+v: BLAKE3 %s, want %s: %w", pos, got, packedSum, ErrChecksum)
	}
	return nil
}

// ReadRange copies n bytes, starting off bytes into the object at pos, to
// w: it locates the block holding them and reads only the blocks needed.
// bs is the volume's block size (from its label).
func ReadRange(d tape.Drive, bs int, pos events.TapePosition, off, n int64, w io.Writer) error {
	return NewRangeReader(d, bs).ReadRange(pos, off, n, w)
}

// ReadObject copies the packed object at pos (size bytes) to w and checks
// its BLAKE3 against packedSum. On ErrChecksum the bytes already written to
// w are wrong and must be discarded: write to a temporary place and
// publish only on success.
func ReadObject(d tape.Drive, bs int, pos events.TapePosition, size int64, packedSum string, w io.Writer) error {
	return NewRangeReader(d, bs).ReadObject(pos, size, packedSum, w)
}
