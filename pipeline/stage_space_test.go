package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestStageHoldsMessageOnFullDisk: a handler whose write fails with ENOSPC
// on a watched place is not a failing message: it is neither counted
// against MaxDeliver nor dead-lettered, however often the write fails
// (the Space here reacts only to reports, so it clears and fails again,
// as for an object larger than the free room: the retries back off);
// once there is room it succeeds with the same delivery. A stage
// stopping while it holds a message returns at once, and the message is
// handled after the restart.
func TestStageHoldsMessageOnFullDisk(t *testing.T) {
	defer pipeline.SetHoldTimes([]time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond}, 50*time.Millisecond)()
	srv := pipelinetest.RunServer(t)
	mnt := stratatest.LoopMount(t, "ext4", 32<<20)
	sp := pipeline.NewSpace(pipeline.SpaceConfig{Key: "space:staging", Place: "staging", Path: mnt,
		Conditions: srv.Conditions(), Interval: 20 * time.Millisecond, Reserve: 1})
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan struct{})
	go func() { defer close(sdone); sp.Run(sctx) }()
	t.Cleanup(func() { scancel(); <-sdone })
	// Leave 512 KiB: the handler's 1 MiB does not fit.
	filler := fillFS(t, mnt)
	fi, _ := os.Stat(filler)
	if err := os.Truncate(filler, fi.Size()-(512<<10)); err != nil {
		t.Fatal(err)
	}

	var calls atomic.Int32
	var mu sync.Mutex
	var deliveries []int
	st := pipeline.Stage{
		Name: "holder", MaxDeliver: 2, Backoff: []time.Duration{10 * time.Millisecond},
		Handle: func(ctx context.Context, env events.Envelope, _ events.Event) error {
			calls.Add(1)
			mu.Lock()
			deliveries = append(deliveries, pipeline.Deliveries(ctx))
			mu.Unlock()
			p := filepath.Join(mnt, env.ID)
			if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
				os.Remove(p)
				return fmt.Errorf("stage: %w", err)
			}
			return nil
		},
	}
	run := func() (stop func() time.Duration) {
		r := &pipeline.Runner{JS: srv.JetStream(), Host: "test", Logger: testLogger(t), Spaces: []*pipeline.Space{sp}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx, st) }()
		return func() time.Duration {
			start := time.Now()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
			return time.Since(start)
		}
	}
	stop := run()
	ctx := testCtx(t)
	if _, err := pipeline.Publish(ctx, srv.JetStream(), "test", fileDeleted(t, 1)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if n := calls.Load(); n < 5 {
			return fmt.Errorf("%d attempts so far", n)
		}
		return nil
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error { return consumerIdle(ctx, srv.JetStream(), "holder") })
	mu.Lock()
	for i, d := range deliveries {
		if d != 1 {
			t.Errorf("attempt %d saw delivery %d: a hold must not use up deliveries", i+1, d)
		}
	}
	mu.Unlock()
	if st, err := pipeline.StreamStatus(ctx, srv.JetStream()); err != nil || st.DeadLetters != 0 {
		t.Fatalf("dead letters after a full disk: %+v %v", st, err)
	}

	// Stop while holding: at once, not after the drain timeout.
	filler = fillFS(t, mnt)
	before := calls.Load()
	if _, err := pipeline.Publish(ctx, srv.JetStream(), "test", fileDeleted(t, 2)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if calls.Load() == before || !sp.Full() {
			return errors.New("not holding yet")
		}
		return nil
	})
	if took := stop(); took > 2*time.Second {
		t.Fatalf("a stage holding a message for lack of space took %s to stop", took)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	stop = run()
	defer stop()
	checkFor(t, 10*time.Second, func() error { return consumerIdle(ctx, srv.JetStream(), "holder") })
}

func consumerIdle(ctx context.Context, js jetstream.JetStream, name string) error {
	c, err := js.Consumer(ctx, pipeline.StreamEvents, name)
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending+uint64(info.NumAckPending) != 0 {
		return fmt.Errorf("consumer %s: %d pending, %d in progress", name, info.NumPending, info.NumAckPending)
	}
	return nil
}
