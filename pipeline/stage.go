package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
)

// Stage defaults.
const (
	DefaultMaxDeliver   = 5
	DefaultAckWait      = 30 * time.Second
	DefaultDrainTimeout = 30 * time.Second
	fetchWait           = 5 * time.Second
)

// DefaultBackoff is the delay before the 2nd, 3rd, … delivery of a message
// whose handler failed; the last value repeats.
var defaultBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute}

// holdBackoff is the least time between two runs of a handler held for
// lack of space (see Runner.Spaces), after its n-th such failure; the last
// value repeats. It keeps a handler whose own output does not fit (an
// object larger than the free room) from retrying as fast as the room
// comes and goes.
var holdBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute, 5 * time.Minute}

// Dead-letter headers: why a message was set aside, by which stage, and
// where it came from. The body is the original message, byte for byte.
const (
	HeaderReason     = "Strata-Reason"
	HeaderStage      = "Strata-Stage"
	HeaderSubject    = "Strata-Subject"
	HeaderStreamSeq  = "Strata-Stream-Seq"
	HeaderDeliveries = "Strata-Deliveries"
)

// Stage describes one worker: the events it consumes and what it does with
// each.
type Stage struct {
	// Name names the durable consumer (and the dead-letter subject); a
	// subject token. Two runners with the same Name share the work. In a
	// cluster the durable is Durable(Name, host, true, Shared).
	Name string
	// Shared says any host can do the stage's work (one durable for the
	// cluster); false, the safe default, keeps it on the host (one
	// durable per host). See Durable.
	Shared bool
	// Filter lists the subjects the stage consumes (default
	// events.AllEvents), e.g. events.Subject(events.AnyHost,
	// events.KindFileSelected).
	Filter []string
	// Concurrency is the most handlers in flight at once (default 1).
	Concurrency int
	// MaxDeliver is how many times a message is handed to Handle before it
	// goes to the dead-letter subject (default 5).
	MaxDeliver int
	// Backoff is the delay before redelivering a message whose handler
	// returned a retryable error: Backoff[n-1] after the n-th failure, the
	// last value repeating (default 1s, 5s, 30s, 2m).
	Backoff []time.Duration
	// AckWait is how long the server waits for an ack before it redelivers
	// (default 30s). The runner extends it every AckWait/3 while a handler
	// runs, so only a dead process lets it expire.
	AckWait time.Duration
	// DrainTimeout bounds how long Run waits for handlers in flight after
	// its context ends; then their contexts are cancelled and their
	// messages left unacknowledged (default 30s).
	DrainTimeout time.Duration
	// Handle processes one event. It must be idempotent (a message can be
	// delivered again after a crash) and return only once its side effects
	// are durable: the message is acknowledged when it returns nil. Wrap
	// an error with Permanent when retrying cannot help.
	// Handle is called with the decoded event; pipeline.Handle adapts a
	// handler of one event type.
	Handle Handler
	// Spaces are places this stage writes to besides the runner's (e.g. a
	// tier's directory): see Runner.Spaces.
	Spaces []*Space
}

func (st *Stage) ensureDefaults() {
	if len(st.Filter) == 0 {
		st.Filter = []string{events.AllEvents}
	}
	st.Concurrency = cmp.Or(st.Concurrency, 1)
	st.MaxDeliver = cmp.Or(st.MaxDeliver, DefaultMaxDeliver)
	if len(st.Backoff) == 0 {
		st.Backoff = defaultBackoff
	}
	st.AckWait = cmp.Or(st.AckWait, DefaultAckWait)
	st.DrainTimeout = cmp.Or(st.DrainTimeout, DefaultDrainTimeout)
}

