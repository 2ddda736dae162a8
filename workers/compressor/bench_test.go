package compressor

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/object/objecttest"
)

// benchBytes is the total size of the archive benchmark's data: 2 GiB, or
// STRATA_BENCH_BYTES.
func benchBytes(t testing.TB) int64 {
	if s := os.Getenv("STRATA_BENCH_BYTES"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 2<<20 {
			t.Fatalf("STRATA_BENCH_BYTES=%q: want a byte count >= 2 MiB", s)
		}
		return n
	}
	return 2 << 30
}

// benchFiles writes the benchmark's data set into dir: half random, half
// text-like, as two files, and returns their paths.
func benchFiles(t testing.TB, dir string, total int64) []string {
	t.Helper()
	const chunk = 32 << 20
	var paths []string
	for i, gen := range []func(int, uint64) []byte{objecttest.Random, objecttest.Text} {
		p := filepath.Join(dir, []string{"random.bin", "text.log"}[i])
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		for left, seed := total/2, uint64(0); left > 0; seed++ {
			n := min(left, chunk)
			if _, err := w.Write(gen(int(n), seed)); err != nil {
				t.Fatal(err)
			}
			left -= n
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// BenchmarkPack archives 2 GiB (STRATA_BENCH_BYTES) of mixed data, half
// random and half text, from files (in the page cache) into a staging
// directory, fsync included, with default options.
func BenchmarkPack(b *testing.B) {
	total := benchBytes(b)
	paths := benchFiles(b, b.TempDir(), total)
	staging := b.TempDir()
	c, err := New(Config{StagingDir: staging})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	var packed int64
	for b.Loop() {
		packed = 0
		for _, p := range paths {
			res, err := c.Pack(context.Background(), filepath.Dir(p), p)
			if err != nil {
				b.Fatal(err)
			}
			packed += res.Manifest.PackedSize
			b.StopTimer()
			os.Remove(res.ObjectPath)
			os.Remove(res.ManifestPath)
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(packed)/float64(total), "ratio")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestBenchArchiveCLI compares, in one run and on the same files, Strata's
// pack (seekable zstd level 3 + BLAKE3 of content, frames and object, fsync)
// with the reference CLIs doing less: `zstd -3 -T2` then `b3sum` of the
// input then `sync` of the output. Rounds alternate; medians are reported.
// Opt-in: STRATA_BENCH_CLI=1 (it writes 2 GiB and takes about a minute).
func BenchmarkArchiveVsCLI(b *testing.B) {
	t := b
	if os.Getenv("STRATA_BENCH_CLI") != "1" {
		t.Skip("side-by-side archive benchmark: set STRATA_BENCH_CLI=1")
	}
	zstdBin, err := exec.LookPath("zstd")
	if err != nil {
		t.Fatal("zstd not installed (apt-get install zstd)")
	}
	b3sum, err := exec.LookPath("b3sum")
	if err != nil {
		t.Fatal("b3sum not installed (apt-get install b3sum)")
	}
	rounds := 3
	if s := os.Getenv("STRATA_BENCH_ROUNDS"); s != "" {
		if rounds, err = strconv.Atoi(s); err != nil || rounds < 1 {
			t.Fatalf("STRATA_BENCH_ROUNDS=%q", s)
		}
	}
	total := benchBytes(t)
	dir := t.TempDir()
	paths := benchFiles(t, dir, total)
	staging := filepath.Join(dir, "staging")
	cliOut := filepath.Join(dir, "cli")
	for _, d := range []string{staging, cliOut} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c, err := New(Config{StagingDir: staging})
	if err != nil {
		t.Fatal(err)
	}
	// Warm the page cache for both sides.
	for _, p := range paths {
		if err := exec.Command("cat", p).Run(); err != nil {
			t.Fatal(err)
		}
	}

	strata := func() (wall, cpu time.Duration, packed int64) {
		c0, t0 := cpuTime(), time.Now()
		var staged []string
		for _, p := range paths {
			res, err := c.Pack(context.Background(), filepath.Dir(p), p)
			if err != nil {
				t.Fatal(err)
			}
			packed += res.Manifest.PackedSize
			staged = append(staged, res.ObjectPath, res.ManifestPath)
		}
		wall, cpu = time.Since(t0), cpuTime()-c0
		for _, s := range staged {
			os.Remove(s)
		}
		return wall, cpu, packed
	}
	cli := func() (wall, cpu time.Duration, packed int64) {
		t0 := time.Now()
		var outs []string
		run := func(name string, args ...string) {
			cmd := exec.Command(name, args...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s %v: %v\n%s", name, args, err, out)
			}
			cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		for _, p := range paths {
			out := filepath.Join(cliOut, filepath.Base(p)+".zst")
			run(zstdBin, "-3", "-T2", "-q", "-f", p, "-o", out)
			run(b3sum, p)
			run("sync", out)
			outs = append(outs, out)
		}
		wall = time.Since(t0)
		for _, o := range outs {
			if fi, err := os.Stat(o); err == nil {
				packed += fi.Size()
			}
			os.Remove(o)
		}
		return wall, cpu, packed
	}

	var sw, cw, sc, cc []time.Duration
	var sp, cp int64
	for r := range rounds {
		w1, c1, p1 := strata()
		w2, c2, p2 := cli()
		sw, sc, sp = append(sw, w1), append(sc, c1), p1
		cw, cc, cp = append(cw, w2), append(cc, c2), p2
		t.Logf("round %d: strata %v (cpu %v) %.0f MB/s | cli %v (cpu %v) %.0f MB/s | wall ratio %.2f | loadavg %s",
			r+1, w1.Round(time.Millisecond), c1.Round(time.Millisecond), mbps(total, w1),
			w2.Round(time.Millisecond), c2.Round(time.Millisecond), mbps(total, w2), float64(w2)/float64(w1), loadavg())
	}
	med := func(d []time.Duration) time.Duration { d = slices.Clone(d); slices.Sort(d); return d[len(d)/2] }
	ms, mc := med(sw), med(cw)
	t.Logf("data: %d bytes (half random, half text), %d rounds, GOMAXPROCS %d, object options %+v",
		total, rounds, c.cfg.Object.Concurrency, c.cfg.Object)
	t.Logf("strata pack      : median %v  %.0f MB/s  cpu %v  packed %d (%.3f)", ms.Round(time.Millisecond), mbps(total, ms), med(sc).Round(time.Millisecond), sp, float64(sp)/float64(total))
	t.Logf("zstd -3 -T2+b3sum: median %v  %.0f MB/s  cpu %v  packed %d (%.3f)", mc.Round(time.Millisecond), mbps(total, mc), med(cc).Round(time.Millisecond), cp, float64(cp)/float64(total))
	t.Logf("throughput ratio strata/cli = %.2f (goal >= 0.90); cpu-time ratio cli/strata = %.2f", float64(mc)/float64(ms), float64(med(cc))/float64(med(sc)))
}

// loadavg returns the 1-minute load average: other work on the machine
// skews a side-by-side run.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }
