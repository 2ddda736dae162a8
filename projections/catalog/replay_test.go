package catalog_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
)

func openCat(t testing.TB, dir string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(dir, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestReplayFromLog: a catalog rebuilt from a real JetStream log equals one
// that applied the same events directly; Verify finds nothing on it and
// names a difference on a catalog that is behind; Replace swaps a rebuilt
// catalog in; CatchUp of a partial catalog converges.
func TestReplayFromLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	envs := catalogtest.Generate(6000, 3, catalogtest.Options{})
	if err := catalogtest.Publish(js, "test", envs); err != nil {
		t.Fatal(err)
	}
	last, err := pipeline.LastSeq(ctx, js)
	if err != nil || last != uint64(len(envs)) {
		t.Fatalf("stream has %d events (%v), want %d", last, err, len(envs))
	}

	direct := openCat(t, t.TempDir())
	if err := direct.Apply(envs); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rebuilt, err := catalog.Rebuild(ctx, js, filepath.Join(dir, "cat"), last, catalog.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rebuilt.Close() })
	if diff, err := catalog.Diff(direct, rebuilt); err != nil || diff != "" {
		t.Fatalf("rebuilt catalog differs from the directly applied one: %q %v", diff, err)
	}
	if _, err := catalog.Rebuild(ctx, js, filepath.Join(dir, "cat"), last, catalog.Options{}, nil); err == nil {
		t.Fatal("rebuild into an existing directory: want an error")
	}
	seq, diff, err := rebuilt.Verify(ctx, js, dir, nil)
	if err != nil || diff != "" || seq != last {
		t.Fatalf("verify of a rebuilt catalog: seq %d diff %q err %v", seq, diff, err)
	}

	// A catalog that is behind the log differs from a replay of the log
	// only up to its own sequence: so alter one by applying a prefix and a
	// foreign event instead of the rest.
	partial := openCat(t, t.TempDir())
	if err := partial.Apply(envs[:4000]); err != nil {
		t.Fatal(err)
	}
	if err := partial.CatchUp(ctx, js, last, nil); err != nil || partial.LastSeq() != last {
		t.Fatalf("catch up: seq %d, %v", partial.LastSeq(), err)
	}
	if diff, _ := catalog.Diff(direct, partial); diff != "" {
		t.Fatalf("caught-up catalog differs: %s", diff)
	}
	other := catalogtest.Generate(6000, 4, catalogtest.Options{})
	wrong := openCat(t, t.TempDir())
	if err := wrong.Apply(other); err != nil {
		t.Fatal(err)
	}
	if _, diff, err := wrong.Verify(ctx, js, dir, nil); err != nil || diff == "" {
		t.Fatalf("verify of a catalog of another log: diff %q err %v; want a difference", diff, err)
	}

	live := filepath.Join(dir, "live")
	var calls int
	if err := catalog.Replace(ctx, js, live, last, catalog.Options{}, func(done, total uint64) {
		calls++
		if total != last || done > total {
			t.Errorf("progress %d/%d", done, total)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Error("no progress reported")
	}
	for _, p := range []string{live + ".replay", live + ".old"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
	replaced := openCat(t, live)
	if diff, _ := catalog.Diff(direct, replaced); diff != "" || replaced.LastSeq() != last {
		t.Fatalf("replaced catalog: seq %d diff %s", replaced.LastSeq(), diff)
	}
}

// TestFollow: the projection follows new events as they are published and
// stops when its context ends.
func TestFollow(t *testing.T) {
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	envs := catalogtest.Generate(3000, 5, catalogtest.Options{})
	cat := openCat(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cat.Follow(ctx, js, pipelinetest.Logger(t)) }()
	for _, part := range [][2]int{{0, 1000}, {1000, 3000}} {
		if err := catalogtest.Publish(js, "test", envs[part[0]:part[1]]); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
		err := cat.WaitSeq(wctx, uint64(part[1]))
		wcancel()
		if err != nil {
			t.Fatalf("catalog at seq %d, want %d: %v", cat.LastSeq(), part[1], err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow returned %v, want nil at cancel", err)
	}
	direct := openCat(t, t.TempDir())
	if err := direct.Apply(envs); err != nil {
		t.Fatal(err)
	}
	if diff, _ := catalog.Diff(direct, cat); diff != "" {
		t.Fatalf("followed catalog differs: %s", diff)
	}
}

// BenchmarkReplayLog is `strata replay` end to end: N events (default 1M,
// STRATA_BENCH_EVENTS to change) in a real JetStream file store, read with
// the ordered consumer and applied to a fresh Pebble catalog, including
// the final flush. Reports events/s.
func BenchmarkReplayLog(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("STRATA_BENCH_EVENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	srv := pipelinetest.RunServer(b)
	js := srv.JetStream()
	if err := catalogtest.Publish(js, "benchhost", catalogtest.Generate(n, 7, catalogtest.Options{})); err != nil {
		b.Fatal(err)
	}
	last, err := pipeline.LastSeq(ctx, js)
	if err != nil || last != uint64(n) {
		b.Fatalf("stream has %d events (%v), want %d", last, err, n)
	}
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		cat, err := catalog.Rebuild(ctx, js, filepath.Join(b.TempDir(), "cat"), last, catalog.Options{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := cat.Close(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
	}
}
