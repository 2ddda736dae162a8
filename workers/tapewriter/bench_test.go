package tapewriter

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// TestBenchWriterVsTar compares, in one run, the CPU path of the tape
// writer (objects read from files → pax tar → 512 KiB blocks → emulated
// cartridge file) with GNU tar writing the same files with -b 1024 to a
// file. Run with STRATA_BENCH=1 (see docs/BENCHMARKS-tape.md).
func BenchmarkWriterVsTar(b *testing.B) {
	t := b
	if os.Getenv("STRATA_BENCH") != "1" {
		t.Skip("set STRATA_BENCH=1 to run the tape writer benchmark")
	}
	tarBin := stratatest.NeedTool(t, "tar")
	root := t.TempDir()
	src := filepath.Join(root, "src")
	objs := makeObjects(42, 320, func(i int) int {
		if i%2 == 0 {
			return 2 << 20
		}
		return 16 << 10
	})
	var total int64
	for i := range objs {
		p := filepath.Join(src, bundle.ObjectPath(objs[i].ID))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, objs[i].data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[:len(p)-4]+".json", objs[i].Manifest, 0o644); err != nil {
			t.Fatal(err)
		}
		objs[i].Open = func() (io.ReadCloser, error) { return os.Open(p) }
		total += objs[i].PackedSize
	}
	m := tape.LTO9()
	m.Buffer = 64 << 20
	best := func(f func() time.Duration) time.Duration {
		b := time.Duration(1 << 62)
		for range 3 {
			b = min(b, f())
		}
		return b
	}
	strata := best(func() time.Duration {
		dir := filepath.Join(root, "cart")
		os.RemoveAll(dir)
		if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 1 << 40}); err != nil {
			t.Fatal(err)
		}
		d, _ := tape.OpenEmulator(dir, m)
		if err := bundle.WriteLabel(d, bundle.Label{Volume: "B", Pool: "p", BlockSize: bundle.DefaultBlockSize}); err != nil {
			t.Fatal(err)
		}
		d.Close()
		emu, _ := tape.NewEmulator(m)
		w, err := New(Config{Pool: "p", Volumes: []string{"B"}, Changer: &tape.Library{Drive: emu, Slots: map[string]string{"B": dir}},
			BundleSize: 256 << 20, RingSize: 256 << 20, SpoolDir: filepath.Join(root, "spool"), Now: emu.Now,
			Stored: func(Object, events.TapePosition) {}})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for _, o := range objs {
			if err := w.Add(context.Background(), o.Object); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	})
	gnu := best(func() time.Duration {
		out := filepath.Join(root, "out.tar")
		os.Remove(out)
		start := time.Now()
		cmd := exec.Command(tarBin, "-c", "-b", "1024", "--format=pax", "-f", out, "-C", src, "objects")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tar: %v\n%s", err, b)
		}
		return time.Since(start)
	})
	mb := func(d time.Duration) float64 { return float64(total) / d.Seconds() / 1e6 }
	t.Logf("%d objects, %d MiB packed: strata tape writer %v (%.0f MB/s), tar -b 1024 %v (%.0f MB/s), ratio %.2f",
		len(objs), total>>20, strata, mb(strata), gnu, mb(gnu), mb(strata)/mb(gnu))
}
