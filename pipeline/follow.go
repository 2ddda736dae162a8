package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
)

// ErrStop, returned by a Follow callback, ends Follow without error.
var ErrStop = errors.New("pipeline: stop following")

// Follow tuning.
const (
	followBatch = 1024
)

// FollowOptions tune Follow; the zero value is fine.
type FollowOptions struct {
	// Filter restricts the subjects delivered (default: every event).
	Filter []string
	// Batch is the most envelopes per callback (default 1024).
	Batch int
	// Logger receives a line for each message that cannot be decoded
	// (default: discard).
	Logger *slog.Logger
}

// Follow reads the event stream from sequence fromSeq (0 or 1: from the
// start) in order, with an ordered consumer, and calls fn with batches of
// decoded envelopes (Seq set) until ctx ends, fn returns an error (ErrStop
// ends Follow with nil) or the connection closes. After the last message
// currently in the stream, fn receives what is pending at once, then waits
// for new events.
//
// A message that cannot be decoded is passed as an Envelope with only Seq
// set (Type empty), so the caller can record that the sequence was seen.
// fn must not keep batch after it returns: its backing array is reused.
func Follow(ctx context.Context, js jetstream.JetStream, fromSeq uint64, fn func(batch []events.Envelope) error) error {
	return FollowWith(ctx, js, fromSeq, FollowOptions{}, fn)
}

// FollowWith is Follow with options.
func FollowWith(ctx context.Context, js jetstream.JetStream, fromSeq uint64, opt FollowOptions, fn func(batch []events.Envelope) error) error {
	return follow(ctx, js, fromSeq, opt, fn, func(r Record) events.Envelope { return r.Envelope })
}

// Record is an event read from the stream: its envelope (Seq set) and its
// decoded payload. Event is nil for a message that could not be decoded
// (then only Seq is set).
type Record struct {
	events.Envelope
	Event events.Event
}

// FollowRecords is FollowWith delivering the decoded payloads too, so the
// caller need not decode each event's data a second time (decoding is most
// of the cost of a replay).
func FollowRecords(ctx context.Context, js jetstream.JetStream, fromSeq uint64, opt FollowOptions, fn func(batch []Record) error) error {
	return follow(ctx, js, fromSeq, opt, fn, func(r Record) Record { return r })
}

func follow[T any](ctx context.Context, js jetstream.JetStream, fromSeq uint64, opt FollowOptions, fn func(batch []T) error, conv func(Record) T) error {
	if opt.Batch <= 0 {
		opt.Batch = followBatch
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: opt.Filter,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if fromSeq > 1 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = fromSeq
	}
	cons, err := js.OrderedConsumer(ctx, StreamEvents, cfg)
	if err != nil {
		return fmt.Errorf("follow %s from %d: %w", StreamEvents, fromSeq, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * opt.Batch))
	if err != nil {
		return fmt.Errorf("follow %s from %d: %w", StreamEvents, fromSeq, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	batch := make([]T, 0, opt.Batch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := fn(batch)
		clear(batch) // drop references for the GC
		batch = batch[:0]
		return err
	}
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("follow %s: %w", StreamEvents, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("follow %s: %w", StreamEvents, err)
		}
		env, ev, err := events.Decode(msg.Data())
		if err != nil {
			opt.Logger.Warn("skipping undecodable event", "seq", meta.Sequence.Stream, "subject", msg.Subject(), "err", err)
			env, ev = events.Envelope{}, nil
		}
		env.Seq, env.Host = meta.Sequence.Stream, events.SubjectHost(msg.Subject())
		batch = append(batch, conv(Record{Envelope: env, Event: ev}))
		if len(batch) == cap(batch) || meta.NumPending == 0 {
			if err := flush(); err != nil {
				if errors.Is(err, ErrStop) {
					return nil
				}
				return err
			}
		}
	}
}
