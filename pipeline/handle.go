package pipeline

import (
	"context"
	"fmt"

	"github.com/strata-hsm/strata/events"
)

// Handler is the type of Stage.Handle.
type Handler func(ctx context.Context, env events.Envelope, ev events.Event) error

// Handle adapts fn, which handles events of one type T, to a Stage's
// Handle: any other event is a permanent error (dead-lettered, naming the
// stage), since a stage's subject filter should never let one through.
func Handle[T events.Event](stage string, fn func(ctx context.Context, env events.Envelope, ev T) error) Handler {
	return func(ctx context.Context, env events.Envelope, ev events.Event) error {
		e, ok := ev.(T)
		if !ok {
			return Permanent(fmt.Errorf("%s: unexpected event %s", stage, env.Type))
		}
		return fn(ctx, env, e)
	}
}

// HandleEither is Handle for a stage that consumes events of two types A
// and B alike (object.stored and object.packed both name one object).
func HandleEither[A, B events.Event](stage string, fn func(ctx context.Context, env events.Envelope, ev events.Event) error) Handler {
	return func(ctx context.Context, env events.Envelope, ev events.Event) error {
		_, isA := ev.(A)
		_, isB := ev.(B)
		if !isA && !isB {
			return Permanent(fmt.Errorf("%s: unexpected event %s", stage, env.Type))
		}
		return fn(ctx, env, ev)
	}
}
