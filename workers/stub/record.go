package stub

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

// The record in Xattr, version 1, little-endian:
//
//	offset  size  field
//	0       1     version (high nibble, 1) | state (low nibble: 1 released, 2 archived)
//	1       16    file id (the 32 hex digits as bytes)
//	17      32    object id (BLAKE3-256 of the content)
//	49      8     mtime of the archived content, ns since the epoch (int64)
//	57      1–10  size of the archived content (uvarint)
//	…       1–10  release id (uvarint; 0: none)
//
// 57 bytes and two varints: 64 or fewer for a file under 2 MiB released
// before the log's 268 millionth event, which is what fits beside an
// ext4 256-byte inode's fixed fields (the value is rounded to 4 bytes and
// shares 96 bytes with the name "strata" and headers); XFS's 512-byte
// inodes take any record. Larger records still work, in an xattr block.
const (
	recordVersion = 1
	recordFixed   = 57
	recordMax     = recordFixed + 2*binary.MaxVarintLen64
	// maxSize is the largest size a record holds; encode refuses what
	// decode would, so every record Write sets reads back.
	maxSize = 1 << 62
)

var stateCodes = map[State]byte{Released: 1, Archived: 2}

// ErrBadRecord: a Strata xattr that does not decode (damaged, or written
// by a newer Strata).
var ErrBadRecord = errors.New("stub: bad record")

func encode(in Info) ([]byte, error) {
	code, ok := stateCodes[in.State]
	if !ok {
		return nil, fmt.Errorf("stub: invalid state %q", in.State)
	}
	rec := make([]byte, recordFixed, recordMax)
	rec[0] = recordVersion<<4 | code
	if err := hexInto(rec[1:17], in.FileID, "file id"); err != nil {
		return nil, err
	}
	if err := hexInto(rec[17:49], in.ObjectID, "object id"); err != nil {
		return nil, err
	}
	if in.Size < 0 || in.Size > maxSize {
		return nil, fmt.Errorf("stub: size %d out of range", in.Size)
	}
	binary.LittleEndian.PutUint64(rec[49:57], uint64(in.MtimeNS))
	rec = binary.AppendUvarint(rec, uint64(in.Size))
	var release uint64
	if in.ReleaseID != "" {
		r, err := strconv.ParseUint(in.ReleaseID, 10, 64)
		if err != nil || r == 0 {
			return nil, fmt.Errorf("stub: release id %q is not a positive log sequence", in.ReleaseID)
		}
		release = r
	}
	return binary.AppendUvarint(rec, release), nil
}

func hexInto(dst []byte, s, what string) error {
	if len(s) != 2*len(dst) {
		return fmt.Errorf("stub: %s %q is not %d hex digits", what, s, 2*len(dst))
	}
	// Lower case only: the record keeps bytes, and the id read back must
	// be the one written.
	if _, err := hex.Decode(dst, []byte(s)); err != nil || hex.EncodeToString(dst) != s {
		return fmt.Errorf("stub: %s %q is not %d lower-case hex digits", what, s, 2*len(dst))
	}
	return nil
}

func decode(rec []byte) (Info, error) {
	bad := func(why string) (Info, error) {
		return Info{}, fmt.Errorf("%w: %s (%d bytes): %s", ErrBadRecord, Xattr, len(rec), why)
	}
	if len(rec) < recordFixed+2 {
		return bad("too short")
	}
	if v := rec[0] >> 4; v != recordVersion {
		return bad(fmt.Sprintf("version %d, this Strata reads %d", v, recordVersion))
	}
	var in Info
	for s, c := range stateCodes {
		if rec[0]&0xf == c {
			in.State = s
		}
	}
	if in.State == "" {
		return bad(fmt.Sprintf("unknown state %d", rec[0]&0xf))
	}
	in.FileID = hex.EncodeToString(rec[1:17])
	in.ObjectID = hex.EncodeToString(rec[17:49])
	in.MtimeNS = int64(binary.LittleEndian.Uint64(rec[49:57]))
	size, n := binary.Uvarint(rec[recordFixed:])
	if n <= 0 || size > maxSize || n != uvarintLen(size) {
		return bad("bad size")
	}
	in.Size = int64(size)
	release, m := binary.Uvarint(rec[recordFixed+n:])
	if m <= 0 || m != uvarintLen(release) {
		return bad("bad release id")
	}
	if recordFixed+n+m != len(rec) {
		return bad("trailing bytes")
	}
	if release != 0 {
		in.ReleaseID = strconv.FormatUint(release, 10)
	}
	return in, nil
}

// uvarintLen is the length of v's shortest uvarint: decode takes only that
// one, so a record has a single encoding.
func uvarintLen(v uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], v)
}
