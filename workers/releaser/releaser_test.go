//go:build linux

package releaser

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

const testFileID = "0123456789abcdef0123456789abcdef"

var (
	past1 = time.Date(2020, 1, 2, 3, 4, 5, 600000000, time.UTC)
	past2 = time.Date(2021, 6, 7, 8, 9, 10, 110000000, time.UTC)
)

// mounts returns a fresh loop-mounted filesystem of each hot-tier type.
func mounts(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, fs := range stratatest.FSTypes {
		m[fs] = stratatest.LoopMount(t, fs, 300<<20)
	}
	return m
}

// writeFile creates path with n random bytes, owner 1234:5678, mode 0640
// and old times; it returns the content.
func writeFile(t *testing.T, path string, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, past1, past2); err != nil {
		t.Fatal(err)
	}
	return data
}

func objectID(data []byte) string {
	s := blake3.Sum256(data)
	return fmt.Sprintf("%x", s[:])
}

// statOf returns the FileStat of path (with generation) and its st_blocks.
func statOf(t *testing.T, path string) (events.FileStat, int64) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	fs := fileStat(&st)
	if fs.Generation, err = generation(fd); err != nil {
		t.Fatal(err)
	}
	return fs, st.Blocks
}

func rawStat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func duKiB(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command(stratatest.NeedTool(t, "du"), "-k", path).Output()
	if err != nil {
		t.Fatalf("du %s: %v", path, err)
	}
	f := strings.Fields(string(out))
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		t.Fatalf("du output %q: %v", out, err)
	}
	return n
}

// assertPunched checks that path has no data extent left and at most one
// block (ext4 and XFS may keep a block for the xattrs).
func assertPunched(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if off, err := unix.Seek(fd, 0, unix.SEEK_DATA); !errors.Is(err, unix.ENXIO) {
		t.Fatalf("%s: data left at %d (%v)", path, off, err)
	}
	if st := rawStat(t, path); st.Blocks*512 > 4096 {
		t.Fatalf("%s: %d blocks left", path, st.Blocks)
	}
}

// assertUntouched checks that path holds want and carries no strata xattr.
func assertUntouched(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: content changed (%d bytes, want %d)", path, len(got), len(want))
	}
	if _, err := stub.ReadPath(path); !errors.Is(err, stub.ErrNotManaged) {
		t.Fatalf("%s: want no strata xattrs, got %v", path, err)
	}
}

func TestRelease(t *testing.T) {
	stratatest.NeedRoot(t)
	for fs, mnt := range mounts(t) {
		t.Run(fs, func(t *testing.T) {
			t.Run("frees blocks and keeps metadata", func(t *testing.T) { testFreesBlocks(t, mnt) })
			t.Run("changed", func(t *testing.T) { testChanged(t, mnt) })
			t.Run("mark error", func(t *testing.T) { testMarkError(t, mnt) })
			t.Run("refusals", func(t *testing.T) { testRefusals(t, mnt) })
			t.Run("busy", func(t *testing.T) { testBusy(t, mnt) })
			t.Run("archived clean", func(t *testing.T) { testArchivedClean(t, mnt) })
			t.Run("interrupted", func(t *testing.T) { testInterrupted(t, mnt) })
		})
	}
}

