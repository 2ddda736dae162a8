package main

import (
	"context"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/workers/scanner"
)

type pinCmd struct {
	JSON  bool     `name:"json" help:"Print JSON."`
	Paths []string `arg:"" name:"path" complete:"file" help:"Files or trees never to archive."`
}

func (*pinCmd) Example() string { return "strata pin /srv/projects/active" }

func (c *pinCmd) Run(ctx context.Context, e *env, g *globals) error {
	return pinPaths(ctx, e, g, c.Paths, c.JSON, false)
}

type unpinCmd struct {
	JSON  bool     `name:"json" help:"Print JSON."`
	Paths []string `arg:"" name:"path" complete:"file" help:"Files or trees to allow archiving again."`
}

func (*unpinCmd) Example() string { return "strata unpin /srv/projects/active" }

func (c *unpinCmd) Run(ctx context.Context, e *env, g *globals) error {
	return pinPaths(ctx, e, g, c.Paths, c.JSON, true)
}

// pinReply is `strata pin --json` and `strata unpin --json`.
type pinReply struct {
	Pinned   []string `json:"pinned,omitempty"`
	Unpinned []string `json:"unpinned,omitempty"`
}

func pinPaths(ctx context.Context, e *env, g *globals, args []string, asJSON, unpin bool) error {
	paths, err := absPaths(args)
	if err != nil {
		return err
	}
	if err := request(ctx, g.dataDir(), "pin", scanner.PinRequest{Paths: paths, Unpin: unpin}, nil, time.Minute); err != nil {
		return err
	}
	verb := "pin"
	if unpin {
		verb = "unpin"
	}
	if asJSON {
		if unpin {
			return printJSON(e, pinReply{Unpinned: paths})
		}
		return printJSON(e, pinReply{Pinned: paths})
	}
	for _, p := range paths {
		fmt.Fprintf(e.stdout, "%sned %s\n", verb, p)
	}
	return nil
}
