//go:build linux

package interceptor_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// fillWhole makes every stub of these tests small enough to be filled
// whole in the background after its first access, as every stub was
// before partially resident stubs: tests of what a recall does once it
// runs to completion (dd-middle: a read in the middle of a 64 MiB stub)
// use it. TestPartialStub covers the default.
func fillWhole(c *interceptor.Config) { c.FillWholeBelow = 1 << 40 }

// resident returns the bytes of path's allocated blocks (st_blocks; no
// open, so no event).
func resident(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// settle waits until no fill is in flight.
func settle(t *testing.T, it *interceptor.Interceptor) {
	t.Helper()
	checkFor(t, 30*time.Second, func() error {
		if n := it.Stats().Filling; n != 0 {
			return fmt.Errorf("%d fills in flight", n)
		}
		return nil
	})
}

// TestPartialStub: a read of a large stub fills what it reads plus its
// read-ahead and nothing more — the file stays partially resident, with
// the right bytes; a restart of the interceptor keeps what was filled and
// refetches none of it; a sequential read still ends with the whole file
// back and proven; a small stub is filled whole after any access.
func TestPartialStub(t *testing.T) {
	stratatest.NeedTool(t, "tail")
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) { c.IdleAfter = 200 * time.Millisecond })
			const size = 96<<20 + 4321 // above FillWholeBelow (64 MiB); EOF not block-aligned
			data := content(900, size)
			path := filepath.Join(e.mnt, "big.bin")
			id := makeStub(t, e.it, e.src, path, data, 0o644)

			// tail -c 100: the last chunk, nothing else.
			sameBytes(t, "tail -c 100", mustRun(t, "tail", "-c", "100", path), data[size-100:])
			settle(t, e.it)
			if got := e.src.objectBytes(id); got == 0 || got > 2*frameSize {
				t.Fatalf("tail -c 100 fetched %d bytes of a %d-byte stub, want at most 2 chunks", got, size)
			}
			if r := resident(t, path); r <= 0 || r >= size/4 {
				t.Fatalf("after tail: %d bytes resident of %d", r, size)
			}
			// dd of 1 MiB in the middle: its chunk and the read-ahead.
			got, err := ddAt(t, path, 40<<20+12345, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "dd at 40 MiB", got, data[40<<20+12345:41<<20+12345])
			settle(t, e.it)
			fetched := e.src.objectBytes(id)
			if fetched > 5*frameSize {
				t.Fatalf("tail and a 1 MiB dd fetched %d bytes, want at most 5 chunks (their chunks and read-ahead)", fetched)
			}
			if _, done := e.comp.get(path); done {
				t.Fatal("a partially read large stub was recalled whole")
			}
			// The idle recall is dropped; the file keeps its filled chunks.
			checkFor(t, 10*time.Second, func() error {
				if n := e.it.Stats().Recalls; n != 0 {
					return fmt.Errorf("%d recalls held", n)
				}
				return nil
			})
			r1 := resident(t, path)
			if r1 >= size/2 {
				t.Fatalf("%d of %d bytes resident", r1, size)
			}

			// A restart (a new interceptor on the same stub) finds the
			// filled chunks and refetches none: the same bytes again cost
			// nothing from the Source.
			if err := e.it.Close(); err != nil {
				t.Fatal(err)
			}
			cfg := interceptor.NewConfig()
			cfg.Mode, cfg.WholeFileBelow, cfg.OnComplete, cfg.OnFail = interceptor.ModePreAccess, 1<<20, e.comp.complete, e.comp.fail
			it2, err := interceptor.Open(cfg, e.src, benchLogger())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { it2.Close() })
			if err := it2.Mark(path); err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "tail -c 100 after restart", mustRun(t, "tail", "-c", "100", path), data[size-100:])
			got, err = ddAt(t, path, 40<<20+12345, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "dd after restart", got, data[40<<20+12345:41<<20+12345])
			settle(t, it2)
			if now := e.src.objectBytes(id); now != fetched {
				t.Fatalf("reads of filled chunks after a restart fetched %d bytes more", now-fetched)
			}

			// sha256sum reads it all, in sequence: the whole file comes back.
			out := mustRun(t, "sha256sum", path)
			sum := sha256.Sum256(data)
			if f := strings.Fields(string(out)); len(f) == 0 || f[0] != hex.EncodeToString(sum[:]) {
				t.Fatalf("sha256sum %s, want %x", out, sum)
			}
			c := e.comp.waitComplete(t, path)
			if c.Size != size || c.Modified || c.Truncated {
				t.Fatalf("completion %+v", c)
			}
			if r := resident(t, path); r < size {
				t.Fatalf("after sha256sum: %d of %d bytes resident", r, size)
			}
			sameBytes(t, "cat after the whole recall", mustRun(t, "cat", path), data)
			if now := e.src.objectBytes(id); now > size+frameSize {
				t.Fatalf("the whole recall fetched %d bytes for a %d-byte stub", now, size)
			}
		})
	}
}

// TestPartialSmallStubFilledWhole: a stub under FillWholeBelow (and above
// WholeFileBelow, so not recalled at open) is filled whole after a read of
// one page.
func TestPartialSmallStubFilledWhole(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			data := content(901, 20<<20+17)
			path := filepath.Join(e.mnt, "small.bin")
			makeStub(t, e.it, e.src, path, data, 0o644)
			got, err := ddAt(t, path, 4096, 4096)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "dd of one page", got, data[4096:8192])
			e.comp.waitComplete(t, path)
			sameBytes(t, "cat", mustRun(t, "cat", path), data)
		})
	}
}

