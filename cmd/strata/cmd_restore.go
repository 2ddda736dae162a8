package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/strata-hsm/strata/workers/recall"
)

func cmdRestore(ctx context.Context, e *env, args []string) error {
	fs := newFlags("restore", "strata restore [--version N] [--json] [--data DIR] PATH --to DEST",
		"strata restore --version 2 /srv/projects/report.odt --to /tmp/report-v2.odt")
	data := dataDirFlag(fs)
	version := fs.Uint("version", 0, "version to restore (default: the latest); see strata ls --json")
	to := fs.String("to", "", "where to write it (must not exist)")
	fileID := fs.String("file-id", "", "identify the file by its id instead of PATH (e.g. a deleted file)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if *to == "" || (fs.NArg() != 1 && *fileID == "") {
		return fmt.Errorf("%w: restore needs PATH (or --file-id) and --to DEST", errUsage)
	}
	req := recall.RestoreRequest{FileID: *fileID, Version: uint32(*version)}
	if fs.NArg() == 1 {
		p, err := filepath.Abs(fs.Arg(0))
		if err != nil {
			return err
		}
		req.Path = p
	}
	dest, err := filepath.Abs(*to)
	if err != nil {
		return err
	}
	req.To = dest
	var rep recall.RestoreReply
	if err := request(ctx, *data, "restore", req, &rep, time.Hour); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, rep)
	}
	fmt.Fprintf(e.stdout, "restored version %d (%s, %s from %s) to %s\n", rep.Version, rep.ObjectID[:16], humanBytes(rep.Bytes), rep.Tier, rep.To)
	return nil
}
