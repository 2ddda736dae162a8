package object

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
)

// Constants of the zstd frame format and of the seekable format.
const (
	zstdMagic      = 0xFD2FB528 // zstd frame magic number
	skippableMagic = 0x184D2A5E // skippable frame magic used by the seek table
	seekableMagic  = 0x8F92EAB1 // last 4 bytes of a seekable object

	seekFooterSize  = 9  // number of frames u32, descriptor u8, seekable magic u32
	seekHeaderSize  = 8  // skippable magic u32, frame size u32
	seekEntrySize   = 8  // packed size u32, size u32
	seekEntryCkSize = 12 // the same plus an XXH64 checksum u32

	checksumFlag = 0x80 // Seek_Table_Descriptor bit 7
	reservedBits = 0x7C // Seek_Table_Descriptor bits 6-2: must be 0

	maxRawBlock = 128 << 10 // zstd Block_Maximum_Size
)

// MaxFrames is the largest number of frames in one object (the reference
// implementation's ZSTD_SEEKABLE_MAXFRAMES).
const MaxFrames = 0x8000000

// SeekTableSize is the size in bytes of the seek table Strata writes for an
// object of n frames (no per-entry checksums).
func SeekTableSize(n int) int64 {
	return seekHeaderSize + int64(n)*seekEntrySize + seekFooterSize
}

// appendSeekTable appends the seek table of frames to dst.
func appendSeekTable(dst []byte, frames []Frame) []byte {
	n := len(frames)
	dst = binary.LittleEndian.AppendUint32(dst, skippableMagic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n*seekEntrySize+seekFooterSize))
	for _, f := range frames {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(f.PackedSize))
		dst = binary.LittleEndian.AppendUint32(dst, uint32(f.Size))
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, 0)
	return binary.LittleEndian.AppendUint32(dst, seekableMagic)
}

// rawFrameSize is the size of the frame appendRawFrame writes for n bytes.
func rawFrameSize(n int) int {
	blocks := (n + maxRawBlock - 1) / maxRawBlock
	if blocks == 0 {
		blocks = 1
	}
	return 4 + 1 + fcsFieldSize(n) + 3*blocks + n + 4
}

func fcsFieldSize(n int) int {
	switch {
	case n < 256:
		return 1
	case n < 65536+256:
		return 2
	default:
		return 4
	}
}

// appendRawFrame appends to dst a standard zstd frame that stores src in raw
// (uncompressed) blocks: single-segment, with the content size and the
// content checksum (low 32 bits of XXH64), so any zstd decoder restores and
// checks it.
func appendRawFrame(dst, src []byte) []byte {
	n := len(src)
	dst = binary.LittleEndian.AppendUint32(dst, zstdMagic)
	// Frame_Header_Descriptor: FCS flag (bits 7-6), Single_Segment (bit 5),
	// Content_Checksum (bit 2), no dictionary.
	const single, checksum = 1 << 5, 1 << 2
	switch fcsFieldSize(n) {
	case 1:
		dst = append(dst, 0<<6|single|checksum, byte(n))
	case 2:
		dst = append(dst, 1<<6|single|checksum)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(n-256))
	default:
		dst = append(dst, 2<<6|single|checksum)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	}
	rest := src
	for {
		b := min(len(rest), maxRawBlock)
		last := b == len(rest)
		// Block_Header: Last_Block (bit 0), Block_Type raw = 0 (bits 2-1),
		// Block_Size (bits 23-3).
		h := uint32(b) << 3
		if last {
			h |= 1
		}
		dst = append(dst, byte(h), byte(h>>8), byte(h>>16))
		dst = append(dst, rest[:b]...)
		rest = rest[b:]
		if last {
			break
		}
	}
	return binary.LittleEndian.AppendUint32(dst, uint32(xxhash.Sum64(src)))
}

// SeekTable is a seek table parsed from an object by ReadSeekTable.
type SeekTable struct {
	// Entries has one entry per frame, in order.
	Entries []SeekEntry
	// Checksums reports whether the table carries per-entry checksums (Strata
	// writes none; other writers may).
	Checksums bool
}

