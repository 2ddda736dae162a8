package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/cmd/internal/progress"
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

type archiveCmd struct {
	Wait    bool          `help:"Return when every selected file is released (or skipped), with a summary."`
	Timeout time.Duration `placeholder:"D" help:"Give up after this long, waiting included (0: never)."`
	JSON    bool          `name:"json" help:"Print JSON."`
	Paths   []string      `arg:"" name:"path" complete:"file" help:"Files or directories (recursively) to archive."`
}

func (*archiveCmd) Example() string { return "strata archive --wait /srv/projects/2019" }

func (c *archiveCmd) Run(ctx context.Context, e *env, g *globals) error {
	paths, err := absPaths(c.Paths)
	if err != nil {
		return err
	}
	// --timeout bounds the whole command: the request (a daemon that
	// cannot record the selections may not answer) and the wait.
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	nc, err := pipeline.Dial(ctx, g.dataDir())
	if err != nil {
		return err
	}
	defer nc.Close()
	start := time.Now()
	var rep scanner.ArchiveReply
	if err := requestOn(ctx, nc, g.dataDir(), "archive", scanner.ArchiveRequest{Paths: paths}, &rep, 6*time.Hour); err != nil {
		if errors.Is(err, context.DeadlineExceeded) && c.Timeout > 0 {
			return fmt.Errorf("archive: no answer from the daemon within %s%s", c.Timeout, conditionsNote(nc, g.dataDir()))
		}
		return err
	}
	sum := archiveSummary{Selected: len(rep.Selected), Skipped: rep.Skipped}
	if c.Wait && len(rep.Selected) > 0 {
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		if err := waitArchived(ctx, e, js, rep, &sum, func() string { return conditionsNote(nc, g.dataDir()) }); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("archive: %d of %d files still in progress after %s (see strata ls)%s", sum.Selected-sum.Released-len(sum.Skipped)+len(rep.Skipped), sum.Selected, c.Timeout, conditionsNote(nc, g.dataDir()))
			}
			return err
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	if c.JSON {
		return printJSON(e, sum)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	if c.Wait {
		fmt.Fprintf(w, "released\t%d of %d files (%s) in %.1fs\n", sum.Released, sum.Selected, progress.Bytes(sum.Bytes), sum.Seconds)
	} else {
		fmt.Fprintf(w, "selected\t%d files for archiving (strata ls or --wait to follow)\n", sum.Selected)
	}
	for _, s := range sum.Skipped {
		fmt.Fprintf(w, "skipped\t%s: %s\n", s.Path, s.Reason)
	}
	return w.Flush()
}

// conditionsNote asks the daemon (briefly) for the conditions in force and
// the tiers that cannot store objects or cannot be reached, and returns
// them as the end of an error message ("" if none or no answer): why a
// wait ran out, and what to do.
func conditionsNote(nc *nats.Conn, dataDir string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var r statusReply
	if requestOn(ctx, nc, dataDir, "status", struct{}{}, &r, 3*time.Second) != nil {
		return ""
	}
	var b strings.Builder
	for _, c := range r.Conditions {
		fmt.Fprintf(&b, "; %s %s since %s: %s", c.Title(), c.Path, c.Since.Local().Format(time.TimeOnly), c.Hint)
	}
	for _, t := range r.TierState {
		// An unreachable tier's failures say the same again.
		if !t.Reachable {
			fmt.Fprintf(&b, "; tier %s is unreachable: %s", t.Name, t.Probe)
		} else if note := t.stuckNote(); note != "" {
			fmt.Fprintf(&b, "; tier %s: %s", t.Name, note)
		}
	}
	return b.String()
}

// stallCheck is how long an archive wait goes without a file released
// before its progress line says why (the daemon's conditions and tiers).
const stallCheck = 15 * time.Second

// waitArchived follows the log until every selected file is released or
// skipped. While nothing moves for stallCheck, the progress line carries
// why(): a tier that does not answer, a full disk.
func waitArchived(ctx context.Context, e *env, js jetstream.JetStream, rep scanner.ArchiveReply, sum *archiveSummary, why func() string) error {
	pending := map[string]scanner.ArchivedFile{}
	var total int64
	for _, f := range rep.Selected {
		pending[f.FileID] = f
		total += f.Size
	}
	prog := progress.New(e.stderr, "archive", "bytes", total)
	var mu sync.Mutex // protects done and files, shared with the stall check
	var done int64
	files := fmt.Sprintf("0/%d files", len(rep.Selected))
	stalled := make(chan struct{})
	defer close(stalled)
	go func() {
		t := time.NewTicker(stallCheck)
		defer t.Stop()
		var last int64 // nothing done at the start counts as stalled
		for {
			select {
			case <-stalled:
				return
			case <-t.C:
			}
			mu.Lock()
			d, f := done, files
			mu.Unlock()
			if d == last {
				if note := strings.TrimPrefix(why(), "; "); note != "" {
					prog.Set(d, 0, f+", waiting: "+note)
				}
			}
			last = d
		}
	}()
	filter := []string{events.Subject(rep.Host, events.KindFileReleased), events.Subject(rep.Host, events.KindFileReleaseSkipped)}
	err := pipeline.FollowWith(ctx, js, rep.Seq+1, pipeline.FollowOptions{Filter: filter}, func(batch []events.Envelope) error {
		mu.Lock()
		defer mu.Unlock()
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
		files = fmt.Sprintf("%d/%d files", len(rep.Selected)-len(pending), len(rep.Selected))
		prog.Set(done, total, files)
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