func testFreesBlocks(t *testing.T, mnt string) {
	dir := filepath.Join(mnt, "frees")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "big.bin")
	data := writeFile(t, path, 8<<20+123)
	expect, blocks := statOf(t, path)
	if blocks < 8<<20/512 {
		t.Fatalf("setup: only %d blocks", blocks)
	}
	duBefore := duKiB(t, path)
	var marks []string
	res, err := Release(context.Background(), Request{
		Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt},
		Mark: func(p string) error {
			// The xattrs are durable and the data still there when Mark runs.
			in, err := stub.ReadPath(p)
			if err != nil || in.State != stub.Released {
				return fmt.Errorf("mark before xattrs: %v %v", in, err)
			}
			if st := rawStat(t, p); st.Blocks*512 < int64(len(data)) {
				return fmt.Errorf("mark after punch: %d blocks", st.Blocks)
			}
			marks = append(marks, p)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(marks) != 1 || marks[0] != path {
		t.Fatalf("Mark calls %v", marks)
	}
	assertPunched(t, path)
	st := rawStat(t, path)
	if res.BlocksAfter != st.Blocks || res.Freed() < int64(len(data)) {
		t.Fatalf("blocks after %d (result %+v), before %d", st.Blocks, res, blocks)
	}
	if du := duKiB(t, path); du > 4 || duBefore < 8<<10 {
		t.Fatalf("du -k: before %d, after %d", duBefore, du)
	}
	if st.Size != int64(len(data)) || st.Mode != unix.S_IFREG|0o640 || st.Uid != 1234 || st.Gid != 5678 {
		t.Fatalf("metadata changed: size %d mode %o uid %d gid %d", st.Size, st.Mode, st.Uid, st.Gid)
	}
	if st.Atim.Nano() != past1.UnixNano() || st.Mtim.Nano() != past2.UnixNano() {
		t.Fatalf("times changed: atime %v mtime %v", time.Unix(0, st.Atim.Nano()), time.Unix(0, st.Mtim.Nano()))
	}
	if res.Stat.Size != expect.Size || res.Stat.MtimeNS != expect.MtimeNS || res.Stat.AtimeNS != expect.AtimeNS ||
		res.Stat.Inode != expect.Inode || res.Stat.Generation != expect.Generation || res.Stat.CtimeNS != st.Ctim.Nano() {
		t.Fatalf("result stat %+v, file %+v", res.Stat, st)
	}
	in, err := stub.ReadPath(path)
	if err != nil {
		t.Fatal(err)
	}
	want := stub.Info{FileID: testFileID, ObjectID: objectID(data), State: stub.Released, Size: int64(len(data)), MtimeNS: past2.UnixNano()}
	if in != want {
		t.Fatalf("xattrs %+v, want %+v", in, want)
	}

	// Redelivery: nothing left to punch, Mark is called again.
	res2, err := Release(context.Background(), Request{
		Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt},
		Mark: func(p string) error { marks = append(marks, p); return nil },
	})
	if err != nil || !res2.AlreadyReleased || len(marks) != 2 {
		t.Fatalf("redelivery: %+v, %v, marks %v", res2, err, marks)
	}
	// A release of the stub as another object is refused.
	other := strings.Repeat("ab", 32)
	if _, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: other, Expect: expect, Roots: []string{mnt}}); !errors.Is(err, ErrChanged) {
		t.Fatalf("release as another object: %v", err)
	}
}

func testChanged(t *testing.T, mnt string) {
	dir := filepath.Join(mnt, "changed")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		change func(t *testing.T, path string, data []byte) []byte // returns new content
		reason string
	}{
		{"size", func(t *testing.T, path string, data []byte) []byte {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write([]byte("more")); err != nil {
				t.Fatal(err)
			}
			return append(data, "more"...)
		}, "size changed"},
		{"mtime", func(t *testing.T, path string, data []byte) []byte {
			if err := os.Chtimes(path, past1, past2.Add(time.Second)); err != nil {
				t.Fatal(err)
			}
			return data
		}, "mtime changed"},
		{"rewritten, mtime restored", func(t *testing.T, path string, data []byte) []byte {
			nd := bytes.Clone(data)
			nd[10] ^= 0xff
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(nd[10:11], 10); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := os.Chtimes(path, past1, past2); err != nil {
				t.Fatal(err)
			}
			return nd
		}, "ctime changed"},
		{"replaced by rename", func(t *testing.T, path string, data []byte) []byte {
			nd := bytes.Clone(data)
			nd[0] ^= 1
			tmp := path + ".tmp"
			if err := os.WriteFile(tmp, nd, 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(tmp, past1, past2); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
			return nd
		}, "inode changed"},
		{"truncated", func(t *testing.T, path string, data []byte) []byte {
			if err := os.Truncate(path, 1000); err != nil {
				t.Fatal(err)
			}
			return data[:1000]
		}, "size changed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
			data := writeFile(t, path, 1<<20)
			expect, _ := statOf(t, path)
			now := c.change(t, path, data)
			before := rawStat(t, path)
			_, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt},
				Mark: func(string) error { t.Error("Mark called on a changed file"); return nil }})
			if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("want ErrChanged (%s), got %v", c.reason, err)
			}
			assertUntouched(t, path, now)
			if after := rawStat(t, path); after.Blocks != before.Blocks || after.Ctim != before.Ctim {
				t.Fatalf("file touched: blocks %d→%d", before.Blocks, after.Blocks)
			}
		})
	}
	t.Run("deleted", func(t *testing.T) {
		path := filepath.Join(dir, "deleted")
		data := writeFile(t, path, 4096)
		expect, _ := statOf(t, path)
		os.Remove(path)
		if _, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt}}); !errors.Is(err, ErrChanged) {
			t.Fatalf("want ErrChanged, got %v", err)
		}
	})
}

