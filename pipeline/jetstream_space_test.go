package pipeline_test

import (
	"bytes"
	"context"
	"errors"
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
