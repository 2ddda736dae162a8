package catalog_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// fill writes dir/filler until the filesystem refuses with ENOSPC, and
// keeps topping it up until it has stayed full for half a second (Pebble
// removes obsolete files in the background, which frees room).
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, 1<<20)
	topUp := func() (wrote bool) {
		for _, n := range []int{1 << 20, 64 << 10, 4 << 10} {
			for {
				if _, err := f.Write(buf[:n]); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatal(err)
					}
					break
				}
				wrote = true
			}
		}
		return wrote
	}
	topUp()
	deadline := time.Now().Add(20 * time.Second)
	for full := time.Now(); time.Since(full) < 500*time.Millisecond; time.Sleep(20 * time.Millisecond) {
		if topUp() {
			full = time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatal("the filesystem does not stay full")
		}
	}
	return p
}

// lines is a slog handler's output, safe for concurrent use.
type lines struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lines) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), sub)
}

// applyAll applies envs in batches of n and returns the first error and
// how many were applied before it.
func applyAll(c *catalog.Catalog, envs []events.Envelope, n int) (int, error) {
	for i := 0; i < len(envs); i += n {
		if err := c.Apply(envs[i:min(i+n, len(envs))]); err != nil {
			return i, err
		}
	}
	return len(envs), nil
}

// sameAsDirect checks that c equals a catalog that applied envs[:c.LastSeq()]
// on a roomy disk.
func sameAsDirect(t *testing.T, c *catalog.Catalog, envs []events.Envelope) {
	t.Helper()
	ref := openCat(t, t.TempDir())
	if err := ref.Apply(envs[:c.LastSeq()]); err != nil {
		t.Fatal(err)
	}
	if diff, err := catalog.Diff(c, ref); err != nil || diff != "" {
		t.Fatalf("catalog at seq %d differs from one that applied the same events: %q %v", c.LastSeq(), diff, err)
	}
}

