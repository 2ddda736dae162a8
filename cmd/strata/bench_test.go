package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
	"github.com/strata-hsm/strata/projections/export"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// BenchmarkExportFiles exports a catalog of N files (default 1M) to
// Parquet.
func BenchmarkExportFiles(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("STRATA_BENCH_EVENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	cat, err := catalog.Open(b.TempDir(), catalog.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer cat.Close()
	envs := catalogtest.Generate(n, 9, catalogtest.Options{})
	for lo := 0; lo < len(envs); lo += 1000 {
		if err := cat.Apply(envs[lo:min(lo+1000, len(envs))]); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res, err := export.Parquet(context.Background(), cat, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/export")
		b.ReportMetric(float64(res.Files), "file-rows")
	}
}

// BenchmarkArchiveSmallFiles archives N small files (default 100k,
// STRATA_BENCH_FILES to change; 4 KiB each, distinct content) from a
// loop-mounted ext4 hot tree to a directory tier with strata archive --wait,
// end to end (scan, pack, store with read-back, release), and reports
// files/s.
func BenchmarkArchiveSmallFiles(b *testing.B) {
	n := 100_000
	if s := os.Getenv("STRATA_BENCH_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for b.Loop() {
		b.StopTimer()
		hot := stratatest.LoopMount(b, "ext4", int64(n)*16<<10+256<<20)
		buf := make([]byte, 4096)
		for i := 0; i < n; i++ {
			dir := filepath.Join(hot, strconv.Itoa(i/1000))
			if i%1000 == 0 {
				os.Mkdir(dir, 0o755)
			}
			copy(buf, strconv.Itoa(i)+" small file content ")
			if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(i)), buf, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		data := b.TempDir()
		cfg := Config{DataDir: data, Host: "bench", Hot: []HotConfig{{Path: hot}},
			Tiers: []TierConfig{{Name: "hdd", Kind: "directory", Path: b.TempDir()}}}
		cfg.NATS.Port = pipeline.RandomPort
		cfg.EnsureDefaults()
		ctx, cancel := context.WithCancel(context.Background())
		d, err := startDaemon(ctx, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- d.run(ctx) }()
		for request(ctx, data, "status", struct{}{}, nil, time.Second) != nil {
			time.Sleep(20 * time.Millisecond)
		}
		b.StartTimer()
		start := time.Now()
		var out, errb bytes.Buffer
		code := exitCode(run(ctx, []string{"archive", "--wait", "--json", "--data", data, hot}, &out, &errb), &errb)
		el := time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		d.close()
		if code != 0 {
			b.Fatalf("archive: %s", errb.String())
		}
		var sum archiveSummary
		json.Unmarshal(out.Bytes(), &sum)
		if sum.Released != n {
			b.Fatalf("released %d of %d", sum.Released, n)
		}
		b.ReportMetric(float64(n)/el.Seconds(), "files/s")
		b.StartTimer()
	}
}
