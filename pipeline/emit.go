package pipeline

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
)

// Emitter publishes the events of one stage on one host. The zero value is
// not usable; build one with NewEmitter.
type Emitter struct {
	js     jetstream.JetStream
	host   string
	source string
	now    func() time.Time
}

// NewEmitter returns an Emitter for stage on host.
func NewEmitter(js jetstream.JetStream, host, stage string) *Emitter {
	return &Emitter{js: js, host: host, source: events.Source(host, stage), now: time.Now}
}

// Emit publishes ev with the deterministic id events.NewID(kind, idParts…):
// work that is retried with the same parts publishes the same id, which the
// stream drops as a duplicate. It returns the event's stream sequence.
func (e *Emitter) Emit(ctx context.Context, ev events.Event, idParts ...string) (uint64, error) {
	env, err := events.New(events.NewID(ev.Kind(), idParts...), e.source, e.now(), ev)
	if err != nil {
		return 0, err
	}
	return Publish(ctx, e.js, e.host, env)
}

// Host is the host token the emitter publishes under.
func (e *Emitter) Host() string { return e.host }
