package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

type pinRequest struct {
	Paths []string `json:"paths"`
	Unpin bool     `json:"unpin"`
}

// ctlPin records pins (or unpins) in the log; the scanner and strata
// archive consult them through the catalog.
func (d *daemon) ctlPin(ctx context.Context, raw []byte) (any, error) {
	var req pinRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("pin: bad request: %w", err)
	}
	for _, p := range req.Paths {
		if d.hotRootOf(p) == "" {
			return nil, fmt.Errorf("pin: %s is not inside a configured hot tree", p)
		}
	}
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "pin")
	var last uint64
	for _, p := range req.Paths {
		var ev events.Event = &events.FilePinned{Path: p}
		if req.Unpin {
			ev = &events.FileUnpinned{Path: p}
		}
		seq, err := em.Emit(ctx, ev, p, fmt.Sprint(time.Now().UnixNano()))
		if err != nil {
			return nil, err
		}
		last = seq
	}
	// Answer once the catalog knows, so a scan right after sees the pin.
	if err := d.cat.WaitSeq(ctx, last); err != nil {
		return nil, err
	}
	return req.Paths, nil
}

func cmdPin(ctx context.Context, e *env, args []string) error   { return pinCmd(ctx, e, args, false) }
func cmdUnpin(ctx context.Context, e *env, args []string) error { return pinCmd(ctx, e, args, true) }

func pinCmd(ctx context.Context, e *env, args []string, unpin bool) error {
	verb := "pin"
	if unpin {
		verb = "unpin"
	}
	fs := newFlags(verb, "strata "+verb+" [--data DIR] PATH...", "strata "+verb+" /srv/projects/active")
	data := dataDirFlag(fs)
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: %s needs at least one PATH", errUsage, verb)
	}
	paths, err := absPaths(fs.Args())
	if err != nil {
		return err
	}
	if err := request(ctx, *data, "pin", pinRequest{Paths: paths, Unpin: unpin}, nil, time.Minute); err != nil {
		return err
	}
	for _, p := range paths {
		fmt.Fprintf(e.stdout, "%sned %s\n", verb, p)
	}
	return nil
}
