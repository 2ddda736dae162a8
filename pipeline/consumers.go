package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"

	"github.com/nats-io/nats.go/jetstream"
)

// Consumer is one consumer of a stream, as `strata consumers` lists it.
type Consumer struct {
	Stream  string `json:"stream"`
	Name    string `json:"name"`
	Durable bool   `json:"durable"`
	// Owner: "daemon" (a stage's, carrying the owner token), "allowed" (a
	// durable named in Config.ReaderDurables), "ephemeral" (a reader's,
	// removed by the server once idle) or "stray" (a durable nobody may
	// keep: SweepConsumers removes it).
	Owner string `json:"owner"`
	Lag   uint64 `json:"lag"`
}

// Consumers lists the consumers of both streams. owner is the daemon's
// owner token; allowed the durables outside subscribers may keep.
func Consumers(ctx context.Context, js jetstream.JetStream, owner string, allowed []string) ([]Consumer, error) {
	var out []Consumer
	for _, stream := range []string{StreamEvents, StreamDeadLetter} {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", stream, err)
		}
		l := s.ListConsumers(ctx)
		for ci := range l.Info() {
			c := Consumer{Stream: stream, Name: ci.Name, Durable: ci.Config.Durable != "",
				Lag: ci.NumPending + uint64(ci.NumAckPending)}
			switch {
			case ownedBy(ci.Config, owner):
				c.Owner = "daemon"
			case !c.Durable:
				c.Owner = "ephemeral"
			case slices.Contains(allowed, ci.Name):
				c.Owner = "allowed"
			default:
				c.Owner = "stray"
			}
			out = append(out, c)
		}
		if err := l.Err(); err != nil {
			return nil, fmt.Errorf("list consumers of %s: %w", stream, err)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Stream < out[j].Stream || out[i].Stream == out[j].Stream && out[i].Name < out[j].Name
	})
	return out, nil
}

// SweepConsumers removes the stray consumers of both streams (durables the
// daemon did not make and that allowed does not name) and returns their
// names. Durables of an earlier Strata (no owner token) that look like a
// stage's are kept: the stage adopts them when it starts.
func SweepConsumers(ctx context.Context, js jetstream.JetStream, owner string, allowed []string, logger *slog.Logger) ([]string, error) {
	if owner == "" {
		return nil, errors.New("sweep consumers: no owner token")
	}
	cs, err := Consumers(ctx, js, owner, allowed)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, c := range cs {
		if c.Owner != "stray" {
			continue
		}
		if ci, err := js.Consumer(ctx, c.Stream, c.Name); err == nil && earlyStrata(ci.CachedInfo().Config, ConsumerConfig(Stage{Name: c.Name})) {
			continue
		}
		if err := DeleteConsumer(ctx, js, c.Stream, c.Name); err != nil {
			return removed, err
		}
		logger.Warn("removed a durable consumer nobody may keep (not the daemon's, not in nats.reader_durables)", "stream", c.Stream, "consumer", c.Name)
		removed = append(removed, c.Stream+"/"+c.Name)
	}
	return removed, nil
}

// DeleteConsumer removes a consumer; a missing one is not an error.
func DeleteConsumer(ctx context.Context, js jetstream.JetStream, stream, name string) error {
	if err := js.DeleteConsumer(ctx, stream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s of %s: %w", name, stream, err)
	}
	return nil
}

// RemoveConsumerRequest is the control verb "consumers-rm".
type RemoveConsumerRequest struct {
	Stream string `json:"stream"` // default StreamEvents
	Name   string `json:"name"`
}

// ConsumerVerbs returns the control verbs "consumers" (list) and
// "consumers-rm" (remove one that is not the daemon's).
func ConsumerVerbs(js jetstream.JetStream, owner string, allowed []string) map[string]ControlHandler {
	return map[string]ControlHandler{
		"consumers": func(ctx context.Context, _ []byte) (any, error) {
			return Consumers(ctx, js, owner, allowed)
		},
		"consumers-rm": Verb("consumers-rm", func(ctx context.Context, req RemoveConsumerRequest) (any, error) {
			stream := cmp.Or(req.Stream, StreamEvents)
			cs, err := Consumers(ctx, js, owner, allowed)
			if err != nil {
				return nil, err
			}
			for _, c := range cs {
				if c.Stream != stream || c.Name != req.Name {
					continue
				}
				if c.Owner == "daemon" {
					return nil, fmt.Errorf("consumers rm: %s is a stage of this daemon; it is not removed", req.Name)
				}
				return c, DeleteConsumer(ctx, js, stream, req.Name)
			}
			return nil, fmt.Errorf("consumers rm: no consumer %q on stream %s", req.Name, stream)
		}),
	}
}
