package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/scanner"
)

// maxArchiveFiles bounds one strata archive request: its reply lists every
// selected file (about 150 bytes each) and must fit in one NATS message.
const maxArchiveFiles = 150_000

type archiveRequest struct {
	Paths []string `json:"paths"`
}

type archiveFile struct {
	FileID string `json:"file_id"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
}

type archiveSkip struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

type archiveReply struct {
	// Seq is the last stream sequence before the selections: --wait
	// follows the log from there.
	Seq      uint64        `json:"seq"`
	Host     string        `json:"host"`
	Selected []archiveFile `json:"selected"`
	Skipped  []archiveSkip `json:"skipped"`
}

// ctlArchive selects the files under the given paths now, whatever their
// age (pins and excludes still apply).
func (d *daemon) ctlArchive(ctx context.Context, raw []byte) (any, error) {
	var req archiveRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("archive: bad request: %w", err)
	}
	seq, err := pipeline.LastSeq(ctx, d.js)
	if err != nil {
		return nil, err
	}
	rep := archiveReply{Seq: seq, Host: d.cfg.Host, Selected: []archiveFile{}, Skipped: []archiveSkip{}}
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "archive")
	pol := d.scanPolicy(nil)
	token := fmt.Sprint("manual@", seq, "@", time.Now().UnixNano())
	// Gather first, then publish the selections many at a time: one
	// publish waits for its acknowledgement, and a large tree has many.
	var cands []scanner.Candidate
	selectOne := func(c scanner.Candidate, root string) error {
		c.Root, c.Reason = root, events.ReasonManual
		cands = append(cands, c)
		return nil
	}
	for _, p := range req.Paths {
		root := d.hotRootOf(p)
		if root == "" {
			rep.Skipped = append(rep.Skipped, archiveSkip{p, "not inside a configured hot tree"})
			continue
		}
		if pinned, err := d.cat.Pinned(p); err != nil || pinned {
			rep.Skipped = append(rep.Skipped, archiveSkip{p, "pinned"})
			continue
		}
		fi, err := os.Lstat(p)
		if err != nil {
			rep.Skipped = append(rep.Skipped, archiveSkip{p, err.Error()})
			continue
		}
		if !fi.IsDir() {
			c, err := scanner.Inspect(p, root, events.ReasonManual)
			if err != nil {
				rep.Skipped = append(rep.Skipped, archiveSkip{p, err.Error()})
				continue
			}
			if err := selectOne(c, root); err != nil {
				return nil, err
			}
			continue
		}
		manual := pol
		manual.Roots = []string{p}
		manual.MinSize, manual.MinAtimeAge, manual.MinMtimeAge = 0, 0, 0
		manual.HighWatermark, manual.LowWatermark = 0, 0
		if _, err := scanner.Scan(ctx, manual, time.Now(), func(c scanner.Candidate) error {
			return selectOne(c, root)
		}); err != nil {
			return nil, fmt.Errorf("archive %s: %w", p, err)
		}
	}
	if len(cands) > maxArchiveFiles {
		return nil, fmt.Errorf("archive: %d files in one request; at most %d (archive subdirectories one at a time)", len(cands), maxArchiveFiles)
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for _, c := range cands {
		g.Go(func() error {
			err := scanner.Select(gctx, em, c, token)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, scanner.ErrPathNotUTF8):
				rep.Skipped = append(rep.Skipped, archiveSkip{c.Path, "name is not valid UTF-8: it cannot be recorded in an event"})
			case err != nil:
				return err
			default:
				rep.Selected = append(rep.Selected, archiveFile{FileID: c.FileID, Path: c.Path, Size: c.Stat.Size})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return rep, nil
}

// archiveOutcome is what --wait reports per file.
type archiveOutcome struct {
	Path   string `json:"path"`
	State  string `json:"state"` // released or skipped
	Reason string `json:"reason,omitempty"`
	Size   int64  `json:"size"`
}

type archiveSummary struct {
	Selected int              `json:"selected"`
	Released int              `json:"released"`
	Skipped  []archiveSkip    `json:"skipped"`
	Bytes    int64            `json:"bytes_released"`
	Seconds  float64          `json:"seconds"`
	Files    []archiveOutcome `json:"files,omitempty"`
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
	var rep archiveReply
	if err := requestOn(ctx, nc, *data, "archive", archiveRequest{Paths: paths}, &rep, 6*time.Hour); err != nil {
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
func waitArchived(ctx context.Context, e *env, js jetstream.JetStream, rep archiveReply, sum *archiveSummary) error {
	pending := map[string]archiveFile{}
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
					sum.Skipped = append(sum.Skipped, archiveSkip{x.Path, x.Reason})
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
