package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/scanner"
)

// archiveOutcome is what --wait reports per file.
type archiveOutcome struct {
	Path   string `json:"path"`
	State  string `json:"state"` // released or skipped
	Reason string `json:"reason,omitempty"`
	Size   int64  `json:"size"`
}

type archiveSummary struct {
	Selected int                   `json:"selected"`
	Released int                   `json:"released"`
	Skipped  []scanner.ArchiveSkip `json:"skipped"`
	Bytes    int64                 `json:"bytes_released"`
	Seconds  float64               `json:"seconds"`
	Files    []archiveOutcome      `json:"files,omitempty"`
}

func cmdArchive(ctx context.Context, e *env, args []string) error {
	fs := newFlags("archive", "strata archive [--wait] [--timeout D] [--json] [--data DIR] PATH...",
		"strata archive --wait /srv/projects/2019")
	data := dataDirFlag(fs)
	wait := fs.Bool("wait", false, "return when every selected file is released (or skipped), with a summary")
	timeout := fs.Duration("timeout", 0, "with --wait, give up after this long (0: never)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: archive needs at least one PATH", errUsage)
	}
	paths, err := absPaths(fs.Args())
	if err != nil {
		return err
	}
	nc, err := pipeline.Dial(ctx, *data)
	if err != nil {
		return err
	}
	defer nc.Close()
	start := time.Now()
	var rep scanner.ArchiveReply
	if err := requestOn(ctx, nc, *data, "archive", scanner.ArchiveRequest{Paths: paths}, &rep, 6*time.Hour); err != nil {
		return err
	}
	sum := archiveSummary{Selected: len(rep.Selected), Skipped: rep.Skipped}
	if *wait && len(rep.Selected) > 0 {
		wctx := ctx
		if *timeout > 0 {
			var cancel context.CancelFunc
			wctx, cancel = context.WithTimeout(ctx, *timeout)
			defer cancel()
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		if err := waitArchived(wctx, e, js, rep, &sum); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("archive: %d of %d files still in progress after %s (see strata ls)", sum.Selected-sum.Released-len(sum.Skipped)+len(rep.Skipped), sum.Selected, *timeout)
			}
			return err
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	if *asJSON {
		return printJSON(e, sum)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	if *wait {
		fmt.Fprintf(w, "released\t%d of %d files (%s) in %.1fs\n", sum.Released, sum.Selected, humanBytes(sum.Bytes), sum.Seconds)
	} else {
		fmt.Fprintf(w, "selected\t%d files for archiving (strata ls or --wait to follow)\n", sum.Selected)
	}
	for _, s := range sum.Skipped {
		fmt.Fprintf(w, "skipped\t%s: %s\n", s.Path, s.Reason)
	}
	return w.Flush()
}

// waitArchived follows the log until every selected file is released or
// skipped.
func waitArchived(ctx context.Context, e *env, js jetstream.JetStream, rep scanner.ArchiveReply, sum *archiveSummary) error {
	pending := map[string]scanner.ArchivedFile{}
	var total int64
	for _, f := range rep.Selected {
		pending[f.FileID] = f
		total += f.Size
	}
	prog := newProgress(e.stderr, "archive", "bytes", total)
	var done int64
	filter := []string{events.Subject(rep.Host, events.KindFileReleased), events.Subject(rep.Host, events.KindFileReleaseSkipped)}
	err := pipeline.FollowWith(ctx, js, rep.Seq+1, pipeline.FollowOptions{Filter: filter}, func(batch []events.Envelope) error {
		for _, env := range batch {
			ev, err := events.DecodeData(env.Type, env.Data)
			if err != nil {
				continue
			}
			switch x := ev.(type) {
			case *events.FileReleased:
				if f, ok := pending[x.FileID]; ok {
					delete(pending, x.FileID)
					sum.Released++
					sum.Bytes += f.Size
					done += f.Size
					sum.Files = append(sum.Files, archiveOutcome{Path: x.Path, State: "released", Size: f.Size})
				}
			case *events.FileReleaseSkipped:
				if f, ok := pending[x.FileID]; ok {
					delete(pending, x.FileID)
					done += f.Size
					sum.Skipped = append(sum.Skipped, scanner.ArchiveSkip{Path: x.Path, Reason: x.Reason})
					sum.Files = append(sum.Files, archiveOutcome{Path: x.Path, State: "skipped", Reason: x.Reason, Size: f.Size})
				}
			}
		}
		prog.Set(done, total, fmt.Sprintf("%d/%d files", len(rep.Selected)-len(pending), len(rep.Selected)))
		if len(pending) == 0 {
			return pipeline.ErrStop
		}
		return nil
	})
	prog.Finish()
	if err == nil && len(pending) > 0 {
		// Follow ends quietly when its context does.
		if err = ctx.Err(); err == nil {
			err = fmt.Errorf("archive: the event log ended with %d files still pending", len(pending))
		}
	}
	return err
}

func absPaths(args []string) ([]string, error) {
	out := make([]string, 0, len(args))
	for _, p := range args {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		out = append(out, abs)
	}
	return out, nil
}