func (st *Stage) validate() error {
	switch {
	case !events.ValidToken(st.Name):
		return &ConfigError{"stage.name", st.Name, errors.New("want letters, digits, '-' or '_'")}
	case st.Handle == nil:
		return &ConfigError{"stage.handle", nil, errors.New("required")}
	case st.Concurrency < 1:
		return &ConfigError{"stage.concurrency", st.Concurrency, errors.New("want >= 1")}
	case st.MaxDeliver < 1:
		return &ConfigError{"stage.maxdeliver", st.MaxDeliver, errors.New("want >= 1")}
	case st.AckWait < 100*time.Millisecond:
		return &ConfigError{"stage.ackwait", st.AckWait, errors.New("want >= 100ms")}
	case st.DrainTimeout < 0:
		return &ConfigError{"stage.draintimeout", st.DrainTimeout, errors.New("want >= 0")}
	}
	for _, f := range st.Filter {
		if f != events.AllEvents && !strings.HasPrefix(f, strings.TrimSuffix(events.AllEvents, ">")) {
			return &ConfigError{"stage.filter", f, fmt.Errorf("want a subject under %s", events.AllEvents)}
		}
	}
	for _, b := range st.Backoff {
		if b < 0 {
			return &ConfigError{"stage.backoff", b, errors.New("negative delay")}
		}
	}
	return nil
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: the runner sends the message
// to the dead-letter subject at once. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type deliveriesKey struct{}

// Deliveries returns how many times the message being handled has been
// delivered, this time included (1 the first time), from the context the
// runner gives Handle; 0 outside a handler.
func Deliveries(ctx context.Context) int {
	n, _ := ctx.Value(deliveriesKey{}).(int)
	return n
}

// IsPermanent reports whether err, or an error it wraps, was marked by
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Runner runs stages against the event stream of one host.
type Runner struct {
	// JS is the JetStream context (Server.JetStream()).
	JS jetstream.JetStream
	// Host is the host token used in dead-letter subjects.
	Host string
	// Logger receives the runner's log; required.
	Logger *slog.Logger
	// Validate, if set, checks each raw message (a whole CloudEvent, e.g.
	// schemas.Validator.Validate) before it is decoded; a message it
	// rejects is dead-lettered.
	Validate func(raw []byte) error
	// Owner is the daemon's owner token (Server.OwnerToken): the stages'
	// durables carry it in their metadata, and a durable with a stage's
	// name that does not is replaced, never adopted (see ownConsumer).
	// Empty: no check (tests).
	Owner string
	// Clustered gives host-local stages a durable per host (Durable).
	Clustered bool
	// Spaces are the places every stage writes to (the data directory:
	// each handler's events go to the log, and the compressor stages
	// there). While one is out of space a stage fetches nothing new; a
	// handler that fails because one is out of space (a *SpaceError, or
	// ENOSPC/EDQUOT on a path inside it) is not retried as a failure: its
	// message is held, without using up a delivery, and handled again
	// once there is room (at most as often as holdBackoff allows), or
	// handed back at once (Nak) when the stage stops.
	Spaces []*Space
}

// ConsumerConfig returns the durable consumer a stage uses. The consumer
// allows one delivery more than st.MaxDeliver: the extra one is how the
// runner learns that a message's deliveries are used up (the last handler
// may have died with its process) and dead-letters it.
func ConsumerConfig(st Stage) jetstream.ConsumerConfig {
	st.ensureDefaults()
	cfg := jetstream.ConsumerConfig{
		Name:          st.Name,
		Durable:       st.Name,
		Description:   "strata stage " + st.Name,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       st.AckWait,
		MaxDeliver:    st.MaxDeliver + 1,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
	if len(st.Filter) == 1 {
		cfg.FilterSubject = st.Filter[0]
	} else {
		cfg.FilterSubjects = st.Filter
	}
	return cfg
}

// MetaOwner is the consumer metadata key holding the owner token.
const MetaOwner = "strata.owner"

// ownConsumer creates or updates the stage's durable. A consumer of that
// name that the daemon did not make — no owner token, or another one —
// is deleted first: a reader may create consumers, and one made under a
// future stage's name (say with ack policy none) must neither be adopted
// nor keep the daemon from starting. A durable of an earlier Strata
// (before owner tokens) is adopted only if it is configured as Strata
// configures its stages.
func (r *Runner) ownConsumer(ctx context.Context, st Stage) (jetstream.Consumer, error) {
	cfg := ConsumerConfig(st)
	if r.Owner != "" {
		cfg.Metadata = map[string]string{MetaOwner: r.Owner}
		if c, err := r.JS.Consumer(ctx, StreamEvents, st.Name); err == nil {
			info := c.CachedInfo()
			if !ownedBy(info.Config, r.Owner) && !earlyStrata(info.Config, cfg) {
				r.Logger.Warn("deleting a consumer named like a stage that the daemon did not create",
					"stage", st.Name, "ack_policy", info.Config.AckPolicy.String(), "deliver_policy", info.Config.DeliverPolicy.String())
				if err := r.JS.DeleteConsumer(ctx, StreamEvents, st.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
					return nil, fmt.Errorf("delete foreign consumer %s: %w", st.Name, err)
				}
			}
		}
	}
	cons, err := r.JS.CreateOrUpdateConsumer(ctx, StreamEvents, cfg)
	if errors.Is(err, jetstream.ErrMaximumConsumersLimit) {
		return nil, fmt.Errorf("%w: the stream's consumers are at their quota (nats.reader_consumers); see strata consumers ls, remove strays with strata consumers rm", err)
	}
	return cons, err
}

// ownedBy reports whether a consumer carries owner's token.
func ownedBy(c jetstream.ConsumerConfig, owner string) bool {
	return owner != "" && c.Metadata[MetaOwner] == owner
}

// earlyStrata reports whether c is a stage durable as a Strata without
// owner tokens made it: same description and delivery as want, acks
// explicit, no owner token (the server adds metadata of its own).
func earlyStrata(c, want jetstream.ConsumerConfig) bool {
	return c.Metadata[MetaOwner] == "" && c.Durable == want.Durable && c.Description == want.Description &&
		c.AckPolicy == jetstream.AckExplicitPolicy && c.DeliverPolicy == jetstream.DeliverAllPolicy && c.OptStartSeq == 0
}

// Run creates or updates the stage's durable consumer and processes its
// messages until ctx ends; then it stops fetching, waits up to
// st.DrainTimeout for handlers in flight (acknowledging those that
// succeed) and returns nil. It returns an error only if the stage cannot
// start or the connection is closed.
func (r *Runner) Run(ctx context.Context, st Stage) error {
	st.ensureDefaults()
	if err := st.validate(); err != nil {
		return err
	}
	if r.JS == nil || r.Logger == nil || !events.ValidToken(r.Host) {
		return &ConfigError{"runner", r.Host, errors.New("JS, Logger and a valid Host are required")}
	}
	st.Name = Durable(st.Name, r.Host, r.Clustered, st.Shared)
	cons, err := r.ownConsumer(ctx, st)
	if err != nil {
		return fmt.Errorf("stage %s: create consumer: %w", st.Name, err)
	}
	sr := &stageRun{
		r:      r,
		st:     st,
		logger: r.Logger.With("stage", st.Name),
		dlq:    events.DeadLetterSubject(r.Host, st.Name),
		spaces: append(append([]*Space(nil), r.Spaces...), st.Spaces...),
	}
	// Handlers outlive ctx (drain) until hcancel, called after the drain
	// timeout.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()

	slots := make(chan struct{}, st.Concurrency)
	var wg sync.WaitGroup
	runErr := sr.fetchLoop(ctx, hctx, cons, slots, &wg)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(st.DrainTimeout):
		sr.logger.Warn("drain timeout: cancelling handlers in flight; their messages will be redelivered",
			"timeout", st.DrainTimeout, "in_flight", len(slots))
		hcancel()
		<-done
	}
	return runErr
}

type stageRun struct {
	r      *Runner
	st     Stage
	logger *slog.Logger
	dlq    string
	spaces []*Space // Runner.Spaces and Stage.Spaces
}

// waitRoom returns once none of the stage's spaces is out of space, or
// with ctx's error.
func (sr *stageRun) waitRoom(ctx context.Context) error {
	for {
		var full *Space
		for _, sp := range sr.spaces {
			if sp.Full() {
				full = sp
				break
			}
		}
		if full == nil {
			return nil
		}
		sr.logger.Debug("paused: out of space", "place", full.Place(), "path", full.Path())
		if err := full.Wait(ctx); err != nil {
			return err
		}
	}
}

// fetchLoop pulls at most as many messages as there are free slots, so
// that no message waits in a client buffer while its ack timer runs.
func (sr *stageRun) fetchLoop(ctx, hctx context.Context, cons jetstream.Consumer, slots chan struct{}, wg *sync.WaitGroup) error {
	errWait := 100 * time.Millisecond
	for {
		// Nothing new while a place the stage writes to is full.
		if sr.waitRoom(ctx) != nil {
			return nil
		}
		// Take one slot (blocking), then every other free one.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		n := 1
	more:
		for n < cap(slots) {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		fctx, cancel := context.WithTimeout(ctx, fetchWait)
		batch, err := cons.Fetch(n, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				if ctx.Err() != nil {
					// Fetched as we stopped: hand it back at once.
					_ = msg.Nak()
					continue
				}
				n--
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-slots }()
					sr.process(ctx, hctx, msg)
				}()
			}
			err = batch.Error()
		}
		cancel()
		for ; n > 0; n-- {
			<-slots
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil, errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
			errWait = 100 * time.Millisecond
		case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, jetstream.ErrConsumerDeleted):
			return fmt.Errorf("stage %s: fetch: %w", sr.st.Name, err)
		default:
			sr.logger.Warn("fetch", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(errWait):
			}
			errWait = min(2*errWait, 5*time.Second)
		}
	}
}