// TestResidentHead: with a resident head and tail, `file` (which reads the
// first and last 7 MiB) and `head` answer from them: no Source read, no
// fill, no recall; the stub keeps head and tail only, and a read past the
// head recalls as usual, with the right bytes.
func TestResidentHead(t *testing.T) {
	stratatest.NeedTool(t, "file")
	stratatest.NeedTool(t, "head")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.ResidentHead, c.ResidentTail = 8<<20, 8<<20
			})
			const size = 80<<20 + 999
			data := content(902, size)
			copy(data, "%PDF-1.4\n") // something for file to name
			path := filepath.Join(e.mnt, "doc.pdf")
			makeStub(t, e.it, e.src, path, data, 0o644)
			if r := resident(t, path); r < 16<<20 || r > 17<<20 {
				t.Fatalf("stub with an 8 MiB head and tail holds %d bytes", r)
			}
			calls := e.src.calls.Load()
			out := mustRun(t, "file", path)
			if !strings.Contains(string(out), "PDF") {
				t.Fatalf("file: %s", out)
			}
			sameBytes(t, "head -c 5000", mustRun(t, "head", "-c", "5000", path), data[:5000])
			sameBytes(t, "tail -c 5000", mustRun(t, "tail", "-c", "5000", path), data[size-5000:])
			if n := e.src.calls.Load() - calls; n != 0 {
				t.Fatalf("file, head and tail of the resident head and tail read the Source %d times", n)
			}
			if st := e.it.Stats(); st.Fills != 0 || st.Recalls != 0 {
				t.Fatalf("stats after reads of resident bytes: %+v", st)
			}
			// Past the head: recalled by range, right bytes.
			got, err := ddAt(t, path, 30<<20, 100)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "dd past the head", got, data[30<<20:30<<20+100])
			sameBytes(t, "cat", mustRun(t, "cat", path), data)
			e.comp.waitComplete(t, path)
		})
	}
}

// TestPartialStubWrites: a write into the resident bytes of a stub — a
// chunk filled by an earlier read, or a resident head, where it is let
// through with no recall — is kept: no fill overwrites it, a read in full
// returns it with every other byte the original's, and the completion
// says the file was modified.
func TestPartialStubWrites(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	stratatest.NeedTool(t, "tail")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) { c.ResidentHead = 1 << 20 })
			const size = 72<<20 + 5000
			data := content(903, size)
			path := filepath.Join(e.mnt, "w.bin")
			makeStub(t, e.it, e.src, path, data, 0o644)
			write := func(off int64, b []byte) {
				t.Helper()
				cmd := exec.Command("dd", "of="+path, "bs=1", fmt.Sprintf("seek=%d", off), "conv=notrunc", "status=none")
				cmd.Stdin = bytes.NewReader(b)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("dd write at %d: %v: %s", off, err, out)
				}
				copy(data[off:], b)
			}
			// Into the resident head: no recall.
			write(1000, []byte("written into the head"))
			if st := e.it.Stats(); st.Fills != 0 || st.Recalls != 0 {
				t.Fatalf("a write into the resident head recalled: %+v", st)
			}
			// Into a chunk a read filled.
			sameBytes(t, "tail -c 100", mustRun(t, "tail", "-c", "100", path), data[size-100:])
			settle(t, e.it)
			write(size-3000, []byte("written into a filled chunk"))
			// Read in full: both writes and every other original byte.
			sameBytes(t, "cat", mustRun(t, "cat", path), data)
			c := e.comp.waitComplete(t, path)
			if !c.Modified {
				t.Fatalf("completion %+v: want modified", c)
			}
			sameBytes(t, "cat after the recall", mustRun(t, "cat", path), data)
		})
	}
}

// TestHeadOnlyWithResidentHead: a head-only program (a thumbnailer, a
// media probe) is served from the head and the block at EOF that the
// release kept, with no Source read, and refused past them.
func TestHeadOnlyWithResidentHead(t *testing.T) {
	stratatest.NeedTool(t, "head")
	stratatest.NeedTool(t, "tail")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.ResidentHead = 1 << 20
				c.Rules = []interceptor.Rule{{Name: "thumbs", Comm: []string{"head", "tail"}, Action: interceptor.ActionHeadOnly}}
			})
			const size = 16<<20 + 100 // the last 100 bytes are the block at EOF
			data := content(904, size)
			path := filepath.Join(e.mnt, "photo.bin")
			makeStub(t, e.it, e.src, path, data, 0o644)
			sameBytes(t, "head -c 100000", mustRun(t, "head", "-c", "100000", path), data[:100000])
			sameBytes(t, "tail -c 100", mustRun(t, "tail", "-c", "100", path), data[size-100:])
			if _, stderr, err := runAs(t, nil, "head", "-c", "2000000", path); err == nil || !strings.Contains(stderr, "Operation not permitted") {
				t.Fatalf("head past the resident head: %v: %q, want EPERM", err, stderr)
			}
			if n := e.src.calls.Load(); n != 0 {
				t.Fatalf("head-only reads of a resident head read the Source %d times", n)
			}
		})
	}
}
