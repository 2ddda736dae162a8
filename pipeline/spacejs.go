package pipeline

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// spaceJS is the daemon's JetStream context: publishing fails at once with
// the data directory's *SpaceError while it is out of space. A publish to
// a full store is not acknowledged (nats-server drops it after a failed
// write) and would otherwise be retried until its caller's context ends;
// refused at once, it tells the caller why, and the stage runner holds its
// message until there is room (see Runner.Spaces).
type spaceJS struct {
	jetstream.JetStream
	space *Space
}

func (j *spaceJS) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if err := j.space.Err(); err != nil {
		return nil, err
	}
	return j.JetStream.Publish(ctx, subj, data, opts...)
}

func (j *spaceJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if err := j.space.Err(); err != nil {
		return nil, err
	}
	return j.JetStream.PublishMsg(ctx, msg, opts...)
}

func (j *spaceJS) PublishAsync(subj string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if err := j.space.Err(); err != nil {
		return nil, err
	}
	return j.JetStream.PublishAsync(subj, data, opts...)
}

func (j *spaceJS) PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if err := j.space.Err(); err != nil {
		return nil, err
	}
	return j.JetStream.PublishMsgAsync(msg, opts...)
}
