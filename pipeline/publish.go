package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
)

// Publish bounds.
const (
	publishAttemptTimeout = 5 * time.Second
	publishBackoffMin     = 50 * time.Millisecond
	publishBackoffMax     = 2 * time.Second
)

// Publish appends env to the event stream on its subject for host
// (events.SubjectOf), with Nats-Msg-Id = env.ID, and returns its stream
// sequence.
//
// Transient failures (no responders during a leader change, timeouts, a
// reconnecting connection) are retried with backoff and the SAME Msg-Id
// until ctx ends, so a retry can never record the event twice. Republishing
// an id already in the stream's dedup window is not an error: it returns
// the sequence of the original message. A full data directory is not
// transient: through the daemon's JetStream context (Server.JetStream) the
// publish fails at once with a *SpaceError (errors.Is ErrNoSpace).
func Publish(ctx context.Context, js jetstream.JetStream, host string, env events.Envelope) (uint64, error) {
	subject, err := events.SubjectOf(host, env)
	if err != nil {
		return 0, fmt.Errorf("publish %s: %w", env.Type, err)
	}
	body, err := events.Encode(env)
	if err != nil {
		return 0, fmt.Errorf("publish %s: %w", env.Type, err)
	}
	return publishRetry(ctx, js, &nats.Msg{
		Subject: subject,
		Data:    body,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{env.ID}},
	}, StreamEvents)
}

// publishRetry publishes msg, expecting it in stream, retrying transient
// failures with the same message (and so the same Msg-Id).
func publishRetry(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, stream string) (uint64, error) {
	wait := publishBackoffMin
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, publishAttemptTimeout)
		ack, err := js.PublishMsg(actx, msg, jetstream.WithExpectStream(stream))
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		if !transientPublishError(err) {
			return 0, fmt.Errorf("publish to %s: %w", msg.Subject, err)
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("publish to %s: gave up after %d attempts: %w", msg.Subject, attempt, err)
		}
		d := wait/2 + rand.N(wait/2+1) // jitter
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("publish to %s: gave up after %d attempts: %w", msg.Subject, attempt, err)
		case <-t.C:
		}
		wait = min(2*wait, publishBackoffMax)
	}
}

// transientPublishError reports whether a publish may succeed if retried.
// API errors (wrong stream, message too large, …) are permanent.
func transientPublishError(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream not (yet) available, e.g. during a leader change.
		return apiErr.Code == 503
	}
	switch {
	case errors.Is(err, ErrNoSpace):
		// Refused while the data directory is out of space: retrying
		// cannot help before there is room (Space.Wait).
		return false
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrAuthorization),
		errors.Is(err, jetstream.ErrInvalidOption):
		return false
	}
	return true
}
