package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
)

func testLogger(t testing.TB) *slog.Logger { return pipelinetest.Logger(t) }

func TestPublishDeduplicates(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	env := fileDeleted(t, 1)
	seq1, err := pipeline.Publish(ctx, js, "test", env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Publish(ctx, js, "test", fileDeleted(t, 2)); err != nil {
		t.Fatal(err)
	}
	seqAgain, err := pipeline.Publish(ctx, js, "test", env)
	if err != nil {
		t.Fatal(err)
	}
	if seqAgain != seq1 {
		t.Fatalf("republish of %s returned seq %d, want the original %d", env.ID, seqAgain, seq1)
	}
	st, err := pipeline.StreamStatus(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if st.Events != 2 || st.LastSeq != 2 {
		t.Fatalf("stream has %d events, last seq %d; want 2, 2", st.Events, st.LastSeq)
	}
	// The stored message is the encoded envelope on the event's subject.
	stream, err := js.Stream(ctx, pipeline.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.GetMsg(ctx, seq1)
	if err != nil {
		t.Fatal(err)
	}
	if want := events.Subject("test", events.KindFileDeleted); m.Subject != want {
		t.Fatalf("subject %q, want %q", m.Subject, want)
	}
	if string(m.Data) != string(mustEncode(t, env)) {
		t.Fatalf("stored body differs from the encoded envelope")
	}
	if m.Header.Get("Nats-Msg-Id") != env.ID {
		t.Fatalf("Nats-Msg-Id %q, want %q", m.Header.Get("Nats-Msg-Id"), env.ID)
	}
}

func TestPublishRejectsInvalid(t *testing.T) {
	s := pipelinetest.RunServer(t)
	env := fileDeleted(t, 1)
	env.Type = "strata.nope.v1"
	if _, err := pipeline.Publish(testCtx(t), s.JetStream(), "test", env); !errors.Is(err, events.ErrUnknownType) {
		t.Fatalf("publish of unknown type: %v, want ErrUnknownType", err)
	}
}

// TestStageRedeliveryIsIdempotent: the handler performs its side effect and
// is stopped before it can be acked; a new runner gets the message again and
// the side effect, keyed by event id, happens once.
func TestStageRedeliveryIsIdempotent(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	publishN(t, ctx, js, 0, 3)

	var mu sync.Mutex
	effects := map[string]int{}  // id → times the effect was applied
	attempts := map[string]int{} // id → handler calls
	started := make(chan struct{})
	var once sync.Once
	handle := func(stopAfterEffect bool) func(context.Context, events.Envelope, events.Event) error {
		return func(ctx context.Context, env events.Envelope, _ events.Event) error {
			mu.Lock()
			attempts[env.ID]++
			if effects[env.ID] == 0 { // idempotent effect keyed by event id
				effects[env.ID]++
			}
			mu.Unlock()
			if stopAfterEffect {
				once.Do(func() { close(started) })
				<-ctx.Done() // stopped before ack: only the drain timeout ends this
				return ctx.Err()
			}
			return nil
		}
	}
	st := pipeline.Stage{Name: "effects", AckWait: time.Second, DrainTimeout: 50 * time.Millisecond,
		Backoff: []time.Duration{10 * time.Millisecond}, Handle: handle(true)}
	stop := runStage(t, js, st, nil)
	<-started
	stop()

	st.Handle = handle(false)
	runStage(t, js, st, nil)
	waitDrained(t, ctx, js, "effects")
	mu.Lock()
	defer mu.Unlock()
	first := fileDeleted(t, 0).ID
	if attempts[first] != 2 {
		t.Fatalf("first event handled %d times, want 2 (once stopped before ack, once redelivered)", attempts[first])
	}
	for i := range 3 {
		id := fileDeleted(t, i).ID
		if effects[id] != 1 {
			t.Fatalf("event %d: effect applied %d times, want 1", i, effects[id])
		}
	}
	if n := len(deadLetters(t, ctx, js)); n != 0 {
		t.Fatalf("%d dead letters, want 0", n)
	}
}

func TestStageDeadLettersBadMessages(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	subject := events.Subject("test", events.KindFileDeleted)

	unknownRaw := []byte(strings.Replace(string(mustEncode(t, fileDeleted(t, 100))), events.KindFileDeleted.Type(), "strata.nope.v1", 1))
	invalidRaw := []byte(strings.Replace(string(mustEncode(t, fileDeleted(t, 101))), fmt.Sprintf("%032x", 101), "NOT-A-FILE-ID", -1))
	bad := []struct {
		raw    []byte
		reason string
	}{
		{[]byte("this is not json"), "malformed"},
		{unknownRaw, "unknown event type"},
		{invalidRaw, "invalid event"},
		{[]byte(`{"specversion":"1.0"}`), "malformed"},
	}
	// good, bad, good, bad, … so the stage must go on after each bad one.
	var badSeqs []uint64
	for i, b := range bad {
		if _, err := pipeline.Publish(ctx, js, "test", fileDeleted(t, i)); err != nil {
			t.Fatal(err)
		}
		ack, err := js.Publish(ctx, subject, b.raw)
		if err != nil {
			t.Fatal(err)
		}
		badSeqs = append(badSeqs, ack.Sequence)
	}
	publishN(t, ctx, js, len(bad), 3)

	var handled atomic.Int64
	runStage(t, js, pipeline.Stage{Name: "dl", Concurrency: 2, Handle: func(context.Context, events.Envelope, events.Event) error {
		handled.Add(1)
		return nil
	}}, nil)
	waitDrained(t, ctx, js, "dl")
	if n := handled.Load(); n != int64(len(bad)+3) {
		t.Fatalf("handled %d good events, want %d", n, len(bad)+3)
	}
	dls := deadLetters(t, ctx, js)
	if len(dls) != len(bad) {
		t.Fatalf("%d dead letters, want %d", len(dls), len(bad))
	}
	bySeq := map[string]int{}
	for i, seq := range badSeqs {
		bySeq[fmt.Sprint(seq)] = i
	}
	for _, dl := range dls {
		i, ok := bySeq[dl.Header.Get(pipeline.HeaderStreamSeq)]
		if !ok {
			t.Fatalf("dead letter with unexpected stream seq %q", dl.Header.Get(pipeline.HeaderStreamSeq))
		}
		if string(dl.Data) != string(bad[i].raw) {
			t.Errorf("dead letter %d: body %q, want the original %q", i, dl.Data, bad[i].raw)
		}
		if r := dl.Header.Get(pipeline.HeaderReason); !strings.Contains(r, bad[i].reason) {
			t.Errorf("dead letter %d: reason %q, want it to mention %q", i, r, bad[i].reason)
		}
		if dl.Subject != events.DeadLetterSubject("test", "dl") || dl.Header.Get(pipeline.HeaderStage) != "dl" ||
			dl.Header.Get(pipeline.HeaderSubject) != subject {
			t.Errorf("dead letter %d: subject %q headers %v", i, dl.Subject, dl.Header)
		}
	}
}

func TestStageValidateHook(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	publishN(t, ctx, js, 0, 4)
	rejected := fileDeleted(t, 2).ID
	validate := func(raw []byte) error {
		if strings.Contains(string(raw), rejected) {
			return errors.New("does not match schema")
		}
		return nil
	}
	var handled atomic.Int64
	runStage(t, js, pipeline.Stage{Name: "v", Handle: func(context.Context, events.Envelope, events.Event) error {
		handled.Add(1)
		return nil
	}}, validate)
	waitDrained(t, ctx, js, "v")
	dls := deadLetters(t, ctx, js)
	if len(dls) != 1 || !strings.Contains(dls[0].Header.Get(pipeline.HeaderReason), "does not match schema") {
		t.Fatalf("dead letters %v, want one rejected by the schema", dls)
	}
	if handled.Load() != 3 {
		t.Fatalf("handled %d, want 3", handled.Load())
	}
}

func TestStageRetriesThenDeadLetters(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	publishN(t, ctx, js, 0, 4)
	flaky, perm, hopeless, panicky := fileDeleted(t, 0).ID, fileDeleted(t, 1).ID, fileDeleted(t, 2).ID, fileDeleted(t, 3).ID

	var mu sync.Mutex
	calls := map[string]int{}
	var seqs []uint64
	runStage(t, js, pipeline.Stage{
		Name: "retry", MaxDeliver: 3, Backoff: []time.Duration{5 * time.Millisecond, 10 * time.Millisecond},
		Handle: func(ctx context.Context, env events.Envelope, ev events.Event) error {
			mu.Lock()
			calls[env.ID]++
			n := calls[env.ID]
			seqs = append(seqs, env.Seq)
			mu.Unlock()
			if d := pipeline.Deliveries(ctx); d != n {
				return failPermanent(t, "Deliveries(ctx) = %d on call %d", d, n)
			}
			if _, ok := ev.(*events.FileDeleted); !ok {
				return failPermanent(t, "wrong event type %T", ev)
			}
			switch env.ID {
			case flaky:
				if n < 3 {
					return errors.New("temporary trouble")
				}
			case perm:
				return pipeline.Permanent(errors.New("object is gone for good"))
			case hopeless:
				return fmt.Errorf("still down (attempt %d)", n)
			case panicky:
				panic("handler bug")
			}
			return nil
		},
	}, nil)
	waitDrained(t, ctx, js, "retry")
	mu.Lock()
	defer mu.Unlock()
	if calls[flaky] != 3 || calls[perm] != 1 || calls[hopeless] != 3 || calls[panicky] != 1 {
		t.Fatalf("calls: flaky %d (want 3), permanent %d (want 1), hopeless %d (want 3), panic %d (want 1)",
			calls[flaky], calls[perm], calls[hopeless], calls[panicky])
	}
	for _, seq := range seqs {
		if seq < 1 || seq > 4 {
			t.Fatalf("handler saw env.Seq %d, want 1..4", seq)
		}
	}
	reasons := map[string]string{}
	for _, dl := range deadLetters(t, ctx, js) {
		reasons[dl.Header.Get(pipeline.HeaderStreamSeq)] = dl.Header.Get(pipeline.HeaderReason)
	}
	if len(reasons) != 3 {
		t.Fatalf("dead letters %v, want 3 (permanent, exhausted, panic)", reasons)
	}
	if !strings.Contains(reasons["2"], "object is gone for good") {
		t.Errorf("permanent: reason %q", reasons["2"])
	}
	if !strings.Contains(reasons["3"], "gave up after 3 deliveries") || !strings.Contains(reasons["3"], "still down (attempt 3)") {
		t.Errorf("exhausted: reason %q", reasons["3"])
	}
	if !strings.Contains(reasons["4"], "handler panic") {
		t.Errorf("panic: reason %q", reasons["4"])
	}
}

// failPermanent fails the test and returns a permanent error.
func failPermanent(t testing.TB, format string, args ...any) error {
	t.Helper()
	t.Errorf(format, args...)
	return pipeline.Permanent(fmt.Errorf(format, args...))
}

// TestStageExhaustedByCrash: when the last allowed delivery never finishes
// (the process died), the message is dead-lettered on the extra delivery
// instead of sitting unacked forever.
func TestStageExhaustedByCrash(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	publishN(t, ctx, js, 0, 1)
	var calls atomic.Int64
	st := pipeline.Stage{Name: "crashy", MaxDeliver: 1, AckWait: 300 * time.Millisecond, DrainTimeout: time.Millisecond,
		Handle: func(ctx context.Context, _ events.Envelope, _ events.Event) error {
			calls.Add(1)
			<-ctx.Done()
			return ctx.Err()
		}}
	stop := runStage(t, js, st, nil)
	checkFor(t, 10*time.Second, func() error {
		if calls.Load() == 0 {
			return errors.New("not handled yet")
		}
		return nil
	})
	stop()
	st.Handle = func(context.Context, events.Envelope, events.Event) error {
		calls.Add(1)
		return nil
	}
	runStage(t, js, st, nil)
	waitDrained(t, ctx, js, "crashy")
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times, want 1 (MaxDeliver 1)", calls.Load())
	}
	dls := deadLetters(t, ctx, js)
	if len(dls) != 1 || !strings.Contains(dls[0].Header.Get(pipeline.HeaderReason), "delivered 1 times") {
		t.Fatalf("dead letters %v, want one for exhausted deliveries", dls)
	}
}

func TestStageConcurrencyLimit(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	const n, limit = 20, 3
	publishN(t, ctx, js, 0, n)
	var inflight, peak, done atomic.Int64
	release := make(chan struct{})
	runStage(t, js, pipeline.Stage{Name: "conc", Concurrency: limit, Handle: func(context.Context, events.Envelope, events.Event) error {
		cur := inflight.Add(1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		<-release
		inflight.Add(-1)
		done.Add(1)
		return nil
	}}, nil)
	checkFor(t, 10*time.Second, func() error {
		if inflight.Load() != limit {
			return fmt.Errorf("%d in flight, want %d", inflight.Load(), limit)
		}
		return nil
	})
	close(release)
	waitDrained(t, ctx, js, "conc")
	if peak.Load() != limit || done.Load() != n {
		t.Fatalf("peak %d in flight (want %d), %d done (want %d)", peak.Load(), limit, done.Load(), n)
	}
}

// TestStageDrainAcksInFlight: on cancel the runner stops fetching and lets
// handlers in flight finish; their messages are acknowledged.
func TestStageDrainAcksInFlight(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	publishN(t, ctx, js, 0, 5)
	var inflight, done atomic.Int64
	release := make(chan struct{})
	r := &pipeline.Runner{JS: js, Host: "test", Logger: testLogger(t)}
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ret := make(chan error, 1)
	go func() {
		ret <- r.Run(rctx, pipeline.Stage{Name: "drain", Concurrency: 2, DrainTimeout: 30 * time.Second,
			Handle: func(context.Context, events.Envelope, events.Event) error {
				inflight.Add(1)
				<-release
				done.Add(1)
				return nil
			}})
	}()
	checkFor(t, 10*time.Second, func() error {
		if inflight.Load() != 2 {
			return fmt.Errorf("%d in flight", inflight.Load())
		}
		return nil
	})
	cancel()
	select {
	case err := <-ret:
		t.Fatalf("Run returned (%v) before its handlers finished", err)
	default:
	}
	close(release)
	if err := <-ret; err != nil {
		t.Fatal(err)
	}
	pending, ackPending, err := consumerState(ctx, js, "drain")
	if err != nil {
		t.Fatal(err)
	}
	if done.Load() != 2 || ackPending != 0 || pending != 3 {
		t.Fatalf("done %d (want 2), ack pending %d (want 0), pending %d (want 3)", done.Load(), ackPending, pending)
	}
}

// TestStageLongHandlerNotRedelivered: a handler running several ack waits is
// kept alive with progress acks and runs once.
func TestStageLongHandlerNotRedelivered(t *testing.T) {
	s := pipelinetest.RunServer(t)
	ctx := testCtx(t)
	js := s.JetStream()
	publishN(t, ctx, js, 0, 1)
	var calls atomic.Int64
	// Concurrency 2, so that a redelivery could run beside the first call.
	runStage(t, js, pipeline.Stage{Name: "long", Concurrency: 2, AckWait: 300 * time.Millisecond, Handle: func(context.Context, events.Envelope, events.Event) error {
		calls.Add(1)
		<-time.After(1200 * time.Millisecond) // the work: four ack waits long
		return nil
	}}, nil)
	waitDrained(t, ctx, js, "long")
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times, want 1", calls.Load())
	}
}

func TestStageConfigErrors(t *testing.T) {
	s := pipelinetest.RunServer(t)
	r := &pipeline.Runner{JS: s.JetStream(), Host: "test", Logger: testLogger(t)}
	h := func(context.Context, events.Envelope, events.Event) error { return nil }
	for _, st := range []pipeline.Stage{
		{Name: "", Handle: h},
		{Name: "a.b", Handle: h},
		{Name: "x"},
		{Name: "x", Handle: h, Concurrency: -1},
		{Name: "x", Handle: h, Filter: []string{"other.>"}},
	} {
		var cve *pipeline.ConfigError
		if err := r.Run(testCtx(t), st); !errors.As(err, &cve) {
			t.Errorf("stage %+v: %v, want a ConfigError", st, err)
		}
	}
}
