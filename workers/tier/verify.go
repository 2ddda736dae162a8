package tier

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/zeebo/blake3"
)

// copyBuf is the size of the buffers used to hash and copy packed bytes.
const copyBuf = 256 << 10

// Hash reads r to EOF and returns the hex BLAKE3-256 of its bytes and their
// number. ctx is checked between reads.
func Hash(ctx context.Context, r io.Reader) (sum string, n int64, err error) {
	h := blake3.New()
	buf := make([]byte, copyBuf)
	for {
		if err := ctx.Err(); err != nil {
			return "", n, err
		}
		k, rerr := r.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if rerr == io.EOF {
			return hex.EncodeToString(h.Sum(nil)), n, nil
		}
		if rerr != nil {
			return "", n, rerr
		}
	}
}

// Check reads r to EOF and returns an error wrapping ErrCorrupt unless its
// bytes have exactly size length and BLAKE3 sum. Read errors are returned
// as they are (wrapped), so a network failure is not mistaken for damage.
func Check(ctx context.Context, r io.Reader, size int64, sum string) error {
	got, n, err := Hash(ctx, r)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if n != size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, n, size)
	}
	if got != sum {
		return fmt.Errorf("%w: blake3 %s, want %s", ErrCorrupt, got, sum)
	}
	return nil
}

// VerifyingReader passes the bytes of r through and checks them against
// size and sum. The read that would deliver the last byte first confirms
// that r has no more bytes and that the BLAKE3 matches; on a mismatch it
// returns an error wrapping ErrCorrupt instead of those bytes, so an
// uploader that stops reading after size bytes can still never complete an
// upload of wrong bytes. A short source is ErrCorrupt too.
type VerifyingReader struct {
	r    io.Reader
	size int64
	sum  string
	h    hash.Hash
	n    int64
	err  error // sticky: io.EOF when done and good
}

// NewVerifyingReader returns a VerifyingReader of r.
func NewVerifyingReader(r io.Reader, size int64, sum string) *VerifyingReader {
	return &VerifyingReader{r: r, size: size, sum: sum, h: blake3.New()}
}

// Read implements io.Reader.
func (v *VerifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.n == v.size {
		v.err = v.finish()
		if v.err == nil {
			v.err = io.EOF
		}
		return 0, v.err
	}
	if rem := v.size - v.n; int64(len(p)) > rem {
		p = p[:rem]
	}
	k, err := v.r.Read(p)
	v.h.Write(p[:k])
	v.n += int64(k)
	if v.n == v.size {
		if ferr := v.finish(); ferr != nil {
			v.err = ferr
			return 0, ferr // withhold the last bytes
		}
		v.err = io.EOF
		return k, nil
	}
	if err == io.EOF {
		v.err = fmt.Errorf("%w: source ended after %d of %d bytes", ErrCorrupt, v.n, v.size)
		return k, v.err
	}
	if err != nil {
		v.err = fmt.Errorf("read source: %w", err)
		return k, v.err
	}
	return k, nil
}

// finish checks that the source is at EOF and the sum matches.
func (v *VerifyingReader) finish() error {
	var one [1]byte
	for i := 0; ; i++ {
		k, err := v.r.Read(one[:])
		if k > 0 {
			return fmt.Errorf("%w: source longer than %d bytes", ErrCorrupt, v.size)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read source: %w", err)
		}
		if i > 100 {
			return fmt.Errorf("read source: %w", io.ErrNoProgress)
		}
	}
	if got := hex.EncodeToString(v.h.Sum(nil)); got != v.sum {
		return fmt.Errorf("%w: source blake3 %s, want %s", ErrCorrupt, got, v.sum)
	}
	return nil
}

// ExactReader wraps rc so that reading it yields exactly n bytes: a source
// that ends early yields an error wrapping io.ErrUnexpectedEOF instead of a
// silent short read.
func ExactReader(rc io.ReadCloser, n int64) io.ReadCloser {
	return &exactReader{rc: rc, rem: n}
}

type exactReader struct {
	rc  io.ReadCloser
	rem int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.rem <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.rem {
		p = p[:e.rem]
	}
	k, err := e.rc.Read(p)
	e.rem -= int64(k)
	if err == io.EOF {
		if e.rem > 0 {
			return k, fmt.Errorf("ranged read: %w (%d bytes missing)", io.ErrUnexpectedEOF, e.rem)
		}
		return k, nil
	}
	return k, err
}

func (e *exactReader) Close() error { return e.rc.Close() }

// SumFile returns the content of an object's .b3 file: one line in b3sum
// format, so `b3sum -c` checks the object.
func SumFile(id, packedSum string) []byte {
	return []byte(packedSum + "  " + id + ".zst\n")
}

// ParseSums parses one or more lines in b3sum format ("<sum>  <id>.zst")
// and returns the sum of each object id. Lines that are not of this form are
// an error.
func ParseSums(b []byte) (map[string]string, error) {
	out := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		sum, name, ok := strings.Cut(line, "  ")
		id, isZst := strings.CutSuffix(name, ".zst")
		if !ok || !isZst || !isHex64(sum) || !isHex64(id) {
			return nil, fmt.Errorf("sum line %q: want \"<blake3>  <id>.zst\"", line)
		}
		out[id] = sum
	}
	return out, sc.Err()
}

// ParseSum parses the .b3 file of object id and returns its packed sum.
func ParseSum(id string, b []byte) (string, error) {
	sums, err := ParseSums(b)
	if err != nil {
		return "", err
	}
	sum, ok := sums[id]
	if !ok || len(sums) != 1 {
		return "", fmt.Errorf("sum file of %s: no single line for this object", id)
	}
	return sum, nil
}
