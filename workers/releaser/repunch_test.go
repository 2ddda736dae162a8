//go:build linux

package releaser

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/stub"
)

const testFrame = 1 << 20

// manifestOf is the manifest of data cut into 1 MiB frames.
func manifestOf(data []byte) object.Manifest {
	m := object.Manifest{ObjectID: objectID(data), Size: int64(len(data)), FrameSize: testFrame}
	for off := 0; off < len(data); off += testFrame {
		b := data[off:min(off+testFrame, len(data))]
		s := blake3.Sum256(b)
		m.Frames = append(m.Frames, object.Frame{Offset: int64(off), Size: int64(len(b)), BLAKE3: fmt.Sprintf("%x", s[:])})
	}
	return m
}

// fillBack writes b at off into the stub at path, as a recall's fill
// does: without moving its mtime.
func fillBack(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	before := rawStat(t, path)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{before.Atim, before.Mtim}
	if err := unix.UtimesNanoAt(int(f.Fd()), "", ts, unix.AT_EMPTY_PATH); err != nil {
		t.Fatal(err)
	}
}

// dataSpans lists the data segments of path.
func dataSpans(t *testing.T, path string) [][2]int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	var out [][2]int64
	if err := dataIn(fd, 0, st.Size, func(a, b int64) { out = append(out, [2]int64{a, b}) }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRepunch: the resident ranges of a partially recalled stub are
// punched again only when they are proven the object's: frames wholly
// resident and equal to the manifest's BLAKE3, in a file not written since
// its release; the resident head and tail stay; a frame a program changed
// (even with the mtime put back) or a moved mtime stops it before
// anything is punched; frames only partly resident stay.
func TestRepunch(t *testing.T) {
	for fs, mnt := range mounts(t) {
		t.Run(fs, func(t *testing.T) {
			path := filepath.Join(mnt, "partial.bin")
			data := writeFile(t, path, 10*testFrame+777)
			expect, _ := statOf(t, path)
			const head, tail = 64 << 10, 64 << 10
			if _, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect,
				Roots: []string{mnt}, ResidentHead: head, ResidentTail: tail}); err != nil {
				t.Fatal(err)
			}
			l := stub.LayoutOf(int64(len(data)), head, tail, int64(rawStat(t, path).Blksize))
			if got := dataSpans(t, path); len(got) != 2 || got[0] != [2]int64{0, l.PunchLo} || got[1] != [2]int64{l.PunchHi, int64(len(data))} {
				t.Fatalf("stub with a head and tail: data %v, want [0 %d] and [%d %d]", got, l.PunchLo, l.PunchHi, len(data))
			}
			m := manifestOf(data)
			holds := 0
			req := RepunchRequest{Path: path, Roots: []string{mnt}, ResidentHead: head, ResidentTail: tail,
				Manifest: func(_ context.Context, id string) (object.Manifest, error) { return m, nil },
				Hold:     func(string) error { holds++; return nil }, Unhold: func(string) { holds-- }}

			// Frames 3 and 4 recalled whole, half of frame 7.
			fillBack(t, path, data[3*testFrame:5*testFrame], 3*testFrame)
			fillBack(t, path, data[7*testFrame:7*testFrame+testFrame/2], 7*testFrame)
			res, err := Repunch(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if holds != 0 {
				t.Fatalf("Hold and Unhold unbalanced: %d", holds)
			}
			if res.Frames != 2 || res.Freed < 2*testFrame || res.Unproven != testFrame/2 {
				t.Fatalf("repunch: %+v, want 2 frames freed and half a frame unproven", res)
			}
			want := [][2]int64{{0, l.PunchLo}, {7 * testFrame, 7*testFrame + testFrame/2}, {l.PunchHi, int64(len(data))}}
			if got := dataSpans(t, path); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("data after repunch %v, want %v", got, want)
			}
			if st := rawStat(t, path); st.Mtim.Nano() != expect.MtimeNS {
				t.Fatalf("repunch moved mtime")
			}

			// A frame that differs from the object (mtime put back): nothing
			// is punched.
			bad := bytes.Clone(data[2*testFrame : 3*testFrame])
			bad[100] ^= 1
			fillBack(t, path, data[5*testFrame:6*testFrame], 5*testFrame)
			fillBack(t, path, bad, 2*testFrame)
			before := dataSpans(t, path)
			if _, err := Repunch(context.Background(), req); !errors.Is(err, ErrChanged) {
				t.Fatalf("repunch of a frame a program changed: %v, want ErrChanged", err)
			}
			if got := dataSpans(t, path); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatalf("a refused repunch changed data: %v, was %v", got, before)
			}
			fillBack(t, path, data[2*testFrame:3*testFrame], 2*testFrame) // as it was

			// A write that moves the mtime: refused.
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(data[5*testFrame:5*testFrame+10], 5*testFrame); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if _, err := Repunch(context.Background(), req); !errors.Is(err, ErrChanged) {
				t.Fatalf("repunch of a written stub: %v, want ErrChanged", err)
			}

			// Not a stub: refused.
			other := filepath.Join(mnt, "plain.bin")
			writeFile(t, other, 4096)
			req.Path = other
			if _, err := Repunch(context.Background(), req); !errors.Is(err, ErrNotStub) {
				t.Fatalf("repunch of a plain file: %v, want ErrNotStub", err)
			}
		})
	}
}