// TestCloseOnFullDisk: a catalog with unflushed batches whose filesystem
// another program fills closes in bounded time (it used to wait forever
// for a flush that Pebble retried in a loop, logging each failure: tens of
// thousands of lines a minute), says little, and loses nothing: reopened
// once there is room, it holds every batch it had committed.
func TestCloseOnFullDisk(t *testing.T) {
	mnt := stratatest.LoopMount(t, "ext4", 128<<20)
	dir := filepath.Join(mnt, "catalog")
	var logs lines
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	envs := catalogtest.Generate(30000, 11, catalogtest.Options{})
	// A small memtable: each write-ahead log is preallocated to 110 % of
	// it, and Pebble keeps up to four.
	opts := catalog.Options{Logger: logger, Sync: true, MemTableBytes: 4 << 20}
	c, err := catalog.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := applyAll(c, envs[:20000], 500); err != nil {
		t.Fatalf("apply on a roomy disk, after %d: %v", n, err)
	}
	filler := fill(t, mnt)
	closed := make(chan error, 1)
	start := time.Now()
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		t.Logf("close on a full disk: %v after %s", err, time.Since(start).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatalf("Close on a full disk did not return within 30s; %d log lines about no space", logs.count("no space left"))
	}
	if n := logs.count("no space left"); n > 5 {
		t.Errorf("%d log lines about no space left while closing, want a few", n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c2, err := catalog.Open(dir, opts)
	if err != nil {
		t.Fatalf("reopen once there is room: %v", err)
	}
	defer c2.Close()
	if c2.LastSeq() != 20000 {
		t.Fatalf("reopened at seq %d, want 20000 (every committed batch)", c2.LastSeq())
	}
	if n, err := applyAll(c2, envs[20000:], 500); err != nil {
		t.Fatalf("apply after reopening, after %d: %v", n, err)
	}
	sameAsDirect(t, c2, envs)
}

// fullSpace is a catalog.Space that says full once told so.
type fullSpace struct {
	mu       sync.Mutex
	full     bool
	reported []error
}

func (s *fullSpace) Full() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.full }
func (s *fullSpace) Wait(ctx context.Context) error {
	<-ctx.Done() // not used: these tests do not Follow
	return ctx.Err()
}
func (s *fullSpace) Report(err error) bool {
	if !pipeline.IsNoSpace(err) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.full = true
	s.reported = append(s.reported, err)
	return true
}

// TestApplyOnFullDiskFails: a batch whose write-ahead log write fails for
// lack of space (Pebble's "fatal commit error", which used to panic the
// daemon) fails that Apply with ErrFailed and an out-of-space error,
// reported to the Space; later Applies fail at once without touching
// Pebble; reads go on; Close returns. Once there is room, Reopen recovers
// every committed batch and applying resumes, equal to a catalog that
// applied the same events on a roomy disk.
func TestApplyOnFullDiskFails(t *testing.T) {
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	dir := filepath.Join(mnt, "catalog")
	envs := catalogtest.Generate(40000, 12, catalogtest.Options{})
	// Leave about 1 MiB: the write-ahead log (preallocated up to 110 % of
	// the 8 MiB memtable when there is room) cannot grow far.
	filler := fill(t, mnt)
	if err := os.Truncate(filler, mustSize(t, filler)-(1<<20)); err != nil {
		t.Fatal(err)
	}
	sp := &fullSpace{}
	c, err := catalog.Open(dir, catalog.Options{Sync: true, MemTableBytes: 8 << 20, Space: sp})
	if err != nil {
		t.Fatal(err)
	}
	applied, err := applyAll(c, envs, 200)
	if err == nil {
		t.Fatal("every batch applied on a full disk")
	}
	if !errors.Is(err, catalog.ErrFailed) || !pipeline.IsNoSpace(err) {
		t.Fatalf("apply on a full disk: %v, want ErrFailed for lack of space", err)
	}
	if !sp.Full() {
		t.Error("the failed write was not reported to the Space")
	}
	seq := c.LastSeq()
	if seq != uint64(applied) {
		t.Fatalf("LastSeq %d after %d applied", seq, applied)
	}
	t.Logf("applied %d events, then: %v", applied, err)
	if err := c.Apply(envs[applied : applied+1]); !errors.Is(err, catalog.ErrFailed) {
		t.Fatalf("apply after the failure: %v, want ErrFailed", err)
	}
	if _, err := c.Stats(); err != nil {
		t.Fatalf("reads after the failure: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := c.Reopen(); err != nil {
		t.Fatalf("reopen once there is room: %v", err)
	}
	if c.Failed() != nil || c.LastSeq() < seq {
		t.Fatalf("after reopen: failed %v, seq %d (was %d)", c.Failed(), c.LastSeq(), seq)
	}
	if n, err := applyAll(c, envs[c.LastSeq():], 200); err != nil {
		t.Fatalf("apply after reopen, after %d: %v", n, err)
	}
	sameAsDirect(t, c, envs)
	done := make(chan error, 1)
	go func() { done <- c.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("close did not return")
	}
}

func mustSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestFollowResumesAfterFullDisk: the projection following a real log
// while its filesystem fills (the Space here reacts only to failed
// writes, so a write does fail): it stops without crashing, reports the
// full disk, applies nothing while it lasts, and once there is room
// reopens the database and catches up by itself, equal to a catalog that
// applied the whole log on a roomy disk.
func TestFollowResumesAfterFullDisk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	conds := pipeline.NewConditions(nil)
	sp := pipeline.NewSpace(pipeline.SpaceConfig{Key: "space:catalog", Place: "catalog", Path: mnt, Conditions: conds, Interval: 50 * time.Millisecond, Reserve: 1})
	sctx, scancel := context.WithCancel(ctx)
	sdone := make(chan struct{})
	go func() { defer close(sdone); sp.Run(sctx) }()
	defer func() { scancel(); <-sdone }()

	envs := catalogtest.Generate(30000, 13, catalogtest.Options{})
	if err := catalogtest.Publish(js, "test", envs[:1000]); err != nil {
		t.Fatal(err)
	}
	// Leave 12 MiB: the first write-ahead logs fit (Pebble preallocates
	// each to 110 % of the 8 MiB memtable and rotates them as its first
	// memtables grow from 256 KiB), a later one does not.
	filler := fill(t, mnt)
	if err := os.Truncate(filler, mustSize(t, filler)-(12<<20)); err != nil {
		t.Fatal(err)
	}
	c, err := catalog.Open(filepath.Join(mnt, "catalog"), catalog.Options{Sync: true, MemTableBytes: 8 << 20, Space: sp})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fctx, fcancel := context.WithCancel(ctx)
	followed := make(chan error, 1)
	go func() { followed <- c.Follow(fctx, js, pipelinetest.Logger(t)) }()
	if err := catalogtest.Publish(js, "test", envs[1000:]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.Failed() == nil && !sp.Full() {
		if time.Now().After(deadline) {
			t.Fatalf("the catalog applied %d events on a full disk without a failed write", c.LastSeq())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stuck := c.LastSeq()
	if stuck >= uint64(len(envs)) {
		t.Fatalf("everything applied on a full disk (seq %d)", stuck)
	}
	if _, ok := conds.Get("space:catalog"); !ok {
		t.Fatal("no out-of-space condition")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSeq(ctx, uint64(len(envs))); err != nil {
		t.Fatalf("the catalog did not catch up once there was room (at %d of %d, failed: %v): %v", c.LastSeq(), len(envs), c.Failed(), err)
	}
	fcancel()
	if err := <-followed; err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped at seq %d on the full disk, caught up to %d", stuck, c.LastSeq())
	sameAsDirect(t, c, envs)
}
