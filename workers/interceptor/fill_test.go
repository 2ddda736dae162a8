//go:build linux

package interceptor_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// A program that reads part of a chunk gets its bytes once the whole chunk
// is verified and its own pages are stored; the rest of the chunk is
// stored right after it is allowed. These tests read through real
// programs (dd) in the middle and at the edges of chunks, while the first
// fill is held in the Source and right after it, and check every byte.

// ddAt returns n bytes of path at off, read by dd.
func ddAt(t *testing.T, path string, off, n int64) ([]byte, error) {
	t.Helper()
	return run(t, "dd", "if="+path, "bs="+strconv.FormatInt(n, 10), "skip="+strconv.FormatInt(off, 10), "count="+strconv.FormatInt(n, 10),
		"iflag=skip_bytes,count_bytes", "status=none")
}

func TestFillFirstPartThenRest(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			data := content(301, 3*frameSize+12345) // last chunk partial, EOF not block-aligned
			for i, c := range []struct{ off, n int64 }{
				{frameSize + frameSize/2 + 100, 4096}, // middle of chunk 1
				{0, 1},                                // first byte
				{2*frameSize - 4096, 4096},            // last page of chunk 1
				{frameSize - 10, 20},                  // across chunks 0 and 1
				{3*frameSize + 12000, 345},            // the partial last chunk, up to EOF
			} {
				path := filepath.Join(e.mnt, fmt.Sprintf("first-%d.bin", i))
				makeStub(t, e.it, e.src, path, data, 0o644)
				// Hold the Source so the first reader waits inside its fill,
				// and start a second reader of another page of the same
				// chunk meanwhile: both must get the original bytes.
				gate := make(chan struct{})
				var gated atomic.Int32
				e.src.mu.Lock()
				e.src.gate, e.src.allow, e.src.onGate = gate, nil, func() { gated.Add(1) }
				e.src.mu.Unlock()
				type result struct {
					what   string
					off, n int64
					got    []byte
					err    error
				}
				results := make(chan result, 2)
				var wg sync.WaitGroup
				read := func(what string, off, n int64) {
					defer wg.Done()
					got, err := ddAt(t, path, off, n)
					results <- result{what, off, n, got, err}
				}
				wg.Add(1)
				go read("held reader", c.off, c.n)
				checkFor(t, 10*time.Second, func() error {
					if gated.Load() == 0 {
						return fmt.Errorf("the first fill has not reached the Source")
					}
					return nil
				})
				other := c.off/frameSize*frameSize + frameSize - 4096 // last page of the same chunk
				if other+4096 > int64(len(data)) {
					other = c.off / frameSize * frameSize
				}
				wg.Add(1)
				go read("reader of the same chunk", other, 4096)
				e.src.mu.Lock()
				e.src.gate = nil
				e.src.mu.Unlock()
				close(gate)
				wg.Wait()
				close(results)
				for r := range results {
					if r.err != nil {
						t.Fatalf("case %d, %s at %d: %v", i, r.what, r.off, r.err)
					}
					end := min(r.off+r.n, int64(len(data)))
					sameBytes(t, fmt.Sprintf("case %d, %s at %d", i, r.what, r.off), r.got, data[r.off:end])
				}
				// Right after: every page of the chunks that were touched.
				for off := c.off / frameSize * frameSize; off < min(c.off+c.n+frameSize, int64(len(data))); off += 256 << 10 {
					got, err := ddAt(t, path, off, 256<<10)
					if err != nil {
						t.Fatalf("case %d, read at %d: %v", i, off, err)
					}
					sameBytes(t, fmt.Sprintf("case %d, bytes at %d", i, off), got, data[off:min(off+256<<10, int64(len(data)))])
				}
				sameBytes(t, fmt.Sprintf("case %d, cat", i), mustRun(t, "cat", path), data)
				e.comp.waitComplete(t, path)
				if fails := e.comp.failures(); len(fails) != 0 {
					t.Fatalf("case %d: failures %+v", i, fails)
				}
			}
		})
	}
}

// TestFillFirstPartSourceDown: with the Source failing, a read in the
// middle of a chunk (where the fill would be stored in two parts) gets EIO
// and no byte, every time; once the Source is back, the right bytes.
func TestFillFirstPartSourceDown(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			data := content(302, 2*frameSize)
			path := filepath.Join(e.mnt, "down.bin")
			makeStub(t, e.it, e.src, path, data, 0o644)
			e.src.fail.Store(true)
			for i := range 30 {
				off := int64(frameSize/2 + i*4096 + 17)
				got, err := ddAt(t, path, off, 100)
				if err == nil || !strings.Contains(err.Error(), "Input/output error") {
					t.Fatalf("read %d at %d with the Source down: %d bytes, err %v; want EIO", i, off, len(got), err)
				}
				if len(got) != 0 {
					t.Fatalf("read %d at %d with the Source down printed %d bytes", i, off, len(got))
				}
			}
			for _, f := range e.comp.failures() {
				if f.Background {
					t.Fatalf("a fill that never stored reported as background: %+v", f)
				}
			}
			e.src.fail.Store(false)
			got, err := ddAt(t, path, frameSize/2+17, 100)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "read once the Source is back", got, data[frameSize/2+17:frameSize/2+117])
			sameBytes(t, "cat", mustRun(t, "cat", path), data)
			e.comp.waitComplete(t, path)
			// Whole and durable: no hole left.
			fd, err := unix.Open(path, unix.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if h, err := unix.Seek(fd, 0, unix.SEEK_HOLE); err != nil || h != int64(len(data)) {
				t.Fatalf("first hole at %d (%v), want none before EOF %d", h, err, len(data))
			}
		})
	}
}

// TestRecallKeepsMtime: a recall is not a modification. However its chunks
// are filled (one sequential reader, readers at several offsets at once,
// background fills in parallel), the file ends with the mtime it had as a
// stub, so make, rsync and backup tools, and Strata's own scanner, see it
// unchanged.
func TestRecallKeepsMtime(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		e := newEnv(t, fs, mode, nil)
		data := content(401, 5*frameSize+4321)
		old := time.Date(2020, 2, 2, 2, 2, 2, 123456789, time.UTC)
		for _, readers := range []int{1, 4} {
			path := filepath.Join(e.mnt, fmt.Sprintf("mtime-%d.bin", readers))
			makeStub(t, e.it, e.src, path, data, 0o644)
			ts := []unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}
			if err := unix.UtimesNano(path, ts); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for j := range readers {
				wg.Go(func() {
					off := int64(j) * int64(len(data)) / int64(readers)
					got, err := ddAt(t, path, off, int64(len(data))-off)
					if err != nil || string(got) != string(data[off:]) {
						t.Errorf("%s: reader at %d: wrong bytes (%v)", path, off, err)
					}
				})
			}
			wg.Wait()
			e.comp.waitComplete(t, path)
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				t.Fatal(err)
			}
			if got := time.Unix(st.Mtim.Unix()); !got.Equal(old) {
				t.Errorf("%s (%d readers): mtime %s after the recall, want %s", path, readers, got.UTC(), old)
			}
		}
	})
}
