package pipeline_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

// checkFor polls fn every 10ms until it returns nil or total passes.
func checkFor(t testing.TB, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", total, err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for an outcome
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fileDeleted returns a valid envelope numbered i (deterministic id).
func fileDeleted(t testing.TB, i int) events.Envelope {
	t.Helper()
	ev := &events.FileDeleted{FileID: fmt.Sprintf("%032x", i), Path: "/hot/file" + strconv.Itoa(i)}
	env, err := events.New(events.NewID(events.KindFileDeleted, strconv.Itoa(i)), events.Source("test", "test"),
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i)*time.Second), ev)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func publishN(t testing.TB, ctx context.Context, js jetstream.JetStream, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := pipeline.Publish(ctx, js, "test", fileDeleted(t, i)); err != nil {
			t.Fatal(err)
		}
	}
}

func mustEncode(t testing.TB, env events.Envelope) []byte {
	t.Helper()
	b, err := events.Encode(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// consumerState returns (pending, ack pending) of a durable.
func consumerState(ctx context.Context, js jetstream.JetStream, name string) (uint64, int, error) {
	c, err := js.Consumer(ctx, pipeline.StreamEvents, name)
	if err != nil {
		return 0, 0, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return ci.NumPending, ci.NumAckPending, nil
}

// waitDrained waits until durable name has nothing pending or unacked.
func waitDrained(t testing.TB, ctx context.Context, js jetstream.JetStream, name string) {
	t.Helper()
	checkFor(t, 20*time.Second, func() error {
		p, ap, err := consumerState(ctx, js, name)
		if err != nil {
			return err
		}
		if p != 0 || ap != 0 {
			return fmt.Errorf("consumer %s: pending %d, ack pending %d", name, p, ap)
		}
		return nil
	})
}

// deadLetters reads every message of the dead-letter stream.
func deadLetters(t testing.TB, ctx context.Context, js jetstream.JetStream) []jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(ctx, pipeline.StreamDeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *m)
	}
	return out
}

// runStage runs st in the background; the returned stop cancels it and
// waits for Run to return, failing the test on a Run error.
func runStage(t testing.TB, js jetstream.JetStream, st pipeline.Stage, validate func([]byte) error) (stop func()) {
	t.Helper()
	r := &pipeline.Runner{JS: js, Host: "test", Logger: testLogger(t), Validate: validate}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, st) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stage %s: %v", st.Name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("stage %s did not stop", st.Name)
		}
	}
	t.Cleanup(stop)
	return stop
}
