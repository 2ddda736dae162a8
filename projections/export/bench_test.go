package export

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/projections/catalog"
)

// BenchmarkExport exports a catalog of 1M files with one version each
// (1M rows in files.parquet), without copies and with two copies each (2M
// rows in copies.parquet). Building the catalog is not timed.
func BenchmarkExport(b *testing.B) {
	for _, copies := range []int{0, 2} {
		b.Run("files=1M/copies="+strconv.Itoa(copies), func(b *testing.B) { benchExport(b, 1_000_000, copies) })
	}
}

func benchExport(b *testing.B, files, ncopies int) {
	c, err := catalog.Open(b.TempDir(), catalog.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	batch := make([]events.Envelope, 0, 3000)
	seq := uint64(0)
	add := func(ev events.Event) {
		seq++
		env, err := events.New(strconv.FormatUint(seq, 10), "/strata/bench/x", t0.Add(time.Duration(seq)), ev)
		if err != nil {
			b.Fatal(err)
		}
		env.Seq = seq
		batch = append(batch, env)
	}
	for i := range files {
		id := fmt.Sprintf("%032x", i+1)
		obj := fmt.Sprintf("%064x", i+1)
		p := fmt.Sprintf("/data/d%04d/file%07d.dat", i%1000, i)
		st := events.FileStat{Size: int64(i) * 1000, Mode: 0o100644, UID: 1000, GID: 1000, MtimeNS: int64(i) * 1e9, Inode: uint64(i + 1)}
		add(&events.ObjectPacked{FileID: id, Path: p, ObjectID: obj, Stat: st, Size: st.Size, PackedSize: st.Size/2 + 1,
			PackedSum: obj, FrameSize: 4 << 20, Frames: st.Size>>22 + 1, Staging: "/staging/" + obj})
		if ncopies > 0 {
			add(&events.ObjectStored{ObjectID: obj, Tier: "disk", TierKind: events.TierDirectory, Location: "/cold/objects/" + obj[:2] + "/" + obj + ".zst",
				Size: st.Size, PackedSize: st.Size/2 + 1, PackedSum: obj})
			add(&events.ObjectStored{ObjectID: obj, Tier: "tape1", TierKind: events.TierTape, Location: "VOL001/" + strconv.Itoa(i/1000),
				Size: st.Size, PackedSize: st.Size/2 + 1, PackedSum: obj, Tape: &events.TapePosition{Volume: "VOL001", TapeFile: int64(i/1000 + 1), Block: int64(i), Offset: 512}})
		}
		if len(batch) >= 3000 {
			if err := c.Apply(batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := c.Apply(batch); err != nil {
		b.Fatal(err)
	}
	b.Logf("built a catalog of %d files in %v", files, time.Since(start))
	dir := b.TempDir()
	cpu0 := cpuTime()
	for b.Loop() {
		res, err := Parquet(context.Background(), c, dir)
		if err != nil {
			b.Fatal(err)
		}
		if res.Files != files || res.Copies != ncopies*files {
			b.Fatalf("result %+v", res)
		}
	}
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
	for _, name := range []string{FilesName, CopiesName} {
		if fi, err := os.Stat(dir + "/" + name); err == nil {
			b.ReportMetric(float64(fi.Size())/1e6, "MB-"+name[:len(name)-8])
		}
	}
}

// cpuTime returns the user+system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
