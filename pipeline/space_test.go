package pipeline_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// fillFS writes dir/filler until ENOSPC and returns its path.
func fillFS(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0x33}, 1<<20)
	for _, n := range []int{1 << 20, 64 << 10, 4 << 10} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	return p
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSpaceOnFullDisk: a Space on a real filesystem that another program
// fills is out of space within a second (below the reserve, before any
// write of Strata fails), names the filesystem and its mount point, blocks
// Wait, logs once; when room returns it runs its recovery hooks (a failing
// hook keeps the condition) and clears by itself, logging once.
func TestSpaceOnFullDisk(t *testing.T) {
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	var logs syncBuf
	conds := pipeline.NewConditions(slog.New(slog.NewTextHandler(&logs, nil)))
	sp := pipeline.NewSpace(pipeline.SpaceConfig{Key: "space:test", Place: "data directory", Path: mnt, Conditions: conds, Interval: 50 * time.Millisecond})
	var hookRuns, hookFails atomic.Int32
	hookFails.Store(2)
	sp.OnRecover(func(context.Context) error {
		hookRuns.Add(1)
		if hookFails.Add(-1) >= 0 {
			return errors.New("not yet")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sp.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if sp.Full() || sp.Err() != nil {
		t.Fatal("an empty filesystem is out of space")
	}

	filler := fillFS(t, mnt)
	checkFor(t, 5*time.Second, func() error {
		if !sp.Full() {
			return errors.New("not out of space yet")
		}
		return nil
	})
	var se *pipeline.SpaceError
	err := sp.Err()
	if !errors.As(err, &se) || !errors.Is(err, pipeline.ErrNoSpace) || se.FS.Mount != mnt || !strings.HasPrefix(se.FS.Device, "/dev/loop") {
		t.Fatalf("Err: %v (%+v), want a SpaceError naming the loop device mounted at %s", err, se, mnt)
	}
	for _, want := range []string{"data directory " + mnt, "mounted at " + mnt, "free space on /dev/loop"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	c, ok := conds.Get("space:test")
	if !ok || c.Kind != pipeline.KindNoSpace || c.FS.Mount != mnt {
		t.Fatalf("condition: %+v %v", c, ok)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if err := sp.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait while full: %v, want it to block", err)
	}
	wcancel()
	// An ENOSPC reported by a writer keeps it (and is its last error).
	sp.Report(&os.PathError{Op: "write", Path: filepath.Join(mnt, "x"), Err: syscall.ENOSPC})
	if c, _ := conds.Get("space:test"); !strings.Contains(c.LastError, "no space left on device") {
		t.Fatalf("last error after a report: %q", c.LastError)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := sp.Wait(wctx); err != nil {
		t.Fatalf("Wait once there is room: %v", err)
	}
	if n := hookRuns.Load(); n != 3 {
		t.Fatalf("recovery hook ran %d times, want 3 (two failures kept the condition)", n)
	}
	if _, ok := conds.Get("space:test"); ok || sp.Err() != nil {
		t.Fatal("condition still in force once there is room")
	}
	if n := strings.Count(logs.String(), "out of space: data directory"); n != 1 {
		t.Errorf("%d lines for the condition, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "space is back: data directory"); n != 1 {
		t.Errorf("%d lines for its end, want 1:\n%s", n, logs.String())
	}
	if _, err := os.Stat(filepath.Join(mnt, ".strata-space-probe")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("probe file left behind: %v", err)
	}
}
