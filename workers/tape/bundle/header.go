package bundle

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/strata-hsm/strata/events"
)

// ObjectHeader is what a bundle records about an object next to its
// packed bytes: the manifest member and the sizes and sums of the .zst
// member's PAX records.
type ObjectHeader struct {
	ID         string
	Manifest   []byte // checked against its STRATA.blake3
	PackedSize int64
	PackedSum  string
}

// maxManifest bounds a manifest member (as ReadBundle does).
const maxManifest = 64 << 20

// ReadObjectHeader reads, from the tape, the members that precede the
// packed bytes of object id at pos (the position recorded when it was
// written): the manifest and the .zst member's header. It reads backwards
// from pos one block at a time until it finds the manifest's pax header,
// so it touches only the few blocks that hold them, never the whole
// bundle. Every candidate is checked: the member names, the object id
// PAX records, the manifest's BLAKE3, and that the .zst header ends
// exactly where pos says the packed bytes start. Anything else is
// ErrFormat (or ErrChecksum).
func (rr *RangeReader) ReadObjectHeader(pos events.TapePosition, id string) (ObjectHeader, error) {
	bs := int64(rr.bs)
	if err := ValidID(id); err != nil {
		return ObjectHeader{}, fmt.Errorf("read object header: %w", err)
	}
	if bs <= 0 || pos.Block < 0 || pos.Offset < 0 || pos.Offset >= bs {
		return ObjectHeader{}, fmt.Errorf("read object header %s at %+v: bad position (block size %d)", id, pos, bs)
	}
	// blocks[i] is block pos.Block-len(blocks)+1+i; the prefix is every
	// byte of them up to pos.Offset in the last one.
	var blocks [][]byte
	maxBack := (maxManifest+64<<10)/bs + 2
	tried := int64(0) // candidates this close to the end of the prefix were tried
	for k := int64(0); k <= maxBack && pos.Block-k >= 0; k++ {
		b, err := rr.block(pos.Block - k)
		if err != nil {
			if k > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
				// A filemark: the start of the tape file is behind us.
				break
			}
			return ObjectHeader{}, fmt.Errorf("read object header %s: %w", id, err)
		}
		if int64(len(b)) != bs {
			return ObjectHeader{}, fmt.Errorf("read object header %s: block %d has %d bytes, want %d: %w", id, pos.Block-k, len(b), bs, ErrFormat)
		}
		blocks = append([][]byte{bytes.Clone(b)}, blocks...)
		prefix := make([]byte, 0, int64(len(blocks)-1)*bs+pos.Offset)
		for i, blk := range blocks {
			if i == len(blocks)-1 {
				blk = blk[:pos.Offset]
			}
			prefix = append(prefix, blk...)
		}
		// Tar headers are 512-byte aligned from the start of the tape
		// file, hence from the start of any block. Try the candidates not
		// tried yet, nearest first.
		l := int64(len(prefix))
		for c := l - l%512; c >= 0; c -= 512 {
			if l-c <= tried {
				continue
			}
			if h, ok := tryHeader(prefix[c:], id); ok {
				return h, nil
			}
		}
		tried = l
	}
	return ObjectHeader{}, fmt.Errorf("read object header %s at %+v: no manifest member before the packed bytes: %w", id, pos, ErrFormat)
}

// tryHeader parses p as [pax header, manifest header, manifest, pax
// header, .zst header] ending exactly at the end of p.
func tryHeader(p []byte, id string) (ObjectHeader, bool) {
	if len(p) < 4*512 || p[156] != tar.TypeXHeader || !bytes.Equal(p[257:263], []byte("ustar\x00")) {
		return ObjectHeader{}, false
	}
	cr := &countingReader{r: bytes.NewReader(p)}
	tr := tar.NewReader(cr)
	base := strings.TrimSuffix(ObjectPath(id), ".zst")
	mh, err := tr.Next()
	if err != nil || mh.Name != base+".json" || mh.PAXRecords[PaxObjectID] != id || mh.Size > maxManifest {
		return ObjectHeader{}, false
	}
	manifest, err := io.ReadAll(tr)
	if err != nil || int64(len(manifest)) != mh.Size || mh.PAXRecords[PaxBlake3] != sum(manifest) {
		return ObjectHeader{}, false
	}
	zh, err := tr.Next()
	if err != nil || zh.Name != base+".zst" || zh.PAXRecords[PaxObjectID] != id || cr.n != int64(len(p)) {
		return ObjectHeader{}, false
	}
	size, err := strconv.ParseInt(zh.PAXRecords[PaxPackedSize], 10, 64)
	psum := zh.PAXRecords[PaxPackedSum]
	if err != nil || size != zh.Size || ValidID(psum) != nil {
		return ObjectHeader{}, false
	}
	return ObjectHeader{ID: id, Manifest: manifest, PackedSize: size, PackedSum: psum}, true
}