func testMarkError(t *testing.T, mnt string) {
	path := filepath.Join(mnt, "markerr.bin")
	data := writeFile(t, path, 2<<20)
	expect, blocks := statOf(t, path)
	boom := errors.New("fanotify_mark: EINVAL")
	_, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt},
		Mark: func(string) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("want the mark error, got %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content changed after a mark error (%v)", err)
	}
	if st := rawStat(t, path); st.Blocks < blocks {
		t.Fatalf("blocks %d, want >= %d", st.Blocks, blocks)
	}
	// Not a stub: archived-clean, with the object it equals.
	in, err := stub.ReadPath(path)
	if err != nil || in.State != stub.Archived || in.ObjectID != objectID(data) {
		t.Fatalf("xattrs after mark error: %+v %v", in, err)
	}
}

func testRefusals(t *testing.T, mnt string) {
	root := filepath.Join(mnt, "root")
	outside := filepath.Join(mnt, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(outside, "secret")
	data := writeFile(t, secret, 64<<10)
	expect, _ := statOf(t, secret)
	if err := os.Symlink(outside, filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(root, "filelink")); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(root, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	req := func(path string) Request {
		return Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{root}}
	}
	cases := []struct {
		name string
		req  Request
		want error
	}{
		{"outside", req(secret), ErrOutsideRoot},
		{"dot dot", req(root + "/../outside/secret"), ErrInvalidRequest},
		{"through a directory symlink", req(filepath.Join(root, "dirlink", "secret")), ErrOutsideRoot},
		{"final symlink", req(filepath.Join(root, "filelink")), ErrNotRegular},
		{"the root itself", req(root), ErrOutsideRoot},
		{"fifo", req(fifo), ErrNotRegular},
		{"relative", req("root/x"), ErrInvalidRequest},
		{"bad object id", func() Request { r := req(secret); r.ObjectID = "xyz"; return r }(), ErrInvalidRequest},
		{"no roots", func() Request { r := req(secret); r.Roots = nil; return r }(), ErrInvalidRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Release(context.Background(), c.req)
			if !errors.Is(err, c.want) {
				t.Fatalf("want %v, got %v", c.want, err)
			}
			assertUntouched(t, secret, data)
		})
	}
}

func testBusy(t *testing.T, mnt string) {
	path := filepath.Join(mnt, "busy.bin")
	data := writeFile(t, path, 1<<20)
	expect, _ := statOf(t, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt}})
	f.Close()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("want ErrBusy, got %v", err)
	}
	assertUntouched(t, path, data)
	// Once closed, the same request succeeds.
	if _, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt}}); err != nil {
		t.Fatal(err)
	}
	assertPunched(t, path)
}

func setXattrs(t *testing.T, path string, in stub.Info) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := stub.Write(fd, in); err != nil {
		t.Fatal(err)
	}
}

