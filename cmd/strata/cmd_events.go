package main

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

func cmdEvents(ctx context.Context, e *env, args []string) error {
	fs := newFlags("events", "strata events [--follow] [--since SEQ] [--json] [--data DIR]",
		"strata events --follow --since 1")
	data := dataDirFlag(fs)
	follow := fs.Bool("follow", false, "keep printing new events as they arrive")
	since := fs.Uint64("since", 1, "first stream sequence to print")
	asJSON := fs.Bool("json", false, "print each event as its CloudEvents JSON (one per line)")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if *since == 0 {
		*since = 1
	}
	nc, err := pipeline.Dial(ctx, *data)
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
	if !*follow && last < *since {
		return nil
	}
	return pipeline.Follow(ctx, js, *since, func(batch []events.Envelope) error {
		for _, env := range batch {
			if env.Type == "" {
				fmt.Fprintf(e.stdout, "%d\t(undecodable event skipped)\n", env.Seq)
				continue
			}
			if *asJSON {
				b, err := events.Encode(env)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s\n", b)
			} else {
				fmt.Fprintf(e.stdout, "%d\t%s\t%s\t%s\n", env.Seq, env.Time.Local().Format("2006-01-02 15:04:05.000"),
					shortType(env.Type), summary(env))
			}
			if !*follow && env.Seq >= last {
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
		return fmt.Sprintf("%s (%s, %s)", x.Path, humanBytes(x.Stat.Size), x.Reason)
	case *events.ObjectPacked:
		return fmt.Sprintf("%s → %s (%s → %s)", x.Path, x.ObjectID[:16], humanBytes(x.Size), humanBytes(x.PackedSize))
	case *events.ObjectStored:
		return fmt.Sprintf("%s on %s (%s)", x.ObjectID[:16], x.Tier, x.Location)
	case *events.FileReleased:
		return fmt.Sprintf("%s (%d copies)", x.Path, x.Copies)
	case *events.FileReleaseSkipped:
		return fmt.Sprintf("%s: %s", x.Path, x.Reason)
	case *events.RecallRequested:
		return fmt.Sprintf("%s [%d+%d] by %s[%d]", x.Path, x.Offset, x.Length, x.Process, x.PID)
	case *events.RecallCompleted:
		return fmt.Sprintf("%s %s from %s in %.1f ms", x.Path, humanBytes(x.Bytes), x.SourceTier, float64(x.DurationNS)/1e6)
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
