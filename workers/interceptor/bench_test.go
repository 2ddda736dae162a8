//go:build linux

package interceptor_test

import (
	"context"
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

// The hot-path harness of docs/BENCHMARKS-hotpath.md. It is heavy (a 4 GiB
// loop image per filesystem, ~1-2 min each): it runs only with
// STRATA_BENCH_HOTPATH=1. STRATA_BENCH_ROUNDS sets the rounds (default 7).

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

type benchFS struct {
	mnt, fuseMnt string
	small        []string // resident 4 KiB files
	big          string   // resident 1 GiB file
	stubs        []string
	src          *objSource
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

// setupBenchFS makes the resident files, the 10k stubs and a FUSE loopback
// of the whole filesystem.
func setupBenchFS(t testing.TB, fstype string) *benchFS {
	t.Helper()
	stratatest.NeedRoot(t)
	b := &benchFS{mnt: stratatest.LoopMount(t, fstype, 4<<30), src: &objSource{readers: map[string]*zobject.Reader{}}}
	for _, d := range []string{"small", "stubs", "tier"} {
		if err := os.Mkdir(filepath.Join(b.mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
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
		err = stub.Write(fd, stub.Info{FileID: "s" + strconv.Itoa(i), ObjectID: "none", State: stub.Released, Size: 4096})
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
	b.fuseMnt = filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(b.fuseMnt, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := fs.NewLoopbackRoot(b.mnt)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fs.Mount(b.fuseMnt, root, &fs.Options{MountOptions: fuse.MountOptions{DirectMount: true, DirectMountStrict: true, FsName: "strata-bench"}})
	if err != nil {
		t.Fatalf("fuse mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("fuse unmount: %v", err)
		}
	})
	return b
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

func TestHotPathBench(t *testing.T) {
	if os.Getenv("STRATA_BENCH_HOTPATH") != "1" {
		t.Skip("benchmark harness: set STRATA_BENCH_HOTPATH=1 (see docs/BENCHMARKS-hotpath.md)")
	}
	rounds := 7
	if v, err := strconv.Atoi(os.Getenv("STRATA_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	zstdCLI := stratatest.NeedTool(t, "zstd")
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			t.Logf("loadavg before setup: %s", loadavg())
			b := setupBenchFS(t, fstype)
			hotPath(t, b, rounds)
			recallBench(t, b, zstdCLI, rounds)
			t.Logf("loadavg after: %s", loadavg())
		})
	}
}

func hotPath(t *testing.T, b *benchFS, rounds int) {
	fuseSmall, fuseBig := onFUSE(b, b.small), onFUSE(b, []string{b.big})[0]
	// Warm the page cache on both paths.
	if _, err := openReadClose(b.small); err != nil {
		t.Fatal(err)
	}
	if _, err := seqRead(b.big); err != nil {
		t.Fatal(err)
	}
	var smallA, smallB, smallF, bigA, bigB, bigF []time.Duration
	measure := func(withIt bool) {
		var it *interceptor.Interceptor
		if withIt {
			it = b.openMarked(t)
		}
		s, err := openReadClose(b.small)
		if err != nil {
			t.Fatal(err)
		}
		g, err := seqRead(b.big)
		if err != nil {
			t.Fatal(err)
		}
		if withIt {
			if st := it.Stats(); st.Events != 0 {
				t.Fatalf("resident files raised %d events", st.Events)
			}
			it.Close()
			smallB, bigB = append(smallB, s), append(bigB, g)
		} else {
			smallA, bigA = append(smallA, s), append(bigA, g)
		}
	}
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
			t.Fatal(err)
		}
		g, err := seqRead(fuseBig)
		if err != nil {
			t.Fatal(err)
		}
		smallF, bigF = append(smallF, s), append(bigF, g)
	}
	ma, mb, mf := median(smallA), median(smallB), median(smallF)
	ga, gb, gf := median(bigA), median(bigB), median(bigF)
	t.Logf("HOTPATH rounds=%d loadavg=%q", rounds, loadavg())
	t.Logf("HOTPATH | 20k x open/read 4KiB/close | native %v (%.0f files/s) | interceptor+10k marks %v ratio %.3f | FUSE loopback %v ratio %.3f |",
		ma, float64(benchSmallFiles)/ma.Seconds(), mb, float64(ma)/float64(mb), mf, float64(ma)/float64(mf))
	t.Logf("HOTPATH | 1 GiB sequential read | native %v (%.2f GB/s) | interceptor+10k marks %v ratio %.3f | FUSE loopback %v ratio %.3f |",
		ga, float64(benchBig)/ga.Seconds()/1e9, gb, float64(ga)/float64(gb), gf, float64(ga)/float64(gf))
	t.Logf("HOTPATH raw native small %v", smallA)
	t.Logf("HOTPATH raw interceptor small %v", smallB)
	t.Logf("HOTPATH raw native big %v", bigA)
	t.Logf("HOTPATH raw interceptor big %v", bigB)
}

// packObject packs src into dir as a seekable zstd object (4 MiB frames)
// and registers it with the source.
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
	t.Cleanup(func() { rf.Close() })
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

// rerelease makes path a stub again (state released, mark, punch).
func rerelease(t testing.TB, it *interceptor.Interceptor, path string, m zobject.Manifest) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = stub.Write(fd, stub.Info{FileID: filepath.Base(path), ObjectID: m.ObjectID, State: stub.Released, Size: m.Size})
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	if err := it.Release(path); err != nil {
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

// ttfb opens path, reads one byte at off and returns the time it took.
func ttfb(path string, off int64) (time.Duration, error) {
	t0 := time.Now()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var one [1]byte
	if n, err := unix.Pread(fd, one[:], off); err != nil || n != 1 {
		return 0, fmt.Errorf("pread: %d, %v", n, err)
	}
	return time.Since(t0), nil
}

func recallBench(t *testing.T, b *benchFS, zstdCLI string, rounds int) {
	small, big := filepath.Join(b.mnt, "ttfb-1m.bin"), filepath.Join(b.mnt, "ttfb-1g.bin")
	mSmall, objSmall := b.makeBenchStub(t, small, 1<<20)
	mBig, objBig := b.makeBenchStub(t, big, benchBig)
	done := make(chan string, 4)
	cfg := interceptor.NewConfig()
	cfg.OnComplete = func(c interceptor.Completion) { done <- c.Path }
	type sample struct{ warm, cold []time.Duration }
	var s1m, s1g, s1gMid sample
	var recall, zstdD []time.Duration
	waitDone := func(path string) {
		select {
		case p := <-done:
			if p != path {
				t.Fatalf("completed %s, want %s", p, path)
			}
		case <-time.After(5 * time.Minute):
			t.Fatalf("recall of %s did not complete", path)
		}
	}
	for r := range rounds {
		for _, cold := range []bool{false, true} {
			for _, c := range []struct {
				path string
				m    zobject.Manifest
				obj  string
				off  int64
				s    *sample
			}{{small, mSmall, objSmall, 0, &s1m}, {big, mBig, objBig, 0, &s1g}, {big, mBig, objBig, 700 << 20, &s1gMid}} {
				it, err := interceptor.Open(cfg, b.src, benchLogger())
				if err != nil {
					t.Fatal(err)
				}
				rerelease(t, it, c.path, c.m)
				if cold {
					dropObjectCache(t, c.obj)
				}
				d, err := ttfb(c.path, c.off)
				if err != nil {
					t.Fatal(err)
				}
				if c.path == small {
					waitDone(small) // recalled whole at open (under WholeFileBelow)
				}
				it.Close()
				if cold {
					c.s.cold = append(c.s.cold, d)
				} else {
					c.s.warm = append(c.s.warm, d)
				}
			}
		}
		// Full recall of the 1 GiB stub by cat, against zstd -d of its
		// object to the same filesystem; object in page cache for both.
		it, err := interceptor.Open(cfg, b.src, benchLogger())
		if err != nil {
			t.Fatal(err)
		}
		rerelease(t, it, big, mBig)
		zout := filepath.Join(b.mnt, "zstd-out.bin")
		runZstd := func() {
			os.Remove(zout)
			t0 := time.Now()
			if out, err := exec.Command(zstdCLI, "-q", "-d", "-f", objBig, "-o", zout).CombinedOutput(); err != nil {
				t.Fatalf("zstd -d: %v: %s", err, out)
			}
			zstdD = append(zstdD, time.Since(t0))
			os.Remove(zout)
		}
		runRecall := func() {
			t0 := time.Now()
			cmd := exec.Command("cat", big)
			cmd.Stdout = io.Discard
			if err := cmd.Run(); err != nil {
				t.Fatal(err)
			}
			waitDone(big)
			recall = append(recall, time.Since(t0))
		}
		if r%2 == 0 {
			runZstd()
			runRecall()
		} else {
			runRecall()
			runZstd()
		}
		it.Close()
	}
	rep := func(name string, s sample) {
		t.Logf("TTFB | %s | object in page cache %v | object evicted (fadvise) %v |", name, median(s.warm), median(s.cold))
	}
	rep("1 MiB stub (recalled whole at open)", s1m)
	rep("1 GiB stub, byte 0", s1g)
	rep("1 GiB stub, byte 700 MiB", s1gMid)
	t.Logf("TTFB ratio 1GiB/1MiB: warm %.2f cold %.2f", float64(median(s1g.warm))/float64(median(s1m.warm)), float64(median(s1g.cold))/float64(median(s1m.cold)))
	mr, mz := median(recall), median(zstdD)
	t.Logf("RECALL | 1 GiB full recall (cat + completion) %v (%.0f MB/s) | zstd -d %v (%.0f MB/s) | ratio %.3f |",
		mr, float64(benchBig)/mr.Seconds()/1e6, mz, float64(benchBig)/mz.Seconds()/1e6, float64(mz)/float64(mr))
	t.Logf("RECALL raw recall %v zstd %v", recall, zstdD)
}

// BenchmarkOpenReadClose4K: one open/read/close of a resident 4 KiB file,
// natively and with an interceptor guarding 10k stubs on the filesystem.
func BenchmarkOpenReadClose4K(bb *testing.B) {
	b := setupBenchFS(bb, "ext4")
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
// (seekable zstd, 4 MiB frames) is in the page cache.
func BenchmarkTTFB1MiB(bb *testing.B) {
	b := setupBenchFS(bb, "ext4")
	path := filepath.Join(b.mnt, "ttfb.bin")
	m, _ := b.makeBenchStub(bb, path, 1<<20)
	it, err := interceptor.Open(interceptor.NewConfig(), b.src, benchLogger())
	if err != nil {
		bb.Fatal(err)
	}
	defer it.Close()
	for bb.Loop() {
		bb.StopTimer()
		rerelease(bb, it, path, m)
		bb.StartTimer()
		if _, err := ttfb(path, 0); err != nil {
			bb.Fatal(err)
		}
	}
}
