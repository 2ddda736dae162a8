package pipeline_test

import (
	"context"
	"errors"
	"testing"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

func TestHandle(t *testing.T) {
	var got string
	h := pipeline.Handle("s", func(_ context.Context, _ events.Envelope, e *events.FileSelected) error {
		got = e.Path
		return nil
	})
	if err := h(context.Background(), events.Envelope{}, &events.FileSelected{Path: "/p"}); err != nil || got != "/p" {
		t.Fatalf("handled %q, %v", got, err)
	}
	err := h(context.Background(), events.Envelope{Type: "strata.file.pinned.v1"}, &events.FilePinned{})
	if !pipeline.IsPermanent(err) || err.Error() != "s: unexpected event strata.file.pinned.v1" {
		t.Fatalf("other event: %v; want a permanent error naming stage and type", err)
	}
	either := pipeline.HandleEither[*events.ObjectStored, *events.ObjectPacked]("u", func(_ context.Context, _ events.Envelope, e events.Event) error {
		got = e.Entity()
		return errors.New("retry")
	})
	for _, ev := range []events.Event{&events.ObjectStored{ObjectID: "a"}, &events.ObjectPacked{ObjectID: "a"}} {
		got = ""
		if err := either(context.Background(), events.Envelope{}, ev); err == nil || pipeline.IsPermanent(err) || got != "a" {
			t.Fatalf("%T: handled %q, %v", ev, got, err)
		}
	}
	if err := either(context.Background(), events.Envelope{}, &events.FileSelected{}); !pipeline.IsPermanent(err) {
		t.Fatalf("third type: %v, want permanent", err)
	}
}
