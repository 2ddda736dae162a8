package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

type eventsCmd struct {
	Follow bool   `help:"Keep printing new events as they arrive."`
	Since  uint64 `default:"1" placeholder:"SEQ" help:"First stream sequence to print (default ${default})."`
	JSON   bool   `name:"json" help:"Print each event as its CloudEvents JSON (one per line)."`
}

func (*eventsCmd) Example() string { return "strata events --follow --since 1" }

func (c *eventsCmd) Run(ctx context.Context, e *env, g *globals) error {
	since := max(c.Since, 1)
	nc, err := pipeline.Dial(ctx, g.dataDir())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	last, err := pipeline.LastSeq(ctx, js)
	if err != nil {
		return err
	}
	if !c.Follow && last < since {
		return nil
	}
	return pipeline.Follow(ctx, js, since, func(batch []events.Envelope) error {
		for _, env := range batch {
			if env.Type == "" {
				fmt.Fprintf(e.stdout, "%d\t(undecodable event skipped)\n", env.Seq)
				continue
			}
			if c.JSON {
				b, err := events.Encode(env)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s\n", b)
			} else {
				fmt.Fprintf(e.stdout, "%d\t%s\t%s\t%s\t%s\n", env.Seq, env.Time.Local().Format("2006-01-02 15:04:05.000"),
					sourceOf(env), shortType(env.Type), summary(env))
			}
			if !c.Follow && env.Seq >= last {
				return pipeline.ErrStop
			}
		}
		return nil
	})
}

// summary is a short human description of an event.
func summary(env events.Envelope) string {
	ev, err := events.DecodeData(env.Type, env.Data)
	if err != nil {
		return env.Subject
	}
	switch x := ev.(type) {
	case *events.FileSelected:
		return fmt.Sprintf("%s (%s, %s)", x.Path, progress.Bytes(x.Stat.Size), x.Reason)
	case *events.ObjectPacked:
		return fmt.Sprintf("%s → %s (%s → %s)", x.Path, x.ObjectID[:16], progress.Bytes(x.Size), progress.Bytes(x.PackedSize))
	case *events.ObjectStored:
		return fmt.Sprintf("%s on %s (%s)", x.ObjectID[:16], x.Tier, x.Location)
	case *events.FileReleased:
		return fmt.Sprintf("%s (%d copies)", x.Path, x.Copies)
	case *events.FileReleaseSkipped:
		return fmt.Sprintf("%s: %s", x.Path, x.Reason)
	case *events.RecallRequested:
		return fmt.Sprintf("%s [%d+%d] by %s[%d]", x.Path, x.Offset, x.Length, x.Process, x.PID)
	case *events.RecallCompleted:
		return fmt.Sprintf("%s %s from %s in %.1f ms", x.Path, progress.Bytes(x.Bytes), x.SourceTier, float64(x.DurationNS)/1e6)
	case *events.FileMoved:
		return fmt.Sprintf("%s → %s", x.From, x.Path)
	case *events.RecallFailed:
		return fmt.Sprintf("%s: %s", x.Path, x.Reason)
	case interface{ Entity() string }:
		return x.Entity()
	}
	return env.Subject
}

// shortType is an event type as a person reads it: "file.released".
func shortType(typ string) string {
	if k, ok := events.KindOf(typ); ok {
		return k.Aggregate + "." + k.Name
	}
	return typ
}

// sourceOf is where an event comes from as a person reads it: the host and
// the program (the stage or command) that published it, "nas1/scanner",
// from its CloudEvents source (/strata/<host>/<stage>); an event from
// another publisher shows its source as it is.
func sourceOf(env events.Envelope) string {
	if rest, ok := strings.CutPrefix(env.Source, "/strata/"); ok && strings.Count(rest, "/") == 1 {
		return rest
	}
	if env.Source == "" {
		return "?"
	}
	return env.Source
}
