package s3_test

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
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// BenchmarkVsRclone compares the S3 target with the rclone CLI (an s3
// remote on the same versitygw) side by side in one run, in alternating
// rounds, and reports medians and ratios (> 1 means Strata is faster):
//
//	go test -run '^$' -bench VsRclone -benchtime 1x ./workers/tier/s3/
//
// Sizes: STRATA_BENCH_OBJECTS (default 4) objects of STRATA_BENCH_MIB
// (default 64) MiB, STRATA_BENCH_ROUNDS (default 3) rounds.
func BenchmarkVsRclone(b *testing.B) {
	nObj, mib, rounds := envInt("STRATA_BENCH_OBJECTS", 4), envInt("STRATA_BENCH_MIB", 64), envInt("STRATA_BENCH_ROUNDS", 3)
	rcl := stratatest.NeedTool(b, "rclone")
	srv := tiertest.StartS3(b)
	bucket := srv.NewBucket(b)
	tgt, err := s3.Open(s3.Config{Name: "bench", Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "strata",
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, NoTLS: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	env := []string{"RCLONE_CONFIG=/dev/null", "RCLONE_CONFIG_VS3_TYPE=s3", "RCLONE_CONFIG_VS3_PROVIDER=Other",
		"RCLONE_CONFIG_VS3_ENDPOINT=http://" + srv.Endpoint, "RCLONE_CONFIG_VS3_ACCESS_KEY_ID=" + srv.AccessKey,
		"RCLONE_CONFIG_VS3_SECRET_ACCESS_KEY=" + srv.SecretKey}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_CA_BUNDLE=") {
			env = append(env, e)
		}
	}
	rclone := func(args ...string) *exec.Cmd {
		cmd := exec.Command(rcl, args...)
		cmd.Env = env
		return cmd
	}
	// The objects, as files on disk (page cache warm for both tools).
	src := b.TempDir()
	size := int64(mib) << 20
	var objs []tier.Object
	for i := range nObj {
		o, data := tiertest.NewObject(uint64(1000+i), size)
		p := filepath.Join(src, o.ID+".zst")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		o.Open = func() (io.ReadCloser, error) { return os.Open(p) }
		objs = append(objs, o)
	}
	total := float64(int64(nObj) * size)
	ctx := context.Background()
	var putS, putRB, rcCopy, rcCopyRB, rangeS, rangeR, ttfb []float64
	rng := rand.New(rand.NewPCG(1, 2))
	const rangeLen = 4 << 20
	for round := range rounds {
		// Strata Put: streaming multipart upload + full read-back + BLAKE3.
		for _, o := range objs {
			_ = tgt.Delete(ctx, o.ID)
		}
		start := time.Now()
		for _, o := range objs {
			if _, err := tgt.Put(ctx, o); err != nil {
				b.Fatal(err)
			}
		}
		putRB = append(putRB, total/time.Since(start).Seconds())
		// Upload alone (the same PutObject call a Put makes, without the
		// read-back), to compare with rclone's upload alone.
		start = time.Now()
		for _, o := range objs {
			if err := tgt.UploadOnly(ctx, o); err != nil {
				b.Fatal(err)
			}
		}
		putS = append(putS, total/time.Since(start).Seconds())
		// rclone copy of the same files, then the same with a read-back.
		dst := fmt.Sprintf("vs3:%s/rclone-%d", bucket, round)
		start = time.Now()
		if out, err := rclone("copy", src, dst).CombinedOutput(); err != nil {
			b.Fatalf("rclone copy: %v\n%s", err, out)
		}
		rcCopy = append(rcCopy, total/time.Since(start).Seconds())
		dst2 := fmt.Sprintf("vs3:%s/rclone-rb-%d", bucket, round)
		start = time.Now()
		if out, err := rclone("copy", src, dst2).CombinedOutput(); err != nil {
			b.Fatalf("rclone copy: %v\n%s", err, out)
		}
		for _, o := range objs {
			cmd := rclone("cat", dst2+"/"+o.ID+".zst")
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			if err := tier.Check(ctx, out, o.PackedSize, o.PackedSum); err != nil {
				b.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				b.Fatal(err)
			}
		}
		rcCopyRB = append(rcCopyRB, total/time.Since(start).Seconds())
		// Ranged reads of 4 MiB at random offsets: GetRange vs rclone cat.
		const nRanges = 16
		type rr struct {
			o   tier.Object
			off int64
		}
		var ranges []rr
		for range nRanges {
			ranges = append(ranges, rr{objs[rng.IntN(len(objs))], rng.Int64N(size - rangeLen)})
		}
		start = time.Now()
		for _, r := range ranges {
			t0 := time.Now()
			rc, err := tgt.GetRange(ctx, r.o.ID, r.off, rangeLen)
			if err != nil {
				b.Fatal(err)
			}
			var one [1]byte
			if _, err := io.ReadFull(rc, one[:]); err != nil {
				b.Fatal(err)
			}
			ttfb = append(ttfb, time.Since(t0).Seconds()*1000)
			if n, err := io.Copy(io.Discard, rc); err != nil || n != rangeLen-1 {
				b.Fatalf("range: %d, %v", n, err)
			}
			rc.Close()
		}
		rangeS = append(rangeS, nRanges*rangeLen/time.Since(start).Seconds())
		start = time.Now()
		for _, r := range ranges {
			out, err := rclone("cat", "--offset", fmt.Sprint(r.off), "--count", fmt.Sprint(rangeLen),
				fmt.Sprintf("vs3:%s/rclone-%d/%s.zst", bucket, round, r.o.ID)).Output()
			if err != nil || len(out) != rangeLen {
				b.Fatalf("rclone cat range: %d bytes, %v", len(out), err)
			}
		}
		rangeR = append(rangeR, nRanges*rangeLen/time.Since(start).Seconds())
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	mbs := func(v []float64) float64 { return med(v) / 1e6 }
	b.Logf("%d objects x %d MiB, %d rounds, medians:", nObj, mib, rounds)
	b.Logf("upload only:       strata %.0f MB/s  rclone copy %.0f MB/s  ratio %.2f", mbs(putS), mbs(rcCopy), med(putS)/med(rcCopy))
	b.Logf("upload + verify:   strata Put %.0f MB/s  rclone copy+cat+b3 %.0f MB/s  ratio %.2f", mbs(putRB), mbs(rcCopyRB), med(putRB)/med(rcCopyRB))
	b.Logf("Put vs plain copy: ratio %.2f", med(putRB)/med(rcCopy))
	b.Logf("4 MiB ranged reads: strata %.0f MB/s  rclone cat --offset --count %.0f MB/s  ratio %.2f", mbs(rangeS), mbs(rangeR), med(rangeS)/med(rangeR))
	slices.Sort(ttfb)
	b.Logf("time to first byte of a 4 MiB ranged GET: p50 %.2f ms  p90 %.2f ms (n=%d)", ttfb[len(ttfb)/2], ttfb[len(ttfb)*9/10], len(ttfb))
	b.ReportMetric(med(putS)/med(rcCopy), "upload-ratio")
	b.ReportMetric(med(rangeS)/med(rangeR), "range-ratio")
	b.ReportMetric(ttfb[len(ttfb)/2], "ttfb-ms")
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err == nil && n > 0 {
			return n
		}
	}
	return def
}