func testArchivedClean(t *testing.T, mnt string) {
	path := filepath.Join(mnt, "clean.bin")
	data := writeFile(t, path, 1<<20)
	oid := objectID(data)
	// As after a recall: archived-clean, then the scanner's stat.
	setXattrs(t, path, stub.Info{FileID: testFileID, ObjectID: oid, State: stub.Archived, Size: int64(len(data)), MtimeNS: past2.UnixNano()})
	expect, _ := statOf(t, path)
	if _, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: oid, Expect: expect, Roots: []string{mnt}}); err != nil {
		t.Fatal(err)
	}
	if in, err := stub.ReadPath(path); err != nil || in.State != stub.Released {
		t.Fatalf("not released: %+v %v", in, err)
	}
	assertPunched(t, path)

	// Dirty: modified after being archived, stat taken after the change.
	dirty := filepath.Join(mnt, "dirty.bin")
	data = writeFile(t, dirty, 1<<20)
	oid = objectID(data)
	setXattrs(t, dirty, stub.Info{FileID: testFileID, ObjectID: oid, State: stub.Archived, Size: int64(len(data)), MtimeNS: past2.UnixNano()})
	if err := os.WriteFile(dirty, []byte("new content"), 0); err != nil {
		t.Fatal(err)
	}
	expect, _ = statOf(t, dirty)
	_, err := Release(context.Background(), Request{Path: dirty, FileID: testFileID, ObjectID: oid, Expect: expect, Roots: []string{mnt}})
	if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "modified since it was archived") {
		t.Fatalf("want ErrChanged for a dirty file, got %v", err)
	}
	if got, _ := os.ReadFile(dirty); string(got) != "new content" {
		t.Fatalf("dirty file content %q", got)
	}
}

// testInterrupted simulates a crash between the xattrs and the punch: the
// xattrs say released, the data is all there, and ctime moved.
func testInterrupted(t *testing.T, mnt string) {
	path := filepath.Join(mnt, "interrupted.bin")
	data := writeFile(t, path, 3<<20)
	expect, _ := statOf(t, path)
	setXattrs(t, path, stub.Info{FileID: testFileID, ObjectID: objectID(data), State: stub.Released, Size: int64(len(data)), MtimeNS: past2.UnixNano()})
	res, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt}})
	if err != nil || !res.Verified {
		t.Fatalf("resume: %+v %v", res, err)
	}
	assertPunched(t, path)

	// Same, but the content no longer hashes to the object (e.g. a partly
	// recalled stub, or a change while the daemon was down): untouched.
	bad := filepath.Join(mnt, "interrupted-bad.bin")
	data = writeFile(t, bad, 3<<20)
	expect, _ = statOf(t, bad)
	wrong := bytes.Clone(data)
	wrong[5] ^= 1
	setXattrs(t, bad, stub.Info{FileID: testFileID, ObjectID: objectID(wrong), State: stub.Released, Size: int64(len(data)), MtimeNS: past2.UnixNano()})
	blocks := rawStat(t, bad).Blocks
	_, err = Release(context.Background(), Request{Path: bad, FileID: testFileID, ObjectID: objectID(wrong), Expect: expect, Roots: []string{mnt}})
	if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "content hash") {
		t.Fatalf("want ErrChanged (hash), got %v", err)
	}
	if got, _ := os.ReadFile(bad); !bytes.Equal(got, data) || rawStat(t, bad).Blocks != blocks {
		t.Fatal("file touched")
	}
}

func TestReleaseTmpfs(t *testing.T) {
	stratatest.NeedRoot(t)
	stratatest.NeedTool(t, "mount")
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "strata-test", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { stratatest.Unmount(t, mnt) })
	path := filepath.Join(mnt, "f.bin")
	data := writeFile(t, path, 1<<20)
	expect, _ := statOf(t, path)
	_, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt},
		Mark: func(string) error { t.Error("Mark called on tmpfs"); return nil }})
	if !errors.Is(err, ErrUnsupportedFS) || !strings.Contains(err.Error(), "0x1021994") {
		t.Fatalf("want ErrUnsupportedFS naming tmpfs' magic, got %v", err)
	}
	assertUntouched(t, path, data)
}

