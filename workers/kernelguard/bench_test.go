//go:build linux

package kernelguard

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

//go:generate clang -O2 -g -Wall -target bpfel -I bpf -c testdata/bench.bpf.c -o testdata/bench_bpfel.o

// benchConfig is one side of the comparison: what is attached while the
// workloads run.
type benchConfig struct {
	name string
	// on attaches it and returns what detaches it again.
	on func() (off func())
}

// benchWork is one workload on resident files.
type benchWork struct {
	name string
	// cold: the page cache is dropped before each run; otherwise warm, if
	// set, runs untimed first (else run does).
	cold bool
	warm func(b *testing.B)
	run  func(b *testing.B)
}

// BenchmarkGuard measures what the guard costs resident files, side by
// side in one run, on loop-mounted ext4 and XFS:
//
//  1. each workload with nothing attached ("off"), with the guard
//     ("guard": tp_btf/iomap_iter_dstmap, 10,000 stubs registered) and with
//     the guard plus the reader-kill experiment of testdata/bench.bpf.c
//     ("readkill": tp_btf/mm_filemap_get_pages), in rounds that alternate
//     the order of the three; medians of wall and thread CPU time, and the
//     ratios off/on (1.0 = free; the goal is >= 0.99);
//  2. the CPU time one hooked call gains (XFS cached 4 KiB pwrite: one
//     iomap mapping each; cached 4 KiB pread: one filemap_get_pages each),
//     against an empty program on the same tracepoint;
//  3. how often each tracepoint fires in each workload, and the cost that
//     implies, which the noise of a shared machine cannot hide.
//
// The guard is loaded once and its program attached and detached around
// each sample. KERNELGUARD_BENCH_ROUNDS sets the rounds (default 7). See
// docs/BENCHMARKS-guard.md:
//
//	go test -count=1 -run '^$' -bench BenchmarkGuard -benchtime 1x -timeout 60m -v ./workers/kernelguard/
func BenchmarkGuard(b *testing.B) {
	needGuard(b)
	rounds := 7
	if v, err := strconv.Atoi(os.Getenv("KERNELGUARD_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for _, fstype := range stratatest.FSTypes {
		b.Run(fstype, func(b *testing.B) { benchFS(b, fstype, rounds) })
	}
}

func benchFS(b *testing.B, fstype string, rounds int) {
	mnt := stratatest.LoopMount(b, fstype, 3<<30)
	small := filepath.Join(mnt, "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		b.Fatal(err)
	}
	const nSmall = 20000
	page := make([]byte, 4096)
	for i := range page {
		page[i] = byte(i)
	}
	for i := range nSmall {
		if err := os.WriteFile(filepath.Join(small, strconv.Itoa(i)), page, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	big := filepath.Join(mnt, "big")
	writeFile(b, big, 1<<30)
	wfile := filepath.Join(mnt, "written")
	writeFile(b, wfile, 256<<20)
	unix.Sync()

	stubTable := func(m *ebpf.Map) {
		for i := range 10000 {
			if err := m.Put(stubKey{Dev: 0xfffff, Ino: uint64(i + 1)}, stubValue{Gen: 1}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// The guard is loaded once, as the daemon does, and its program is
	// attached and detached around each sample, so that samples of the
	// three configurations alternate closely.
	pin := filepath.Join("/sys/fs/bpf", "strata-bench-"+randomSuffix(b))
	b.Cleanup(func() { Remove(pin) })
	g, err := Load(Config{PinDir: pin})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	stubTable(g.coll.Maps[guardMapSgStubs])
	g.link.Close()
	g.link = nil
	if err := os.Remove(filepath.Join(pin, linkPin)); err != nil {
		b.Fatal(err)
	}
	rk := loadBenchProgs(b, os.Getpid())
	defer rk.Close()
	stubTable(rk.Maps["rk_stubs"])
	attach := func(p *ebpf.Program) link.Link {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	configs := []benchConfig{
		{"off", func() func() { return func() {} }},
		{"guard", func() func() {
			l := attach(g.coll.Programs[guardProgSgProbe])
			return func() { l.Close() }
		}},
		{"readkill", func() func() {
			l1, l2 := attach(g.coll.Programs[guardProgSgProbe]), attach(rk.Programs["rk_read"])
			return func() { l2.Close(); l1.Close() }
		}},
	}
	works := []benchWork{
		{"20k x 4KiB open+read+close, cold", true, nil, func(b *testing.B) { openReadAll(b, small, nSmall) }},
		{"20k x 4KiB open+read+close, warm (x5)", false, nil, func(b *testing.B) {
			for range 5 {
				openReadAll(b, small, nSmall)
			}
		}},
		{"4KiB random pread of 1GiB, cold (5k)", true, nil, func(b *testing.B) { preadRandom(b, big, 5000, 0) }},
		{"4KiB random pread of 1GiB, warm (200k)", false, func(b *testing.B) { seqRead(b, big) }, func(b *testing.B) { preadRandom(b, big, 200000, 0) }},
		{"sequential read of 1GiB, cold", true, nil, func(b *testing.B) { seqRead(b, big) }},
		{"sequential read of 1GiB, warm (x2)", false, nil, func(b *testing.B) { seqRead(b, big); seqRead(b, big) }},
		{"4KiB random O_DIRECT pread (20k)", false, nil, func(b *testing.B) { preadRandom(b, big, 20000, unix.O_DIRECT) }},
		{"4KiB pwrite over 256MiB, cached", false, nil, func(b *testing.B) { pwriteAll(b, wfile, 256<<20) }},
	}
	prepare := func(w benchWork) {
		switch {
		case w.cold:
			dropCaches(b)
		case w.warm != nil:
			w.warm(b)
		default:
			w.run(b)
		}
		unix.Sync()
	}

	// The workloads make their system calls on this goroutine: lock it to
	// its thread, whose CPU time (CLOCK_THREAD_CPUTIME_ID) is measured
	// beside the wall time. CPU time leaves out waiting for a CPU, which
	// matters on a shared machine.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var report strings.Builder
	key := strings.NewReplacer(" ", "_", ",", "", "(", "", ")", "").Replace

	// 1. The workloads, side by side.
	fmt.Fprintf(&report, "\n%s, %d rounds, medians (wall time; thread CPU time):\n| workload | off | guard | readkill | off/guard wall | off/guard CPU | off/readkill wall | off/readkill CPU |\n|---|---|---|---|---|---|---|---|\n", fstype, rounds)
	cpuOff := make([]time.Duration, len(works))
	for wi, w := range works {
		wall := make([][]time.Duration, len(configs))
		cpu := make([][]time.Duration, len(configs))
		for r := range rounds {
			order := []int{0, 1, 2}
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, c := range order {
				prepare(w)
				detach := configs[c].on()
				c0, t0 := threadCPU(b), time.Now()
				w.run(b)
				wall[c] = append(wall[c], time.Since(t0))
				cpu[c] = append(cpu[c], threadCPU(b)-c0)
				detach()
			}
		}
		mw, mc := make([]time.Duration, len(configs)), make([]time.Duration, len(configs))
		for c := range configs {
			mw[c], mc[c] = median(wall[c]), median(cpu[c])
		}
		cpuOff[wi] = mc[0]
		ratio := func(m []time.Duration, c int) float64 { return float64(m[0]) / float64(m[c]) }
		ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
		fmt.Fprintf(&report, "| %s | %s; %s | %s; %s | %s; %s | %.3f | %.3f | %.3f | %.3f |\n", w.name,
			ms(mw[0]), ms(mc[0]), ms(mw[1]), ms(mc[1]), ms(mw[2]), ms(mc[2]),
			ratio(mw, 1), ratio(mc, 1), ratio(mw, 2), ratio(mc, 2))
		b.ReportMetric(ratio(mw, 1), "off/guard-wall:"+key(w.name))
		b.ReportMetric(ratio(mc, 1), "off/guard-cpu:"+key(w.name))
		b.ReportMetric(ratio(mw, 2), "off/readkill-wall:"+key(w.name))
		b.ReportMetric(ratio(mc, 2), "off/readkill-cpu:"+key(w.name))
	}

	// 2. The cost of one hooked call: batches of calls, each batch run
	// once with nothing attached and once with the program attached, in
	// alternating order; the added cost is the median of the paired
	// differences of thread CPU time per call (pairs share the machine's
	// load of the moment). Hits per call are counted, so the cost per hit
	// follows. A FIEMAP of a file of 512 extents and 512 holes hits the
	// guard ~1,000 times per call (the holes take its longest path for a
	// resident file: flags, EOF, table lookup), which lifts its cost above
	// the noise; the cost per hit from it is the one used below. BPF
	// statistics give each program's own run time, beside an empty
	// program's (what the statistics themselves add).
	const pairs = 201
	fmt.Fprintf(&report, "\n%s, cost per call (thread CPU ns per call: medians, and the median of %d paired differences; hits per call; BPF-stats ns per program run):\n| call | hooked by | hits/call | off | on | added | added per hit | ns/run (stats) |\n|---|---|---|---|---|---|---|---|\n", fstype, pairs)
	fd, err := unix.Open(wfile, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	page4k := make([]byte, 4096)
	frag := filepath.Join(mnt, "fragmented")
	fragFD, err := unix.Open(frag, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fragFD)
	for i := range 512 {
		if _, err := unix.Pwrite(fragFD, page4k, int64(2*i)*4096); err != nil {
			b.Fatal(err)
		}
	}
	if err := unix.Fsync(fragFD); err != nil {
		b.Fatal(err)
	}
	fiemapBuf := make([]byte, 32+56*1100)
	type microRun struct {
		calls int
		run   func()
	}
	pwrites := microRun{2000, func() {
		for i := range 2000 {
			unix.Pwrite(fd, page4k, int64(i%16384)*4096)
		}
	}}
	preads := microRun{2000, func() {
		for i := range 2000 {
			unix.Pread(fd, page4k, int64(i%16384)*4096)
		}
	}}
	fiemaps := microRun{20, func() {
		for range 20 {
			if n, err := fiemapInto(fragFD, fiemapBuf); err != nil || n < 512 {
				b.Fatalf("FIEMAP of the fragmented file: %d extents, %v", n, err)
			}
		}
	}}
	hits := rk.Maps["hits"]
	countHits := func(run func()) (h [2]uint64) {
		counters := []link.Link{attach(rk.Programs["dm_count"]), attach(rk.Programs["rk_count"])}
		defer func() {
			for _, l := range counters {
				l.Close()
			}
		}()
		var h0, h1 [2]uint64
		for i := range uint32(2) {
			hits.Lookup(i, &h0[i])
		}
		run()
		for i := range uint32(2) {
			hits.Lookup(i, &h1[i])
		}
		return [2]uint64{h1[0] - h0[0], h1[1] - h0[1]}
	}
	micro := []struct {
		call, by string
		prog     *ebpf.Program
		tp       int // 0 iomap_iter_dstmap, 1 mm_filemap_get_pages
		m        microRun
	}{
		{"4KiB pwrite, cached", "guard (sg_probe)", g.coll.Programs[guardProgSgProbe], 0, pwrites},
		{"4KiB pwrite, cached", "empty program on iomap_iter_dstmap", rk.Programs["dm_empty"], 0, pwrites},
		{"FIEMAP of a file of 512 extents and 512 holes", "guard (sg_probe)", g.coll.Programs[guardProgSgProbe], 0, fiemaps},
		{"FIEMAP of a file of 512 extents and 512 holes", "empty program on iomap_iter_dstmap", rk.Programs["dm_empty"], 0, fiemaps},
		{"4KiB pread, cached", "readkill (rk_read)", rk.Programs["rk_read"], 1, preads},
		{"4KiB pread, cached", "empty program on mm_filemap_get_pages", rk.Programs["rk_empty"], 1, preads},
	}
	var perHit [2]float64 // guard (from the FIEMAP row), readkill (pread)
	for i, m := range micro {
		m.m.run()
		unix.Fsync(fd)
		var off, on, diff []time.Duration
		for j := range pairs {
			var d [2]time.Duration
			for k := range 2 {
				attached := (j+k)%2 == 1
				var l link.Link
				if attached {
					l = attach(m.prog)
				}
				c0 := threadCPU(b)
				m.m.run()
				per := (threadCPU(b) - c0) / time.Duration(m.m.calls)
				if attached {
					l.Close()
					d[1] = per
				} else {
					d[0] = per
				}
			}
			off, on, diff = append(off, d[0]), append(on, d[1]), append(diff, d[1]-d[0])
		}
		hpc := float64(countHits(m.m.run)[m.tp]) / float64(m.m.calls)
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatal(err)
		}
		l := attach(m.prog)
		n0, t0 := progStats(b, m.prog)
		m.m.run()
		n1, t1 := progStats(b, m.prog)
		l.Close()
		stats.Close()
		added := median(diff)
		hitCost := "-"
		if hpc >= 0.5 {
			hitCost = fmt.Sprintf("%+.0f ns", float64(added)/hpc)
		}
		switch i {
		case 2:
			perHit[0] = float64(added) / hpc
		case 4:
			perHit[1] = float64(added) / hpc
		}
		mo := median(off)
		fmt.Fprintf(&report, "| %s | %s | %.2f | %d | %d | %+d ns (%+.1f%%) | %s | %s |\n", m.call, m.by, hpc,
			mo.Nanoseconds(), median(on).Nanoseconds(), added.Nanoseconds(), 100*float64(added)/float64(mo), hitCost, perRun(t1-t0, n1-n0))
	}

	// 3. How often each tracepoint fires in each workload (this process
	// only), and the cost that implies at the most a hit added above.
	fmt.Fprintf(&report, "\n%s, tracepoint hits per workload (this process) and the cost they imply (hits x %.0f ns (guard) or %.0f ns (readkill) per hit / CPU time off):\n| workload | iomap_iter_dstmap hits | mm_filemap_get_pages hits | guard | readkill (with the guard) |\n|---|---|---|---|---|\n", fstype, perHit[0], perHit[1])
	for wi, w := range works {
		prepare(w)
		h := countHits(func() { w.run(b) })
		dm, fg := float64(h[0]), float64(h[1])
		guard := dm * perHit[0] / float64(cpuOff[wi].Nanoseconds())
		readkill := guard + fg*perHit[1]/float64(cpuOff[wi].Nanoseconds())
		fmt.Fprintf(&report, "| %s | %.0f | %.0f | %.2f%% | %.2f%% |\n", w.name, dm, fg, 100*guard, 100*readkill)
	}
	b.Log(report.String())
}

// threadCPU is the CPU time (user and system) of the calling thread.
func threadCPU(b testing.TB) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

func perRun(d time.Duration, n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(d.Nanoseconds())/float64(n))
}

func progStats(b *testing.B, p *ebpf.Program) (uint64, time.Duration) {
	st, err := p.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return st.RunCount, st.Runtime
}

// loadBenchProgs loads testdata/bench.bpf.c (not attached), counting the
// hits of process tgid.
func loadBenchProgs(t testing.TB, tgid int) *ebpf.Collection {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec("testdata/bench_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables["target_tgid"].Set(uint32(tgid)); err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load readkill: %v", err)
	}
	return coll
}

func dropCaches(b testing.TB) {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		b.Fatal(err)
	}
}

func writeFile(b testing.TB, path string, size int) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for n := 0; n < size; n += len(buf) {
		if _, err := f.Write(buf[:min(len(buf), size-n)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

func openReadAll(b testing.TB, dir string, n int) {
	buf := make([]byte, 4096)
	for i := range n {
		fd, err := unix.Open(filepath.Join(dir, strconv.Itoa(i)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := unix.Read(fd, buf); err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	}
}

// preadRandom does n 4 KiB preads at random aligned offsets of path (the
// same offsets every time), without readahead.
func preadRandom(b testing.TB, path string, n int, flags int) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		b.Fatal(err)
	}
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // aligned for O_DIRECT
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(buf)
	r := rand.New(rand.NewPCG(1, 2))
	pages := int(st.Size / 4096)
	for range n {
		if _, err := unix.Pread(fd, buf, int64(r.IntN(pages))*4096); err != nil {
			b.Fatal(err)
		}
	}
}

func seqRead(b testing.TB, path string) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 1<<20)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

// pwriteAll overwrites the first size bytes of path in 4 KiB writes.
func pwriteAll(b testing.TB, path string, size int) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	for off := 0; off < size; off += len(buf) {
		if _, err := unix.Pwrite(fd, buf, int64(off)); err != nil {
			b.Fatal(err)
		}
	}
}

// percentile returns the p-th percentile of d.
func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)*p/100]
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
