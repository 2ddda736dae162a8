package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/failpoint"
)

// Failpoints of strata replay (offline), one per durable step of
// catalog.Replace.
var replayFailpoints = map[string]string{
	catalog.ReplaceRebuilt:    failpoint.Define("replay.after-rebuild", "the new catalog is complete beside the live one; nothing swapped"),
	catalog.ReplaceMovedAside: failpoint.Define("replay.after-move-aside", "the live catalog renamed aside; the new one not yet in its place"),
	catalog.ReplaceSwapped:    failpoint.Define("replay.after-swap", "the new catalog in place; the old one not yet removed"),
}

type replayCmd struct {
	Verify bool `help:"Rebuild beside the live catalog and exit 3 naming the first difference, if any."`
	JSON   bool `name:"json" help:"Print JSON."`
}

func (*replayCmd) Example() string {
	return "strata replay --verify   # rebuild beside the live catalog and compare"
}

func (c *replayCmd) Run(ctx context.Context, e *env, g *globals) error {
	dataDir, err := filepath.Abs(g.dataDir())
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	var rep verifyReply
	switch running := daemonRunning(ctx, dataDir); {
	case c.Verify && running:
		// The daemon has the catalog open: it pauses its projection and
		// rebuilds beside it.
		if err := request(ctx, dataDir, "verify", struct{}{}, &rep, time.Hour); err != nil {
			return err
		}
	case running:
		return fmt.Errorf("%w: stop it first (replay replaces the catalog it has open), or use strata replay --verify", errDaemonRunning)
	default:
		// A replay allocates briefly and much: trade memory for less GC.
		defer debug.SetGCPercent(debug.SetGCPercent(400))
		srv, err := openOffline(ctx, dataDir, logger)
		if err != nil {
			return err
		}
		defer srv.Close()
		last, err := pipeline.LastSeq(ctx, srv.JetStream())
		if err != nil {
			return err
		}
		prog := progress.New(e.stderr, "replay", "events", int64(last))
		defer prog.Finish()
		if c.Verify {
			live, err := catalog.Open(catalogDir(dataDir), catalog.Options{Logger: logger})
			if err != nil {
				return err
			}
			defer live.Close()
			rep.Seq, rep.Diff, err = live.Verify(ctx, srv.JetStream(), dataDir, catalogProgress(prog))
			prog.Finish()
			if err != nil {
				return err
			}
		} else {
			fp := failpoint.New()
			opts := catalog.Options{Logger: logger, ReplaceStep: func(step string) { fp.Hit(replayFailpoints[step]) }}
			err := catalog.Replace(ctx, srv.JetStream(), catalogDir(dataDir), last, opts, catalogProgress(prog))
			prog.Finish()
			if err != nil {
				return err
			}
			rep.Seq = last
		}
	}
	if c.JSON {
		if err := printJSON(e, rep); err != nil {
			return err
		}
	} else if rep.Diff == "" {
		what := "rebuilt"
		if c.Verify {
			what = "verified: the catalog equals a replay of the log"
		}
		fmt.Fprintf(e.stdout, "catalog %s up to seq %d\n", what, rep.Seq)
	}
	if rep.Diff != "" {
		return &exitError{exitDiffers, fmt.Errorf("catalog differs from a replay of the log at seq %d: %s", rep.Seq, rep.Diff)}
	}
	return nil
}

// daemonRunning reports whether a daemon answers on dataDir.
func daemonRunning(ctx context.Context, dataDir string) bool {
	nc, err := pipeline.Dial(ctx, dataDir)
	if err != nil {
		return false
	}
	nc.Close()
	return true
}

// openOffline starts the embedded server on dataDir without any listener,
// for commands that work on the log while no daemon runs.
func openOffline(ctx context.Context, dataDir string, logger *slog.Logger) (*pipeline.Server, error) {
	return pipeline.Open(ctx, pipeline.Config{DataDir: dataDir, Host: "offline", Port: pipeline.NoListener}, logger)
}

// catalogProgress adapts p to catalog.Progress.
func catalogProgress(p *progress.Bar) catalog.Progress {
	if p == nil {
		return nil
	}
	return func(done, total uint64) { p.Set(int64(done), int64(total), "") }
}
