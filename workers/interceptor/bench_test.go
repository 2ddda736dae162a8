//go:build linux

package interceptor_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	zobject "github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// The hot-path benchmarks of docs/BENCHMARKS-hotpath.md (issue 4 item 9).
// BenchmarkHotPath is heavy (a 4 GiB loop image per filesystem, ~1 min
// each): run it once per sub-benchmark with -benchtime=1x. It measures
// rounds (STRATA_BENCH_ROUNDS, default 7) in alternating order and reports
// medians. Plain `go test` (no -bench) never runs it.

const (
	benchSmallFiles = 20000
	benchStubs      = 10000
	benchBig        = 1 << 30
)

// objSource reads verified bytes from seekable zstd objects on local disk
// (workers/object checks each frame's BLAKE3).
type objSource struct {
	mu      sync.Mutex
	readers map[string]*zobject.Reader
}

func (s *objSource) ReadVerified(_ context.Context, st stub.Info, p []byte, off int64) (string, error) {
	s.mu.Lock()
	r := s.readers[st.ObjectID]
	s.mu.Unlock()
	if r == nil {
		return "", fmt.Errorf("object %s not on this tier", st.ObjectID)
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return "dir", nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return "", err
}

// benchData writes n bytes of half random, half text (per 4 MiB: the
// first half random) to w: compressible about 2:1, like FIELDNOTES' mix.
func benchData(w io.Writer, seed uint64, n int64) error {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), 9}))
	text := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog; 0123456789\n", 1<<10))
	buf := make([]byte, 4<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		half := len(buf) / 2
		for i := 0; i < half; i += 8 {
			v := r.Uint64()
			for j := range 8 {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		for i := half; i < len(buf); i += len(text) {
			copy(buf[i:], text)
		}
		if _, err := w.Write(buf[:min(int64(len(buf)), n-off)]); err != nil {
			return err
		}
	}
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchFS is one loop-mounted filesystem of BenchmarkHotPath. Its parts
// are set up lazily, by the first sub-benchmark that needs them, with
// cleanups on the filesystem's benchmark (they outlive the sub-benchmark).
type benchFS struct {
	mnt     string
	cleanup func(func()) // of the filesystem's benchmark
	src     *objSource

	// resident part
	fuseMnt string
	small   []string // resident 4 KiB files
	big     string   // resident 1 GiB file
	stubs   []string // 10k marked 4 KiB stubs

	// recall part: a 1 MiB and a 1 GiB file with their objects
	rs *recallStubs
}

type recallStubs struct {
	small, big       string
	mSmall, mBig     zobject.Manifest
	objSmall, objBig string
	bigSHA256        string // of the 1 GiB file's content
}

func newBenchFS(tb testing.TB, fstype string) *benchFS {
	tb.Helper()
	stratatest.NeedRoot(tb)
	b := &benchFS{mnt: stratatest.LoopMount(tb, fstype, 4<<30), cleanup: tb.Cleanup,
		src: &objSource{readers: map[string]*zobject.Reader{}}}
	for _, d := range []string{"small", "stubs", "tier"} {
		if err := os.Mkdir(filepath.Join(b.mnt, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	prefill(tb, b.mnt)
	return b
}

// prefill writes the free space of the filesystem at mnt once and frees it
// again: the loop image is a sparse file, and a block the host has never
// written costs an allocation in the host filesystem on its first write,
// which would burden whichever measurement writes it first.
func prefill(tb testing.TB, mnt string) {
	tb.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		tb.Fatal(err)
	}
	n := int64(st.Bavail)*st.Bsize - 64<<20
	p := filepath.Join(mnt, "prefill")
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < n; off += int64(len(buf)) {
		if _, err := f.Write(buf[:min(int64(len(buf)), n-off)]); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	if err := os.Remove(p); err != nil {
		tb.Fatal(err)
	}
	syncfs(tb, mnt)
}

// openReadClose opens, reads 4 KiB from and closes every file.
func openReadClose(paths []string) (time.Duration, error) {
	buf := make([]byte, 4096)
	t0 := time.Now()
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		if n, err := unix.Read(fd, buf); err != nil || n != 4096 {
			unix.Close(fd)
			return 0, fmt.Errorf("read %s: %d, %v", p, n, err)
		}
		unix.Close(fd)
	}
	return time.Since(t0), nil
}

func seqRead(path string) (time.Duration, error) {
	buf := make([]byte, 1<<20)
	t0 := time.Now()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var total int64
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		total += int64(n)
	}
	if total != benchBig {
		return 0, fmt.Errorf("read %d bytes of %s", total, path)
	}
	return time.Since(t0), nil
}

func benchLogger() *slog.Logger { return slog.New(slog.NewTextHandler(logOut(), nil)) }

// setupResident makes the resident files, the 10k stubs and a FUSE
// loopback of the whole filesystem (once).
func (b *benchFS) setupResident(t testing.TB) {
	t.Helper()
	if b.fuseMnt != "" {
		return
	}
	page := content(5, 4096)
	for i := range benchSmallFiles {
		p := filepath.Join(b.mnt, "small", strconv.Itoa(i))
		page[0] = byte(i)
		if err := os.WriteFile(p, page, 0o644); err != nil {
			t.Fatal(err)
		}
		b.small = append(b.small, p)
	}
	b.big = filepath.Join(b.mnt, "big.bin")
	f, err := os.Create(b.big)
	if err != nil {
		t.Fatal(err)
	}
	if err := benchData(f, 1, benchBig); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// 10k stubs: xattrs, then released (marked and punched) by an
	// interceptor that is closed again.
	it, err := interceptor.Open(interceptor.NewConfig(), b.src, benchLogger())
	if err != nil {
		t.Fatal(err)
	}
	for i := range benchStubs {
		p := filepath.Join(b.mnt, "stubs", strconv.Itoa(i))
		if err := os.WriteFile(p, page, 0o644); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Open(p, unix.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = stub.Write(fd, stub.Info{FileID: testFileID("s" + strconv.Itoa(i)), ObjectID: testFileID("none") + testFileID("none"), State: stub.Released, Size: 4096})
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		if err := it.Release(p); err != nil {
			t.Fatal(err)
		}
		b.stubs = append(b.stubs, p)
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	fuseMnt, err := os.MkdirTemp("", "strata-bench-fuse-")
	if err != nil {
		t.Fatal(err)
	}
	root, err := fs.NewLoopbackRoot(b.mnt)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fs.Mount(fuseMnt, root, &fs.Options{MountOptions: fuse.MountOptions{DirectMount: true, DirectMountStrict: true, FsName: "strata-bench"}})
	if err != nil {
		t.Fatalf("fuse mount: %v", err)
	}
	b.cleanup(func() {
		if err := srv.Unmount(); err != nil {
			// Leave the directory: removing a mount point still mounted fails anyway.
			fmt.Fprintf(os.Stderr, "fuse unmount %s: %v\n", fuseMnt, err)
			return
		}
		os.Remove(fuseMnt)
	})
	b.fuseMnt = fuseMnt
}

// openMarked opens an interceptor and marks every stub (as the daemon does
// at start, from the catalog).
func (b *benchFS) openMarked(t testing.TB) *interceptor.Interceptor {
	t.Helper()
	it, err := interceptor.Open(interceptor.NewConfig(), b.src, benchLogger())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range b.stubs {
		if err := it.Mark(p); err != nil {
			t.Fatal(err)
		}
	}
	return it
}

func onFUSE(b *benchFS, paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Join(b.fuseMnt, strings.TrimPrefix(p, b.mnt))
	}
	return out
}

func benchRounds(tb testing.TB) int {
	s := os.Getenv("STRATA_BENCH_ROUNDS")
	if s == "" {
		return 7
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		tb.Fatalf("STRATA_BENCH_ROUNDS=%q: want a positive count", s)
	}
	return v
}

// BenchmarkHotPath measures, per filesystem (ext4, XFS: a 4 GiB loop
// image each), side by side in one run:
//
//   - resident: 20k open/read 4 KiB/close and a 1 GiB sequential read of
//     resident files, natively and with an interceptor marking 10k stubs
//     on the same filesystem (alternating order), and through a go-fuse
//     loopback (kernel passthrough) beside them. Ratios are native time /
//     measured time (1.0 = no cost).
//   - ttfb: open + 1-byte pread of a freshly released 1 MiB stub (recalled
//     whole at open) and of a 1 GiB stub at byte 0 and at 700 MiB, with the
//     object in the page cache and evicted.
//   - recall: `cat` of the whole 1 GiB stub until the recall completes,
//     against `zstd -d` of the same object to the same filesystem.
//
// Run with -benchtime=1x: each sub-benchmark does all its rounds in one
// iteration (STRATA_BENCH_ROUNDS, default 7) and reports medians.
func BenchmarkHotPath(bb *testing.B) {
	rounds := benchRounds(bb)
	for _, fstype := range stratatest.FSTypes {
		bb.Run(fstype, func(bb *testing.B) {
			b := newBenchFS(bb, fstype)
			bb.Run("resident", func(bb *testing.B) {
				b.setupResident(bb)
				bb.Logf("loadavg before: %s", loadavg())
				hotPath(bb, b, rounds)
				bb.Logf("loadavg after: %s", loadavg())
			})
			bb.Run("ttfb", func(bb *testing.B) {
				b.setupRecall(bb)
				bb.Logf("loadavg before: %s", loadavg())
				ttfbBench(bb, b, rounds)
				bb.Logf("loadavg after: %s", loadavg())
			})
			bb.Run("recall", func(bb *testing.B) {
				zstdCLI := stratatest.NeedTool(bb, "zstd")
				b.setupRecall(bb)
				bb.Logf("loadavg before: %s", loadavg())
				recallBench(bb, b, zstdCLI, rounds)
				bb.Logf("loadavg after: %s", loadavg())
			})
		})
	}
}

func hotPath(bb *testing.B, b *benchFS, rounds int) {
	fuseSmall, fuseBig := onFUSE(b, b.small), onFUSE(b, []string{b.big})[0]
	// Warm the page cache on both paths.
	if _, err := openReadClose(b.small); err != nil {
		bb.Fatal(err)
	}
	if _, err := seqRead(b.big); err != nil {
		bb.Fatal(err)
	}
	var smallA, smallB, smallF, bigA, bigB, bigF []time.Duration
	measure := func(withIt bool) {
		var it *interceptor.Interceptor
		if withIt {
			it = b.openMarked(bb)
		}
		s, err := openReadClose(b.small)
		if err != nil {
			bb.Fatal(err)
		}
		g, err := seqRead(b.big)
		if err != nil {
			bb.Fatal(err)
		}
		if withIt {
			if st := it.Stats(); st.Events != 0 {
				bb.Fatalf("resident files raised %d events", st.Events)
			}
			it.Close()
			smallB, bigB = append(smallB, s), append(bigB, g)
		} else {
			smallA, bigA = append(smallA, s), append(bigA, g)
		}
	}
	bb.ResetTimer()
	for r := range rounds {
		if r%2 == 0 {
			measure(false)
			measure(true)
		} else {
			measure(true)
			measure(false)
		}
		s, err := openReadClose(fuseSmall)
		if err != nil {
			bb.Fatal(err)
		}
		g, err := seqRead(fuseBig)
		if err != nil {
			bb.Fatal(err)
		}
		smallF, bigF = append(smallF, s), append(bigF, g)
	}
	bb.StopTimer()
	ma, mb, mf := median(smallA), median(smallB), median(smallF)
	ga, gb, gf := median(bigA), median(bigB), median(bigF)
	bb.Logf("rounds=%d loadavg=%q", rounds, loadavg())
	bb.Logf("| 20k x open/read 4KiB/close | native %v (%.0f files/s) | interceptor+10k marks %v ratio %.3f | FUSE loopback %v ratio %.3f |",
		ma, float64(benchSmallFiles)/ma.Seconds(), mb, float64(ma)/float64(mb), mf, float64(ma)/float64(mf))
	bb.Logf("| 1 GiB sequential read | native %v (%.2f GB/s) | interceptor+10k marks %v ratio %.3f | FUSE loopback %v ratio %.3f |",
		ga, float64(benchBig)/ga.Seconds()/1e9, gb, float64(ga)/float64(gb), gf, float64(ga)/float64(gf))
	bb.Logf("raw native small %v", smallA)
	bb.Logf("raw interceptor small %v", smallB)
	bb.Logf("raw native big %v", bigA)
	bb.Logf("raw interceptor big %v", bigB)
	bb.ReportMetric(0, "ns/op")
	bb.ReportMetric(float64(ma)/float64(mb), "small-ratio")
	bb.ReportMetric(float64(ma)/float64(mf), "small-fuse-ratio")
	bb.ReportMetric(float64(ga)/float64(gb), "seq-ratio")
	bb.ReportMetric(float64(ga)/float64(gf), "seq-fuse-ratio")
}

// packObject packs src into the tier directory as a seekable zstd object
// (4 MiB frames) and registers it with the source.
func (b *benchFS) packObject(t testing.TB, src string) (zobject.Manifest, string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	objPath := filepath.Join(b.mnt, "tier", filepath.Base(src)+".zst")
	out, err := os.Create(objPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := zobject.Pack(context.Background(), in, out, zobject.Options{FrameSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	rf, err := os.Open(objPath)
	if err != nil {
		t.Fatal(err)
	}
	b.cleanup(func() { rf.Close() })
	b.src.mu.Lock()
	b.src.readers[m.ObjectID] = zobject.NewReader(rf, m)
	b.src.mu.Unlock()
	return m, objPath
}

// makeBenchStub writes n bytes of bench data at path and packs its object;
// the file is not released yet.
func (b *benchFS) makeBenchStub(t testing.TB, path string, n int64) (zobject.Manifest, string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := benchData(f, uint64(n), n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return b.packObject(t, path)
}

// setupRecall makes the 1 MiB and 1 GiB files and their objects (once).
func (b *benchFS) setupRecall(t testing.TB) *recallStubs {
	t.Helper()
	if b.rs != nil {
		return b.rs
	}
	rs := &recallStubs{small: filepath.Join(b.mnt, "ttfb-1m.bin"), big: filepath.Join(b.mnt, "ttfb-1g.bin")}
	rs.mSmall, rs.objSmall = b.makeBenchStub(t, rs.small, 1<<20)
	rs.mBig, rs.objBig = b.makeBenchStub(t, rs.big, benchBig)
	rs.bigSHA256 = fileSHA256(t, rs.big)
	b.rs = rs
	return rs
}

// rerelease makes path a stub again (state released, mark, punch), then
// syncs the filesystem so that what follows does not pay for the writeback
// of the punch or of an earlier recall.
func rerelease(t testing.TB, it *interceptor.Interceptor, path string, m zobject.Manifest) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = stub.Write(fd, stub.Info{FileID: filepath.Base(path), ObjectID: m.ObjectID, State: stub.Released, Size: m.Size})
	if err == nil {
		err = unix.Syncfs(fd) // the recall before this one left its bytes dirty
	}
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	if err := it.Release(path); err != nil {
		t.Fatal(err)
	}
	syncfs(t, filepath.Dir(path))
}

func syncfs(t testing.TB, dir string) {
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

func dropObjectCache(t testing.TB, path string) {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Fdatasync(fd)
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// ttfbSource is a program that opens a file, reads one byte at an offset
// and prints the time that took (ns) and the byte. TTFB is measured by a
// separate process, as a user's program would see it: a reader inside this
// test process would also wait for a Go scheduler slot on the cores the
// interceptor's fills are using.
const ttfbSource = `package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	off, _ := strconv.ParseInt(os.Args[2], 10, 64)
	var b [1]byte
	t0 := time.Now()
	fd, err := syscall.Open(os.Args[1], syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n, err := syscall.Pread(fd, b[:], off)
	d := time.Since(t0)
	if err != nil || n != 1 {
		fmt.Fprintln(os.Stderr, "pread:", n, err)
		os.Exit(1)
	}
	fmt.Println(d.Nanoseconds(), b[0])
}
`

// buildTTFB builds the ttfb program once per benchmark run.
func buildTTFB(tb testing.TB) string {
	tb.Helper()
	goTool := stratatest.NeedTool(tb, "go")
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(ttfbSource), 0o644); err != nil {
		tb.Fatal(err)
	}
	bin := filepath.Join(dir, "ttfb")
	cmd := exec.Command(goTool, "build", "-o", bin, "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build ttfb: %v: %s", err, out)
	}
	return bin
}

// ttfb runs the ttfb program on path at off and returns the time it
// measured and the byte it read.
func ttfb(prog, path string, off int64) (time.Duration, byte, error) {
	out, err := exec.Command(prog, path, strconv.FormatInt(off, 10)).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ttfb %s at %d: %w", path, off, err)
	}
	var ns int64
	var c byte
	if _, err := fmt.Sscan(string(out), &ns, &c); err != nil {
		return 0, 0, fmt.Errorf("ttfb output %q: %w", out, err)
	}
	return time.Duration(ns), c, nil
}

// benchByte returns the byte at off of benchData(seed, ...).
func benchByte(t testing.TB, seed uint64, off int64) byte {
	t.Helper()
	w := &byteAt{off: off}
	if err := benchData(w, seed, (off/(4<<20)+1)*(4<<20)); err != nil {
		t.Fatal(err)
	}
	return w.b
}

// byteAt is a writer that keeps the byte written at offset off.
type byteAt struct {
	pos, off int64
	b        byte
}

func (w *byteAt) Write(p []byte) (int, error) {
	if w.off >= w.pos && w.off < w.pos+int64(len(p)) {
		w.b = p[w.off-w.pos]
	}
	w.pos += int64(len(p))
	return len(p), nil
}

// waitCompleted waits for the completion of path on done.
func waitCompleted(t testing.TB, done <-chan string, path string) {
	t.Helper()
	select {
	case p := <-done:
		if p != path {
			t.Fatalf("completed %s, want %s", p, path)
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("recall of %s did not complete", path)
	}
}

func ttfbBench(bb *testing.B, b *benchFS, rounds int) {
	rs := b.rs
	prog := buildTTFB(bb)
	done := make(chan string, 4)
	cfg := interceptor.NewConfig()
	cfg.OnComplete = func(c interceptor.Completion) { done <- c.Path }
	type sample struct{ warm, cold []time.Duration }
	var s1m, s1g, s1gMid sample
	cases := []struct {
		path string
		m    zobject.Manifest
		obj  string
		off  int64
		want byte
		s    *sample
	}{
		{rs.small, rs.mSmall, rs.objSmall, 0, benchByte(bb, 1<<20, 0), &s1m},
		{rs.big, rs.mBig, rs.objBig, 0, benchByte(bb, benchBig, 0), &s1g},
		{rs.big, rs.mBig, rs.objBig, 700 << 20, benchByte(bb, benchBig, 700<<20), &s1gMid},
	}
	bb.ResetTimer()
	for range rounds {
		for _, cold := range []bool{false, true} {
			for _, c := range cases {
				bb.StopTimer()
				it, err := interceptor.Open(cfg, b.src, benchLogger())
				if err != nil {
					bb.Fatal(err)
				}
				rerelease(bb, it, c.path, c.m)
				if cold {
					dropObjectCache(bb, c.obj)
				}
				bb.StartTimer()
				d, got, err := ttfb(prog, c.path, c.off)
				if err != nil {
					bb.Fatal(err)
				}
				bb.StopTimer()
				if got != c.want {
					bb.Fatalf("%s byte %d = %#x, want %#x", c.path, c.off, got, c.want)
				}
				if c.path == rs.small {
					waitCompleted(bb, done, rs.small) // recalled whole at open (under WholeFileBelow)
				}
				it.Close()
				if cold {
					c.s.cold = append(c.s.cold, d)
				} else {
					c.s.warm = append(c.s.warm, d)
				}
			}
		}
	}
	rep := func(name string, s sample) {
		bb.Logf("| TTFB %s | object in page cache %v | object evicted (fadvise) %v |", name, median(s.warm), median(s.cold))
	}
	rep("1 MiB stub (recalled whole at open)", s1m)
	rep("1 GiB stub, byte 0", s1g)
	rep("1 GiB stub, byte 700 MiB", s1gMid)
	warm := float64(median(s1g.warm)) / float64(median(s1m.warm))
	cold := float64(median(s1g.cold)) / float64(median(s1m.cold))
	bb.Logf("TTFB ratio 1GiB/1MiB: warm %.2f cold %.2f", warm, cold)
	bb.Logf("raw 1 MiB warm %v cold %v", s1m.warm, s1m.cold)
	bb.Logf("raw 1 GiB@0 warm %v cold %v", s1g.warm, s1g.cold)
	bb.Logf("raw 1 GiB@700M warm %v cold %v", s1gMid.warm, s1gMid.cold)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	bb.ReportMetric(0, "ns/op")
	bb.ReportMetric(ms(median(s1m.warm)), "1MiB-ms")
	bb.ReportMetric(ms(median(s1g.warm)), "1GiB@0-ms")
	bb.ReportMetric(ms(median(s1gMid.warm)), "1GiB@700M-ms")
	bb.ReportMetric(ms(median(s1m.cold)), "1MiB-cold-ms")
	bb.ReportMetric(ms(median(s1g.cold)), "1GiB@0-cold-ms")
	bb.ReportMetric(ms(median(s1gMid.cold)), "1GiB@700M-cold-ms")
	bb.ReportMetric(warm, "ratio-warm")
	bb.ReportMetric(cold, "ratio-cold")
}

func recallBench(bb *testing.B, b *benchFS, zstdCLI string, rounds int) {
	rs := b.rs
	done := make(chan string, 4)
	cfg := interceptor.NewConfig()
	var proofs []time.Duration
	cfg.OnComplete = func(c interceptor.Completion) { proofs = append(proofs, c.Proof); done <- c.Path }
	// cat: until cat exits (what a user waits for); done: until the recall
	// completes (content fsynced, state archived durably, mark removed).
	// zstd: zstd -d exits; zstdSync: then `sync FILE` (fsync) returns.
	var cat, complete, zstdD, zstdSync []time.Duration
	var recallCPU, zstdCPU []time.Duration // until cat exits: interceptor + cat; zstd -d
	zout := filepath.Join(b.mnt, "zstd-out.bin")
	bb.ResetTimer()
	for r := range rounds {
		// Full recall of the 1 GiB stub by cat, against zstd -d of its
		// object to the same filesystem; object in page cache for both,
		// filesystem synced before each.
		bb.StopTimer()
		it, err := interceptor.Open(cfg, b.src, benchLogger())
		if err != nil {
			bb.Fatal(err)
		}
		rerelease(bb, it, rs.big, rs.mBig)
		runZstd := func() {
			os.Remove(zout)
			syncfs(bb, b.mnt)
			bb.StartTimer()
			t0 := time.Now()
			z := exec.Command(zstdCLI, "-q", "-d", "-f", rs.objBig, "-o", zout)
			if out, err := z.CombinedOutput(); err != nil {
				bb.Fatalf("zstd -d: %v: %s", err, out)
			}
			zstdD = append(zstdD, time.Since(t0))
			zstdCPU = append(zstdCPU, z.ProcessState.UserTime()+z.ProcessState.SystemTime())
			if out, err := exec.Command("sync", zout).CombinedOutput(); err != nil {
				bb.Fatalf("sync: %v: %s", err, out)
			}
			zstdSync = append(zstdSync, time.Since(t0))
			bb.StopTimer()
			os.Remove(zout)
		}
		runRecall := func() {
			syncfs(bb, b.mnt)
			bb.StartTimer()
			cpu0, idle0 := selfCPU(), idleCPU()
			t0 := time.Now()
			c := exec.Command("cat", rs.big)
			// A file, not io.Discard: that would make this process copy
			// 1 GiB out of a pipe, on the cores the interceptor needs.
			devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				bb.Fatal(err)
			}
			c.Stdout = devNull
			err = c.Run()
			devNull.Close()
			if err != nil {
				bb.Fatal(err)
			}
			cat = append(cat, time.Since(t0))
			catCPU := c.ProcessState.UserTime() + c.ProcessState.SystemTime()
			recallCPU = append(recallCPU, selfCPU()-cpu0+catCPU)
			bb.Logf("cat %v: CPU of this process (interceptor) %v, of cat %v, idle CPU of the machine %v",
				time.Since(t0), selfCPU()-cpu0, catCPU, idleCPU()-idle0)
			waitCompleted(bb, done, rs.big)
			complete = append(complete, time.Since(t0))
			bb.StopTimer()
		}
		if r%2 == 0 {
			runZstd()
			runRecall()
		} else {
			runRecall()
			runZstd()
		}
		it.Close()
		if r == 0 || r == rounds-1 {
			if got := fileSHA256(bb, rs.big); got != rs.bigSHA256 {
				bb.Fatalf("recalled file sha256 %s, want %s", got, rs.bigSHA256)
			}
		}
	}
	mc, md, mz, ms := median(cat), median(complete), median(zstdD), median(zstdSync)
	mbs := func(d time.Duration) float64 { return float64(benchBig) / d.Seconds() / 1e6 }
	bb.Logf("| RECALL 1 GiB, cat exits | %v (%.0f MB/s) | zstd -d %v (%.0f MB/s) | ratio %.3f |", mc, mbs(mc), mz, mbs(mz), float64(mz)/float64(mc))
	bb.Logf("| RECALL 1 GiB, recall complete (durable) | %v (%.0f MB/s) | zstd -d + sync FILE %v (%.0f MB/s) | ratio %.3f |", md, mbs(md), ms, mbs(ms), float64(ms)/float64(md))
	bb.Logf("| RECALL 1 GiB, proof (read back + BLAKE3, in complete) | %v | | |", median(proofs))
	bb.Logf("raw cat %v complete %v proof %v", cat, complete, proofs)
	bb.Logf("raw zstd %v zstd+sync %v", zstdD, zstdSync)
	mrc, mzc := median(recallCPU), median(zstdCPU)
	bb.Logf("| RECALL 1 GiB, CPU time until cat exits | interceptor + cat %v | zstd -d %v | ratio %.3f |", mrc, mzc, float64(mzc)/float64(mrc))
	bb.ReportMetric(float64(mzc)/float64(mrc), "cpu-ratio")
	bb.ReportMetric(0, "ns/op")
	bb.ReportMetric(mbs(mc), "cat-MB/s")
	bb.ReportMetric(mbs(mz), "zstd-MB/s")
	bb.ReportMetric(float64(mz)/float64(mc), "cat-ratio")
	bb.ReportMetric(mbs(md), "durable-MB/s")
	bb.ReportMetric(mbs(ms), "zstd+sync-MB/s")
	bb.ReportMetric(float64(ms)/float64(md), "durable-ratio")
}

// selfCPU returns the CPU time (user + system) this process used so far.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleCPU returns the idle time of all CPUs so far (/proc/stat).
func idleCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	if len(f) < 5 {
		return 0
	}
	v, _ := strconv.ParseInt(f[4], 10, 64)
	return time.Duration(v) * 10 * time.Millisecond // USER_HZ = 100
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// BenchmarkOpenReadClose4K: one open/read/close of a resident 4 KiB file,
// natively and with an interceptor guarding 10k stubs on the filesystem.
func BenchmarkOpenReadClose4K(bb *testing.B) {
	b := newBenchFS(bb, "ext4")
	b.setupResident(bb)
	for _, withIt := range []bool{false, true} {
		name := "native"
		if withIt {
			name = "interceptor"
		}
		bb.Run(name, func(bb *testing.B) {
			if withIt {
				it := b.openMarked(bb)
				defer it.Close()
			}
			bb.ResetTimer()
			for i := 0; bb.Loop(); i++ {
				if _, err := openReadClose(b.small[i%len(b.small) : i%len(b.small)+1]); err != nil {
					bb.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTTFB1MiB: time to the first byte of a 1 MiB stub whose object
// (seekable zstd, 4 MiB frames) is in the page cache. Each read is a new
// process, so the recall rules read it from /proc every time (their worst
// case): "bare" without rules or storm detection, "storm" with the
// default storm detection, "rules" with three rules that do not match.
func BenchmarkTTFB1MiB(bb *testing.B) {
	b := newBenchFS(bb, "ext4")
	path := filepath.Join(b.mnt, "ttfb.bin")
	m, _ := b.makeBenchStub(bb, path, 1<<20)
	prog := buildTTFB(bb)
	for _, variant := range []string{"bare", "storm", "rules"} {
		bb.Run(variant, func(bb *testing.B) {
			cfg := interceptor.NewConfig()
			switch variant {
			case "bare":
				cfg.StormRecalls = -1
			case "rules":
				cfg.Rules = []interceptor.Rule{
					{Exe: []string{"tar", "/opt/backup/**"}, Action: interceptor.ActionDeny},
					{UID: []int64{4242}, Action: interceptor.ActionThrottle, BytesPerSec: 1 << 20},
					{Cgroup: []string{"/system.slice/tumblerd.service"}, Action: interceptor.ActionHeadOnly},
				}
			}
			it, err := interceptor.Open(cfg, b.src, benchLogger())
			if err != nil {
				bb.Fatal(err)
			}
			defer it.Close()
			var ds []time.Duration
			for bb.Loop() {
				bb.StopTimer()
				rerelease(bb, it, path, m)
				bb.StartTimer()
				d, _, err := ttfb(prog, path, 0)
				if err != nil {
					bb.Fatal(err)
				}
				ds = append(ds, d)
			}
			slices.Sort(ds)
			bb.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "ttfb-µs")
		})
	}
}