// process handles one message and settles it: ack, nak with delay, or
// dead-letter + term. It never panics and never blocks past the handler,
// except to hold a message whose handler failed for lack of space until
// there is room (or ctx, the stage's run, ends).
func (sr *stageRun) process(ctx, hctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		sr.logger.Error("message without JetStream metadata; terminating it", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	log := sr.logger.With("seq", meta.Sequence.Stream, "delivery", meta.NumDelivered)
	deliveries := int(meta.NumDelivered)

	if deliveries > sr.st.MaxDeliver {
		sr.deadLetter(hctx, msg, meta, log, fmt.Sprintf("delivered %d times without success (the last attempt did not finish)", sr.st.MaxDeliver))
		return
	}
	if sr.r.Validate != nil {
		if err := sr.r.Validate(msg.Data()); err != nil {
			sr.deadLetter(hctx, msg, meta, log, "schema: "+err.Error())
			return
		}
	}
	env, ev, err := events.Decode(msg.Data())
	if err != nil {
		sr.deadLetter(hctx, msg, meta, log, err.Error())
		return
	}
	env.Seq, env.Host = meta.Sequence.Stream, events.SubjectHost(msg.Subject())

	hc := context.WithValue(hctx, deliveriesKey{}, deliveries)
	err = sr.handle(hc, msg, env, ev)
	for attempt := 1; err != nil && hctx.Err() == nil; attempt++ {
		sp := blame(sr.spaces, err)
		if sp == nil {
			break
		}
		// Not the message's fault: keep it, and its deliveries, until
		// there is room. The Space logs the condition once.
		sp.Report(err)
		if !sr.holdForSpace(ctx, hctx, msg, sp, attempt, log, err) {
			log.Debug("stopping while out of space; message handed back", "place", sp.Place())
			_ = msg.Nak()
			return
		}
		err = sr.handle(hc, msg, env, ev)
	}
	switch {
	case err == nil:
		actx, cancel := context.WithTimeout(context.WithoutCancel(hctx), 5*time.Second)
		if aerr := msg.DoubleAck(actx); aerr != nil {
			log.Warn("ack lost; the message will be redelivered", "err", aerr)
		}
		cancel()
	case hctx.Err() != nil:
		// Drain timeout: the handler was cancelled. Not acked; hand it
		// back for another runner.
		log.Warn("handler cancelled at shutdown; message not acknowledged", "err", err)
		_ = msg.Nak()
	case IsPermanent(err):
		sr.deadLetter(hctx, msg, meta, log, err.Error())
	case deliveries >= sr.st.MaxDeliver:
		sr.deadLetter(hctx, msg, meta, log, fmt.Sprintf("gave up after %d deliveries: %v", deliveries, err))
	default:
		d := sr.st.Backoff[min(deliveries, len(sr.st.Backoff))-1]
		log.Info("handler failed; will retry", "err", err, "retry_in", d)
		if nerr := msg.NakWithDelay(d); nerr != nil {
			log.Warn("nak lost; the message will be redelivered after the ack wait", "err", nerr)
		}
	}
}

// holdForSpace keeps msg (sending progress acks, so it is neither
// redelivered nor counted) until sp has room again and holdBackoff for
// this attempt has passed since the failure. It returns false if ctx (the
// stage stops) or hctx ends first.
func (sr *stageRun) holdForSpace(ctx, hctx context.Context, msg jetstream.Msg, sp *Space, attempt int, log *slog.Logger, cause error) bool {
	log.Debug("out of space: message held until there is room", "place", sp.Place(), "attempt", attempt, "err", cause)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(hctx, cancel)()
	roomc := make(chan error, 1)
	go func() { roomc <- sp.Wait(wctx) }()
	backoff := time.NewTimer(holdBackoff[min(attempt, len(holdBackoff))-1])
	defer backoff.Stop()
	progress := time.NewTicker(sr.st.AckWait / 3)
	defer progress.Stop()
	room, waited := false, false
	for !room || !waited {
		select {
		case <-wctx.Done():
			return false
		case err := <-roomc:
			if err != nil {
				return false
			}
			room = true
		case <-backoff.C:
			waited = true
		case <-progress.C:
			_ = msg.InProgress()
		}
	}
	return true
}

// handle runs the stage's handler, keeping the message's ack timer alive
// and turning a panic into a permanent error.
func (sr *stageRun) handle(ctx context.Context, msg jetstream.Msg, env events.Envelope, ev events.Event) (err error) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(sr.st.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	defer func() {
		if p := recover(); p != nil {
			sr.logger.Error("handler panic", "seq", env.Seq, "panic", p, "stack", string(debug.Stack()))
			err = Permanent(fmt.Errorf("handler panic: %v", p))
		}
	}()
	return sr.st.Handle(ctx, env, ev)
}

// deadLetter copies msg to the stage's dead-letter subject with the reason
// and terminates it. If the copy cannot be stored the message is nak'd
// instead: it is never dropped. The Msg-Id is derived from the stream
// sequence, so a second attempt does not store a second copy.
func (sr *stageRun) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, log *slog.Logger, reason string) {
	reason = headerValue(reason)
	seq := strconv.FormatUint(meta.Sequence.Stream, 10)
	dl := &nats.Msg{
		Subject: sr.dlq,
		Data:    msg.Data(),
		Header: nats.Header{
			jetstream.MsgIDHeader: []string{"dlq." + sr.st.Name + "." + seq},
			HeaderReason:          []string{reason},
			HeaderStage:           []string{sr.st.Name},
			HeaderSubject:         []string{msg.Subject()},
			HeaderStreamSeq:       []string{seq},
			HeaderDeliveries:      []string{strconv.FormatUint(meta.NumDelivered, 10)},
		},
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := publishRetry(pctx, sr.r.JS, dl, StreamDeadLetter); err != nil {
		log.Error("dead-letter publish failed; message will be redelivered", "reason", reason, "err", err)
		_ = msg.NakWithDelay(sr.st.Backoff[len(sr.st.Backoff)-1])
		return
	}
	log.Warn("message dead-lettered", "subject", msg.Subject(), "reason", reason, "dead_letter", sr.dlq)
	if err := msg.TermWithReason(truncate(reason, 200)); err != nil {
		log.Warn("term lost; the message will be redelivered and dead-lettered again (deduplicated)", "err", err)
	}
}

// headerValue makes s safe as a NATS header value: one line, bounded.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	return truncate(s, 1024)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