// TestReleaseCrash kills a child process at each failpoint of a release and
// then lets a second Release (a redelivery) finish the job.
func TestReleaseCrash(t *testing.T) {
	if os.Getenv("STRATA_RELEASER_CHILD") == "1" {
		releaseChild(t)
		return
	}
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	for _, fp := range []string{FailAfterXattr, FailAfterMark, FailAfterPunch} {
		t.Run(fp, func(t *testing.T) {
			path := filepath.Join(mnt, fp)
			data := writeFile(t, path, 1<<20+7)
			expect, _ := statOf(t, path)
			cmd := exec.Command(os.Args[0], "-test.run=^TestReleaseCrash$")
			cmd.Env = append(os.Environ(), "STRATA_RELEASER_CHILD=1", failpoint.EnvVar+"="+fp,
				"CHILD_PATH="+path, "CHILD_ROOT="+mnt, "CHILD_OBJECT="+objectID(data),
				fmt.Sprintf("CHILD_EXPECT=%d,%d,%d,%d,%d", expect.Inode, expect.Generation, expect.CtimeNS, expect.AtimeNS, expect.Dev))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !strings.Contains(string(out), "failpoint "+fp) {
				t.Fatalf("child did not die at %s: %v\n%s", fp, err, out)
			}
			in, err := stub.ReadPath(path)
			if err != nil || in.State != stub.Released {
				t.Fatalf("after crash: %+v %v", in, err)
			}
			res, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt}})
			if err != nil {
				t.Fatalf("redelivery after crash at %s: %v", fp, err)
			}
			assertPunched(t, path)
			st := rawStat(t, path)
			if st.Size != int64(len(data)) || st.Mtim.Nano() != past2.UnixNano() || st.Atim.Nano() != past1.UnixNano() {
				t.Fatalf("after redelivery: %+v, size %d", res, st.Size)
			}
			if fp == FailAfterPunch && !res.AlreadyReleased || fp != FailAfterPunch && !res.Verified {
				t.Fatalf("after crash at %s: result %+v", fp, res)
			}
		})
	}
}

func releaseChild(t *testing.T) {
	var e events.FileStat
	if _, err := fmt.Sscanf(os.Getenv("CHILD_EXPECT"), "%d,%d,%d,%d,%d", &e.Inode, &e.Generation, &e.CtimeNS, &e.AtimeNS, &e.Dev); err != nil {
		t.Fatal(err)
	}
	path := os.Getenv("CHILD_PATH")
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	e.Size, e.MtimeNS = st.Size, st.Mtim.Nano()
	_, err := Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: os.Getenv("CHILD_OBJECT"), Expect: e,
		Roots: []string{os.Getenv("CHILD_ROOT")}, Failpoints: failpoint.New()})
	t.Fatalf("child survived its failpoint: %v", err)
}

// TestReleaseFanotifyMark releases a file with a real FAN_PRE_ACCESS mark,
// as the interceptor sets it. Our fd was opened before the mark, so the
// punch raises no event and cannot stall on our own write lease; a read
// after the release does raise one (the mark works).
func TestReleaseFanotifyMark(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	g, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDWR|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		stratatest.Skip(t, "fanotify pre-content group: %v", err)
	}
	pids := make(chan int32, 16)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(g), Events: unix.POLLIN}}, 100); err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
			n, err := unix.Read(g, buf)
			if err != nil || n < int(unsafe.Sizeof(unix.FanotifyEventMetadata{})) {
				continue
			}
			m := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[0]))
			if m.Mask&unix.FAN_PRE_ACCESS != 0 {
				pids <- m.Pid
			}
			r := unix.FanotifyResponse{Fd: m.Fd, Response: unix.FAN_ALLOW}
			unix.Write(g, (*[unsafe.Sizeof(r)]byte)(unsafe.Pointer(&r))[:])
			unix.Close(int(m.Fd))
		}
	}()
	t.Cleanup(func() { close(stop); <-done; unix.Close(g) })

	path := filepath.Join(mnt, "marked.bin")
	data := writeFile(t, path, 2<<20)
	expect, _ := statOf(t, path)
	start := time.Now()
	_, err = Release(context.Background(), Request{Path: path, FileID: testFileID, ObjectID: objectID(data), Expect: expect, Roots: []string{mnt},
		Mark: func(p string) error {
			return unix.FanotifyMark(g, unix.FAN_MARK_ADD, unix.FAN_PRE_ACCESS, unix.AT_FDCWD, p)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("release took %v: stalled on its own lease", d)
	}
	select {
	case pid := <-pids:
		t.Fatalf("the punch raised a pre-access event (pid %d)", pid)
	default:
	}
	assertPunched(t, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case pid := <-pids:
		if int(pid) != os.Getpid() {
			t.Fatalf("event from pid %d", pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a read of the stub raised no pre-access event: not marked")
	}
}