// SeekEntry is one frame of a seek table.
type SeekEntry struct {
	PackedSize uint32 // compressed size of the frame
	Size       uint32 // decompressed size of the frame
	Checksum   uint32 // low 32 bits of XXH64 of the frame's content, if SeekTable.Checksums
}

// Size returns the total uncompressed size the table describes.
func (t SeekTable) Size() int64 {
	var s int64
	for _, e := range t.Entries {
		s += int64(e.Size)
	}
	return s
}

// encodedSize returns the size of the skippable frame holding t.
func (t SeekTable) encodedSize() int64 {
	es := int64(seekEntrySize)
	if t.Checksums {
		es = seekEntryCkSize
	}
	return seekHeaderSize + int64(len(t.Entries))*es + seekFooterSize
}

// ReadSeekTable parses the seek table at the end of an object of size bytes,
// from the object alone. It checks the table's own framing and that the
// frames it lists fill the object exactly up to the table. A malformed table
// gives an error wrapping ErrCorrupt.
func ReadSeekTable(ra io.ReaderAt, size int64) (SeekTable, error) {
	bad := func(format string, args ...any) (SeekTable, error) {
		return SeekTable{}, &CorruptError{Frame: -1, Reason: "seek table: " + fmt.Sprintf(format, args...)}
	}
	if size < seekHeaderSize+seekFooterSize {
		return bad("object of %d bytes is too small to hold one", size)
	}
	var foot [seekFooterSize]byte
	if err := readFull(ra, foot[:], size-seekFooterSize); err != nil {
		return SeekTable{}, fmt.Errorf("read seek table footer: %w", err)
	}
	if m := binary.LittleEndian.Uint32(foot[5:]); m != seekableMagic {
		return bad("no seekable magic at the end (found %#08x)", m)
	}
	n := int64(binary.LittleEndian.Uint32(foot[0:]))
	desc := foot[4]
	if desc&reservedBits != 0 {
		return bad("reserved descriptor bits set (%#02x)", desc)
	}
	if n > MaxFrames {
		return bad("%d frames, more than the limit %d", n, MaxFrames)
	}
	t := SeekTable{Checksums: desc&checksumFlag != 0}
	es := int64(seekEntrySize)
	if t.Checksums {
		es = seekEntryCkSize
	}
	tableSize := seekHeaderSize + n*es + seekFooterSize
	if tableSize > size {
		return bad("%d frames need %d bytes, object has %d", n, tableSize, size)
	}
	buf := make([]byte, tableSize-seekFooterSize)
	if err := readFull(ra, buf, size-tableSize); err != nil {
		return SeekTable{}, fmt.Errorf("read seek table: %w", err)
	}
	if m := binary.LittleEndian.Uint32(buf[0:]); m != skippableMagic {
		return bad("skippable magic %#08x, want %#08x", m, skippableMagic)
	}
	if fs := int64(binary.LittleEndian.Uint32(buf[4:])); fs != n*es+seekFooterSize {
		return bad("skippable frame size %d, want %d for %d frames", fs, n*es+seekFooterSize, n)
	}
	t.Entries = make([]SeekEntry, n)
	var packed int64
	p := buf[seekHeaderSize:]
	for i := range t.Entries {
		e := SeekEntry{
			PackedSize: binary.LittleEndian.Uint32(p[0:]),
			Size:       binary.LittleEndian.Uint32(p[4:]),
		}
		if t.Checksums {
			e.Checksum = binary.LittleEndian.Uint32(p[8:])
		}
		p = p[es:]
		t.Entries[i] = e
		packed += int64(e.PackedSize)
	}
	if packed != size-tableSize {
		return bad("frames hold %d bytes but the table starts at %d", packed, size-tableSize)
	}
	return t, nil
}

// readFull reads exactly len(p) bytes at off; a short read is ErrCorrupt
// (the object is truncated), any other failure is returned as is.
func readFull(ra io.ReaderAt, p []byte, off int64) error {
	n, err := ra.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return &CorruptError{Frame: -1, Reason: fmt.Sprintf("truncated: read %d of %d bytes at offset %d", n, len(p), off)}
	}
	return err
}
