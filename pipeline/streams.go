package pipeline

import (
	"context"

	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
)

// Stream names.
const (
	// StreamEvents is the event log: every subject under events.AllEvents,
	// file storage, kept forever, deduplicated by Nats-Msg-Id.
	StreamEvents = "STRATA_EVENTS"
	// StreamDeadLetter keeps messages stages could not process, under
	// events.AllDeadLetters.
	StreamDeadLetter = "STRATA_DEADLETTER"
)

// streamConfigs returns the configuration of both streams; maxConsumers
// bounds the consumers of each (the daemon's, its own readers' and those
// of outside subscribers).
func streamConfigs(dedup time.Duration, maxConsumers, replicas int) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:         StreamEvents,
			Description:  "Strata event log (kept forever; the catalog is a projection of it)",
			Subjects:     []string{events.AllEvents},
			Retention:    jetstream.LimitsPolicy,
			Storage:      jetstream.FileStorage,
			Discard:      jetstream.DiscardOld,
			MaxAge:       0,
			MaxMsgs:      -1,
			MaxBytes:     -1,
			Duplicates:   dedup,
			Replicas:     replicas,
			MaxConsumers: maxConsumers,
		},
		{
			Name:         StreamDeadLetter,
			Description:  "Strata dead letters: messages a stage could not process, with the reason in headers",
			Subjects:     []string{events.AllDeadLetters},
			Retention:    jetstream.LimitsPolicy,
			Storage:      jetstream.FileStorage,
			Discard:      jetstream.DiscardOld,
			MaxMsgs:      -1,
			MaxBytes:     -1,
			Duplicates:   dedup,
			Replicas:     replicas,
			MaxConsumers: maxConsumers,
		},
	}
}

// ensureStreams creates or updates both streams; it is idempotent. The
// stage consumers take the streams' replica count (their Replicas is
// left 0).
func ensureStreams(ctx context.Context, js jetstream.JetStream, dedup time.Duration, maxConsumers, replicas int) error {
	for _, cfg := range streamConfigs(dedup, maxConsumers, replicas) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// Status is a snapshot of the streams for `strata status`.
type Status struct {
	// LastSeq is the last sequence of the event stream (0 when empty).
	LastSeq uint64 `json:"last_seq"`
	// Events is the number of messages in the event stream.
	Events uint64 `json:"events"`
	// Bytes is the event stream's size.
	Bytes uint64 `json:"bytes"`
	// DeadLetters is the number of messages in the dead-letter stream.
	DeadLetters uint64 `json:"dead_letters"`
	// Consumers lists the durable consumers (stages), sorted by name.
	Consumers []ConsumerLag `json:"consumers"`
}

// ConsumerLag is the backlog of one durable consumer.
type ConsumerLag struct {
	Name string `json:"name"`
	// Pending is the number of messages not yet delivered.
	Pending uint64 `json:"pending"`
	// AckPending is the number delivered and not yet acknowledged
	// (in progress or waiting for a redelivery).
	AckPending int `json:"ack_pending"`
	// Redelivered is the number of messages delivered more than once
	// and not yet acknowledged.
	Redelivered int `json:"redelivered"`
	// Lag is Pending + AckPending.
	Lag uint64 `json:"lag"`
}

// StreamStatus reads the state of both streams and the durable consumers of
// the event stream.
func StreamStatus(ctx context.Context, js jetstream.JetStream) (Status, error) {
	var st Status
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		return Status{}, fmt.Errorf("stream %s: %w", StreamEvents, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("stream %s info: %w", StreamEvents, err)
	}
	st.LastSeq = info.State.LastSeq
	st.Events = info.State.Msgs
	st.Bytes = info.State.Bytes
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Config.Durable == "" {
			continue // ordered consumers of readers
		}
		st.Consumers = append(st.Consumers, ConsumerLag{
			Name:        ci.Name,
			Pending:     ci.NumPending,
			AckPending:  ci.NumAckPending,
			Redelivered: ci.NumRedelivered,
			Lag:         ci.NumPending + uint64(ci.NumAckPending),
		})
	}
	if err := lister.Err(); err != nil {
		return Status{}, fmt.Errorf("list consumers: %w", err)
	}
	sort.Slice(st.Consumers, func(i, j int) bool { return st.Consumers[i].Name < st.Consumers[j].Name })
	dl, err := js.Stream(ctx, StreamDeadLetter)
	if err != nil {
		return Status{}, fmt.Errorf("stream %s: %w", StreamDeadLetter, err)
	}
	dinfo, err := dl.Info(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("stream %s info: %w", StreamDeadLetter, err)
	}
	st.DeadLetters = dinfo.State.Msgs
	return st, nil
}

// LastSeq returns the last sequence of the event stream (0 when empty).
func LastSeq(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", StreamEvents, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s info: %w", StreamEvents, err)
	}
	return info.State.LastSeq, nil
}
