package pipeline_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
)

// readerJS connects as the read-only reader user.
func readerJS(t *testing.T, s *pipeline.Server) jetstream.JetStream {
	t.Helper()
	nc, err := pipeline.DialReader(testCtx(t), s.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestForeignDurableIsReplaced: a reader creates a durable under the name
// of a stage that does not exist yet (ack policy none: pulling would ack).
// When the stage starts, the daemon neither adopts it nor fails: it
// deletes it and creates its own, which carries the owner token and
// receives every event.
func TestForeignDurableIsReplaced(t *testing.T) {
	s := pipelinetest.RunServer(t, pipelinetest.WithTCP())
	ctx := testCtx(t)
	publishN(t, ctx, s.JetStream(), 0, 3)
	rjs := readerJS(t, s)
	if _, err := rjs.CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, jetstream.ConsumerConfig{
		Durable: "store-later", AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverNewPolicy}); err != nil {
		t.Fatalf("reader could not create a durable (the test needs it to): %v", err)
	}
	var n atomic.Int64
	r := &pipeline.Runner{JS: s.JetStream(), Host: "test", Logger: testLogger(t), Owner: s.OwnerToken()}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- r.Run(rctx, pipeline.Stage{Name: "store-later", Handle: func(context.Context, events.Envelope, events.Event) error {
			n.Add(1)
			return nil
		}})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for n.Load() < 3 && time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("stage stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Fatalf("stage handled %d events, want the 3 already in the log", n.Load())
	}
	c, err := s.JetStream().Consumer(ctx, pipeline.StreamEvents, "store-later")
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.CachedInfo().Config
	if cfg.Metadata[pipeline.MetaOwner] != s.OwnerToken() || cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.DeliverPolicy != jetstream.DeliverAllPolicy {
		t.Fatalf("stage durable after start: %+v; want the daemon's (owner token, explicit acks, all events)", cfg)
	}
}

// TestEarlyDurableIsAdopted: a stage durable made before owner tokens
// existed keeps its progress: it is adopted, not recreated.
func TestEarlyDurableIsAdopted(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	publishN(t, ctx, s.JetStream(), 0, 4)
	st := pipeline.Stage{Name: "early", Handle: func(context.Context, events.Envelope, events.Event) error { return nil }}
	old := pipeline.ConsumerConfig(st)
	cons, err := s.JetStream().CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, old)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var seen []uint64
	r := &pipeline.Runner{JS: s.JetStream(), Host: "test", Logger: testLogger(t), Owner: s.OwnerToken()}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	seenc := make(chan uint64, 8)
	st.Handle = func(_ context.Context, env events.Envelope, _ events.Event) error { seenc <- env.Seq; return nil }
	go func() { done <- r.Run(rctx, st) }()
	for len(seen) < 2 {
		select {
		case q := <-seenc:
			seen = append(seen, q)
		case <-time.After(20 * time.Second):
			t.Fatalf("adopted durable delivered %v, want seqs 3 and 4", seen)
		}
	}
	cancel()
	<-done
	if !slices.Equal(seen, []uint64{3, 4}) {
		t.Fatalf("adopted durable delivered %v, want 3 and 4 (its progress kept)", seen)
	}
}

// TestSweepAndQuota: the stray durables of readers are removed, the
// allowed ones and the daemon's kept; the number of consumers is bounded.
func TestSweepAndQuota(t *testing.T) {
	s := pipelinetest.RunServer(t, pipelinetest.WithTCP(), pipelinetest.WithConfig(func(c *pipeline.Config) {
		c.ReaderConsumers = 3
	}))
	ctx := testCtx(t)
	rjs := readerJS(t, s)
	for _, name := range []string{"rogue", "grafana"} {
		if _, err := rjs.CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	st := pipeline.Stage{Name: "mine", Handle: func(context.Context, events.Envelope, events.Event) error { return nil }}
	cfg := pipeline.ConsumerConfig(st)
	cfg.Metadata = map[string]string{pipeline.MetaOwner: s.OwnerToken()}
	if _, err := s.JetStream().CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, cfg); err != nil {
		t.Fatal(err)
	}
	owners := func() map[string]string {
		cs, err := pipeline.Consumers(ctx, s.JetStream(), s.OwnerToken(), []string{"grafana"})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, c := range cs {
			m[c.Name] = c.Owner
		}
		return m
	}
	if o := owners(); o["rogue"] != "stray" || o["grafana"] != "allowed" || o["mine"] != "daemon" {
		t.Fatalf("owners %v", o)
	}
	removed, err := pipeline.SweepConsumers(ctx, s.JetStream(), s.OwnerToken(), []string{"grafana"}, testLogger(t))
	if err != nil || !slices.Equal(removed, []string{pipeline.StreamEvents + "/rogue"}) {
		t.Fatalf("sweep removed %v, %v; want only the rogue durable", removed, err)
	}
	if o := owners(); o["rogue"] != "" || o["grafana"] == "" || o["mine"] == "" {
		t.Fatalf("after the sweep: %v", o)
	}
	// Quota: the durables of no stage (0 here) + the daemon's readers
	// (32) + 3 for outside subscribers; two are in use.
	var err2 error
	for i := range 40 {
		if _, err2 = rjs.CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, jetstream.ConsumerConfig{
			Durable: "many" + string(rune('a'+i)), AckPolicy: jetstream.AckExplicitPolicy}); err2 != nil {
			break
		}
	}
	if !errors.Is(err2, jetstream.ErrMaximumConsumersLimit) {
		t.Fatalf("a reader created 40 consumers (last error %v): no quota", err2)
	}
}
