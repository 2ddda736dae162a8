//go:build linux

package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// fillDisk takes every free block of the filesystem at mnt with a filler
// file (allocated, not written) and returns its path.
func fillDisk(t *testing.T, mnt string) string {
	t.Helper()
	p := filepath.Join(mnt, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var off int64
	for n := int64(1 << 30); n >= 4096; {
		err := unix.Fallocate(int(f.Fd()), 0, off, n)
		switch {
		case err == nil:
			off += n
		case errors.Is(err, unix.ENOSPC):
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			off = st.Size // a failed fallocate may have allocated part
			n /= 2
		default:
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return p
}

// freeSpace punches n bytes out of the filler.
func freeSpace(t *testing.T, filler string, n int64) {
	t.Helper()
	f, err := os.OpenFile(filler, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, n); err != nil {
		t.Fatal(err)
	}
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// dataIn returns the data segments of path within [lo, hi) (SEEK_DATA
// raises no event).
func dataIn(t *testing.T, path string, lo, hi int64) [][2]int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var segs [][2]int64
	for pos := lo; pos < hi; {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || err == nil && d >= hi {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		segs = append(segs, [2]int64{d, min(h, hi)})
		pos = h
	}
	return segs
}

// TestFillDiskFull: the hot filesystem fills up during a recall. A fill
// that runs out of space partway leaves holes, never data (pages faulted
// in writable and half-copied pages are punched back before the failure
// is reported); the program waiting for it gets ENOSPC, not EIO; once
// space is back, every byte reads right with no manual step, and the
// completion counts every byte. Cases: the fill a program waits for runs
// out of space; a program's own pages fit but the rest of their chunk
// does not; the first fill fits and a background fill does not.
//
// The copy into the mapping is Go's memmove, which on CPUs that do not
// prefer REP MOVS (AMD, Intel without FSRM) stores the first 32 bytes of a
// large copy last: a copy that faults midway leaves them unwritten, zeros
// at the start of a chunk that a failed fill used to leave as data. So
// the test runs twice: with this CPU's memmove, and in a child process
// whose memmove takes that path (GODEBUG=cpu.fsrm=off).
func TestFillDiskFull(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	t.Run("memmove-of-this-cpu", testFillDiskFull)
	if os.Getenv(envMemmoveChild) != "" {
		return
	}
	t.Run("memmove-head-last", func(t *testing.T) {
		stratatest.NeedRoot(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFillDiskFull$/^memmove-of-this-cpu$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), envMemmoveChild+"=1", "GODEBUG="+strings.TrimPrefix(os.Getenv("GODEBUG")+",cpu.fsrm=off", ","))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestFillDiskFull/memmove-of-this-cpu") {
			t.Fatalf("child with GODEBUG=cpu.fsrm=off: %v\n%s", err, out)
		}
	})
}

// envMemmoveChild marks the child run of TestFillDiskFull.
const envMemmoveChild = "STRATA_IT_MEMMOVE_CHILD"

func testFillDiskFull(t *testing.T) {
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			for _, c := range []struct {
				name    string
				off, n  int64 // the first read
				free    int64 // bytes left free for it
				readErr bool  // the first read fails (the bytes it waits for do not fit)
			}{
				{"whole chunk", 0, frameSize, 1 << 20, true},
				{"middle of a chunk", frameSize + frameSize/2, 64 << 10, 1 << 20, false},
				{"background", 0, 4096, frameSize + frameSize/2, false},
			} {
				t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
					e := newEnv(t, fs, interceptor.ModePreAccess, nil)
					// Block-aligned size: no read also waits for the
					// chunk holding EOF (see recall.tail).
					data := content(501, 6*frameSize+8192)
					path := filepath.Join(e.mnt, "full.bin")
					makeStub(t, e.it, e.src, path, data, 0o644)
					filler := fillDisk(t, e.mnt)
					freeSpace(t, filler, c.free)

					got, err := ddAt(t, path, c.off, c.n)
					if c.readErr {
						if err == nil || !strings.Contains(err.Error(), "No space left on device") {
							t.Fatalf("read of %d bytes at %d on a full disk: %d bytes, err %v; want ENOSPC", c.n, c.off, len(got), err)
						}
						if len(got) != 0 {
							t.Fatalf("read on a full disk printed %d bytes", len(got))
						}
					} else {
						if err != nil {
							t.Fatalf("read of %d bytes at %d: %v", c.n, c.off, err)
						}
						sameBytes(t, "first read", got, data[c.off:c.off+c.n])
					}
					checkFor(t, 30*time.Second, func() error {
						if len(e.comp.failures()) == 0 {
							return fmt.Errorf("no failure reported on a full disk")
						}
						if n := e.it.Stats().Filling; n != 0 {
							return fmt.Errorf("%d fills still in flight", n)
						}
						return nil
					})
					for _, f := range e.comp.failures() {
						if !errors.Is(f.Err, unix.ENOSPC) || f.Background == c.readErr {
							t.Errorf("failure %+v: want ENOSPC, background %v", f, !c.readErr)
						}
					}
					// What the failed fills left: only data that holds the
					// original bytes, and in the chunk the failed read
					// waited for, nothing at all.
					onDisk := readRaw(t, e, path)
					for _, s := range dataIn(t, path, 0, int64(len(data))) {
						sameBytes(t, fmt.Sprintf("data %d-%d after the failed fill", s[0], s[1]), onDisk[s[0]:s[1]], data[s[0]:s[1]])
					}
					if segs := dataIn(t, path, 0, frameSize); c.readErr && len(segs) != 0 {
						t.Errorf("data %v left in the chunk whose fill failed", segs)
					}

					if err := os.Remove(filler); err != nil {
						t.Fatal(err)
					}
					syncFS(t, e.mnt)
					sameBytes(t, "cat once space is back", mustRun(t, "cat", path), data)
					comp := e.comp.waitComplete(t, path)
					if comp.Bytes != int64(len(data)) || comp.Size != int64(len(data)) {
						t.Errorf("completion %+v, want all %d bytes written by fills", comp, len(data))
					}
					sameBytes(t, "cat after the recall", mustRun(t, "cat", path), data)
				})
			}
		})
	}
}

// readRaw reads the file at path as it is on disk, holes as zeros: with
// its mark off for the moment, so that the read recalls nothing.
func readRaw(t *testing.T, e *env, path string) []byte {
	t.Helper()
	if err := e.it.Unmark(path); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.it.Mark(path); err != nil {
			t.Fatal(err)
		}
	}()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncFS commits the filesystem at dir, so that freed blocks can be
// allocated again.
func syncFS(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}
