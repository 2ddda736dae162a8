//go:build linux

package scanner

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// benchTree returns a directory holding files one-byte files, built once
// under os.TempDir() and reused by later runs (a marker file records that
// it is complete), and its number of entries (files and directories, the
// root included). Layout: tree/NNN/M/fK, 10 leaf directories of 1000 files
// per top-level directory.
func benchTree(b *testing.B, files int) (string, int) {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "strata-bench-scan-"+strconv.Itoa(files))
	marker := filepath.Join(dir, ".complete")
	leaves := (files + 999) / 1000
	entries := 1 // the root
	for l := range leaves {
		if l%10 == 0 {
			entries++ // top-level directory
		}
		entries++ // leaf directory
	}
	entries += files
	if _, err := os.Stat(marker); err == nil {
		return filepath.Join(dir, "tree"), entries
	}
	os.RemoveAll(dir)
	b.Logf("building a tree of %d files in %s (once)", files, dir)
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 4 {
		wg.Go(func() {
			for l := range jobs {
				leaf := filepath.Join(dir, "tree", fmt.Sprintf("%03d", l/10), fmt.Sprintf("%02d", l%10))
				err := os.MkdirAll(leaf, 0o755)
				for f := 0; err == nil && f < 1000 && l*1000+f < files; f++ {
					err = os.WriteFile(filepath.Join(leaf, "f"+strconv.Itoa(f)), []byte{'x'}, 0o644)
				}
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		})
	}
	for l := range leaves {
		jobs <- l
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("built in %v", time.Since(start).Round(time.Second))
	return filepath.Join(dir, "tree"), entries
}

// BenchmarkScanVsFind compares, side by side in one run with a warm cache,
// the scanner's walk with `find DIR -printf '%p %s %T@\n' >/dev/null` over
// the same tree. The tree has 20k files by default and 1M entries with
// STRATA_BENCH_SCAN=1. Reported: entries/s of each, and the ratios
// scan/find for a policy that selects nothing (walk + stat of every entry,
// what find does) and one that selects every file (+ lgetxattr, open and
// FS_IOC_GETVERSION per file, and the callback). See docs/BENCHMARKS-scanner.md.
func BenchmarkScanVsFind(b *testing.B) {
	files := 20_000
	if os.Getenv("STRATA_BENCH_SCAN") == "1" {
		files = 1_000_000 - 1_100 // + 1,100 directories = 1M entries
	}
	root, entries := benchTree(b, files)
	findBin := stratatest.NeedTool(b, "find")
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	runFind := func() time.Duration {
		cmd := exec.Command(findBin, root, "-printf", `%p %s %T@\n`)
		cmd.Stdout = devnull
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	walk := NewPolicy(root)
	walk.MinSize = 1 << 40 // selects nothing: walk and stat only
	all := NewPolicy(root)
	all.MinSize, all.MinAtimeAge, all.MinMtimeAge = 1, 0, 0
	runScan := func(p Policy, wantSelected int) time.Duration {
		start := time.Now()
		sum, err := Scan(context.Background(), p, time.Now(), func(Candidate) error { return nil })
		d := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if got := int(sum.Files + sum.Dirs); got != entries || int(sum.Selected) != wantSelected {
			b.Fatalf("scan saw %d entries (want %d), selected %d (want %d)", got, entries, sum.Selected, wantSelected)
		}
		return d
	}
	// Warm the dentry and inode caches once for all three.
	runFind()
	runScan(walk, 0)
	var tf, tw, ta []time.Duration
	for b.Loop() {
		tf = append(tf, runFind())
		tw = append(tw, runScan(walk, 0))
		ta = append(ta, runScan(all, files))
	}
	med := func(ds []time.Duration) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2].Seconds()
	}
	f, w, a := med(tf), med(tw), med(ta)
	b.ReportMetric(float64(entries)/f, "find-entries/s")
	b.ReportMetric(float64(entries)/w, "scan-entries/s")
	b.ReportMetric(float64(entries)/a, "scanall-entries/s")
	b.ReportMetric(f/w, "ratio-walk")
	b.ReportMetric(f/a, "ratio-selectall")
	b.Logf("%d entries: find %.3fs, scan (select none) %.3fs = %.2f× find's rate, scan (select all) %.3fs = %.2f×",
		entries, f, w, f/w, a, f/a)
}
