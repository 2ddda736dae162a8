package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/workers/recall"
)

type restoreCmd struct {
	Version uint   `placeholder:"N" help:"Version to restore (default: the latest); see strata ls --json."`
	To      string `required:"" placeholder:"DEST" complete:"file" help:"Where to write it (must not exist)."`
	FileID  string `name:"file-id" placeholder:"ID" help:"Identify the file by its id instead of PATH (e.g. a deleted file)."`
	JSON    bool   `name:"json" help:"Print JSON."`
	Path    string `arg:"" optional:"" complete:"file" help:"The file (or give --file-id)."`
}

func (*restoreCmd) Example() string {
	return "strata restore /srv/projects/report.odt --version 2 --to /tmp/report-v2.odt"
}

func (c *restoreCmd) Run(ctx context.Context, e *env, g *globals) error {
	if c.Path == "" && c.FileID == "" {
		return fmt.Errorf("%w: restore needs PATH (or --file-id) and --to DEST (see strata restore --help)", errUsage)
	}
	req := recall.RestoreRequest{FileID: c.FileID, Version: uint32(c.Version)}
	if c.Path != "" {
		p, err := filepath.Abs(c.Path)
		if err != nil {
			return err
		}
		req.Path = p
	}
	dest, err := filepath.Abs(c.To)
	if err != nil {
		return err
	}
	req.To = dest
	var rep recall.RestoreReply
	if err := request(ctx, g.dataDir(), "restore", req, &rep, time.Hour); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, rep)
	}
	fmt.Fprintf(e.stdout, "restored version %d (%s, %s from %s) to %s\n", rep.Version, rep.ObjectID[:16], progress.Bytes(rep.Bytes), rep.Tier, rep.To)
	return nil
}
