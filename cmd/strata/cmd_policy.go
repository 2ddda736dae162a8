package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/workers/scanner"
)

type previewRequest struct {
	Limit int `json:"limit"`
}

// ctlPreview runs the policy as a dry run.
func (d *daemon) ctlPreview(ctx context.Context, raw []byte) (any, error) {
	var req previewRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("preview: bad request: %w", err)
	}
	roots := d.hotRoots()
	if len(roots) == 0 {
		return scanner.Report{Candidates: []scanner.Candidate{}}, nil
	}
	return scanner.Preview(ctx, d.scanPolicy(roots), time.Now(), req.Limit)
}

func cmdPolicy(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "preview" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(e.stdout, "Usage: strata policy preview [--json] [--limit N] [--data DIR]\n\nExample:\n  strata policy preview --limit 20")
			return nil
		}
		return fmt.Errorf("%w: policy: want \"policy preview\"", errUsage)
	}
	fs := newFlags("policy preview", "strata policy preview [--json] [--limit N] [--data DIR]", "strata policy preview --limit 20")
	data := dataDirFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", 100, "list at most this many files (totals count all)")
	if err := parse(fs, args[1:], e); err != nil {
		return err
	}
	var rep scanner.Report
	if err := request(ctx, *data, "preview", previewRequest{Limit: *limit}, &rep, 30*time.Minute); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, rep)
	}
	return rep.WriteText(e.stdout)
}
