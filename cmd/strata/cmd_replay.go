package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
)

func cmdReplay(ctx context.Context, e *env, args []string) error {
	fs := newFlags("replay", "strata replay [--verify] [--json] [--data DIR]",
		"strata replay --verify   # rebuild beside the live catalog and compare")
	data := dataDirFlag(fs)
	verify := fs.Bool("verify", false, "rebuild beside the live catalog and exit 3 naming the first difference, if any")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	dataDir, err := filepath.Abs(*data)
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	var rep verifyReply
	switch running := daemonRunning(ctx, dataDir); {
	case *verify && running:
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
		prog := newProgress(e.stderr, "replay", "events", int64(last))
		if *verify {
			live, err := catalog.Open(catalogDir(dataDir), catalog.Options{Logger: logger})
			if err != nil {
				return err
			}
			defer live.Close()
			rep.Seq, rep.Diff, err = live.Verify(ctx, srv.JetStream(), dataDir, prog.catalogProgress())
			prog.Finish()
			if err != nil {
				return err
			}
		} else {
			err := catalog.Replace(ctx, srv.JetStream(), catalogDir(dataDir), last, catalog.Options{Logger: logger}, prog.catalogProgress())
			prog.Finish()
			if err != nil {
				return err
			}
			rep.Seq = last
		}
	}
	if *asJSON {
		if err := printJSON(e, rep); err != nil {
			return err
		}
	} else if rep.Diff == "" {
		what := "rebuilt"
		if *verify {
			what = "verified: the catalog equals a replay of the log"
		}
		fmt.Fprintf(e.stdout, "catalog %s up to seq %d\n", what, rep.Seq)
	}
	if rep.Diff != "" {
		return &exitError{3, fmt.Errorf("catalog differs from a replay of the log at seq %d: %s", rep.Seq, rep.Diff)}
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