func TestLayout(t *testing.T) {
	for _, c := range []struct {
		size, head, tail int64
		lo, hi           int64
	}{
		{0, 0, 0, 0, 0},
		{10000, 0, 0, 0, 12288},              // the whole file, up past EOF
		{8192, 0, 0, 0, 8192},                // block-aligned
		{100000, 5000, 0, 8192, 98304},       // head rounded up; the block at EOF kept
		{98304, 4096, 0, 4096, 98304},        // aligned: nothing kept at EOF
		{100000, 0, 10000, 0, 86016},         // tail rounded out
		{100000, 65536, 65536, 65536, 32768}, // head and tail overlap: nothing punched
	} {
		l := stub.LayoutOf(c.size, c.head, c.tail, 4096)
		lo, hi := l.PunchLo, l.PunchHi
		if c.lo >= c.hi {
			if !l.Empty() {
				t.Errorf("LayoutOf(%d, %d, %d) = [%d, %d), want empty", c.size, c.head, c.tail, lo, hi)
			}
			continue
		}
		if lo != c.lo || hi != c.hi {
			t.Errorf("LayoutOf(%d, %d, %d) = [%d, %d), want [%d, %d)", c.size, c.head, c.tail, lo, hi, c.lo, c.hi)
		}
		if kept := l.Kept(); kept != c.size-min(hi, c.size)+lo {
			t.Errorf("LayoutOf(%d, %d, %d).Kept() = %d", c.size, c.head, c.tail, kept)
		}
	}
}

// TestRepunchVerbHotTree: strata release of a hot tree itself walks it
// (found by the soak: the tree was refused as "outside every hot tree"),
// while a path outside every tree is still refused.
func TestRepunchVerbHotTree(t *testing.T) {
	for fs, mnt := range mounts(t) {
		t.Run(fs, func(t *testing.T) {
			path := filepath.Join(mnt, "d", "partial.bin")
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			data := writeFile(t, path, 3*testFrame)
			expect, _ := statOf(t, path)
			if _, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect,
				Roots: []string{mnt}}); err != nil {
				t.Fatal(err)
			}
			fillBack(t, path, data[testFrame:2*testFrame], testFrame)
			m := manifestOf(data)
			p := &Repuncher{Roots: []string{mnt}, Logger: slog.New(slog.DiscardHandler),
				Manifest: func(context.Context, string) (object.Manifest, error) { return m, nil },
				Hold:     func(string) error { return nil }, Unhold: func(string) {}}
			for _, root := range []string{mnt, mnt + "/"} {
				b, _ := json.Marshal(RepunchVerbRequest{Paths: []string{root}})
				got, err := p.handle(context.Background(), b)
				if err != nil {
					t.Fatalf("repunch of the hot tree %s: %v", root, err)
				}
				if rep := got.(RepunchReply); len(rep.Files) != 1 || rep.Files[0].Path != path {
					t.Fatalf("repunch of the hot tree %s: %+v, want the one stub", root, rep)
				}
				fillBack(t, path, data[testFrame:2*testFrame], testFrame)
			}
			b, _ := json.Marshal(RepunchVerbRequest{Paths: []string{filepath.Dir(mnt)}})
			if _, err := p.handle(context.Background(), b); !errors.Is(err, ErrOutsideRoot) {
				t.Fatalf("repunch of the hot tree's parent: %v, want ErrOutsideRoot", err)
			}
		})
	}
}
