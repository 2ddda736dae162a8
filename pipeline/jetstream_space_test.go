package pipeline_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestJetStreamRecoversFromFullDisk: the event store on a full filesystem.
// A write that reaches it fails for good — nats-server's file store keeps
// its first write error and drops every later publish without replying —
// until JetStream restarts, which the data directory's Space does by
// itself once there is room. Meanwhile the daemon's publishes fail at
// once with ErrNoSpace (not after a timeout, not forever), the condition
// is in force, and nothing recorded before is lost.
func TestJetStreamRecoversFromFullDisk(t *testing.T) {
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	data := filepath.Join(mnt, "data")
	srv := pipelinetest.RunServer(t, pipelinetest.WithDataDir(data))
	js := srv.JetStream()
	ctx := testCtx(t)
	for i := 1; i <= 20; i++ {
		if _, err := pipeline.Publish(ctx, js, "test", fileDeleted(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	filler := fillFS(t, mnt)

	// A publish that reaches the full store (as one does in the second
	// before the Space looks): through a connection that bypasses the
	// daemon's guard.
	raw, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 64<<10) // more than the last block holds
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	_, rawErr := raw.PublishMsg(pctx, &nats.Msg{Subject: events.Subject("test", events.KindFileDeleted), Data: big})
	pcancel()
	if rawErr == nil {
		t.Fatal("a 64 KiB message was stored on a full filesystem")
	}
	checkFor(t, 5*time.Second, func() error {
		if _, ok := srv.Conditions().Get(pipeline.DataSpaceKey); !ok {
			return errors.New("no out-of-space condition for the data directory")
		}
		return nil
	})
	// The daemon's publishes fail at once, saying why.
	start := time.Now()
	_, err = pipeline.Publish(ctx, js, "test", fileDeleted(t, 21))
	if !errors.Is(err, pipeline.ErrNoSpace) || time.Since(start) > time.Second || !strings.Contains(err.Error(), "data directory") {
		t.Fatalf("publish while full: %v after %s, want ErrNoSpace at once", err, time.Since(start))
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := srv.Space().Wait(wctx); err != nil {
		t.Fatalf("the data directory is still out of space after the filler was removed: %v", err)
	}
	// JetStream takes writes again, without a restart of the daemon.
	pctx, pcancel = context.WithTimeout(ctx, 20*time.Second)
	defer pcancel()
	seq, err := pipeline.Publish(pctx, js, "test", fileDeleted(t, 21))
	if err != nil {
		t.Fatalf("publish once there is room: %v", err)
	}
	if seq != 21 {
		t.Fatalf("the event after recovery has seq %d, want 21 (nothing lost, nothing added)", seq)
	}
	n := 0
	if err := pipeline.Follow(ctx, js, 1, func(b []events.Envelope) error {
		for _, env := range b {
			n++
			if env.Type == "" {
				t.Errorf("seq %d does not decode", env.Seq)
			}
		}
		if n >= 21 {
			return pipeline.ErrStop
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestJetStreamStartsOnNearlyFullDisk: a server started while its data
// directory is nearly full takes events again once room is made. Left to
// itself nats-server sizes JetStream's storage limit from the free space
// at start (75 % of it, plus 75 % of the store), so with 2 MiB free and a
// 10 MiB stream every publish was refused with "insufficient resources"
// (503, retried forever) however much room was made later.
func TestJetStreamStartsOnNearlyFullDisk(t *testing.T) {
	mnt := stratatest.LoopMount(t, "ext4", 64<<20)
	data := filepath.Join(mnt, "data")
	ctx := testCtx(t)
	first := pipelinetest.RunServer(t, pipelinetest.WithDataDir(data))
	body := bytes.Repeat([]byte("y"), 100<<10)
	for i := 0; i < 100; i++ {
		if _, err := first.JetStream().PublishMsg(ctx, &nats.Msg{Subject: events.Subject("test", events.KindFileDeleted), Data: body}); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// Leave about 2 MiB free.
	filler := fillFS(t, mnt)
	if err := os.Truncate(filler, mustSize(t, filler)-(2<<20)); err != nil {
		t.Fatal(err)
	}
	srv := pipelinetest.RunServer(t, pipelinetest.WithDataDir(data))
	checkFor(t, 5*time.Second, func() error {
		if _, err := pipeline.Publish(ctx, srv.JetStream(), "test", fileDeleted(t, 1)); !errors.Is(err, pipeline.ErrNoSpace) {
			return fmt.Errorf("publish on a nearly full disk: %v, want ErrNoSpace", err)
		}
		return nil
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := srv.Space().Wait(pctx); err != nil {
		t.Fatal(err)
	}
	seq, err := pipeline.Publish(pctx, srv.JetStream(), "test", fileDeleted(t, 1))
	if err != nil || seq != 101 {
		t.Fatalf("publish once there is room: seq %d, %v; want 101", seq, err)
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
