package main

import (
	"context"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/workers/releaser"
)

type releaseCmd struct {
	JSON  bool     `name:"json" help:"Print JSON."`
	Paths []string `arg:"" name:"path" complete:"file" help:"Stubs or directories (recursively) whose resident ranges to free."`
}

func (*releaseCmd) Example() string { return "strata release /srv/projects/2019/video.mkv" }

func (c *releaseCmd) Run(ctx context.Context, e *env, g *globals) error {
	paths, err := absPaths(c.Paths)
	if err != nil {
		return err
	}
	var rep releaser.RepunchReply
	if err := request(ctx, g.dataDir(), releaser.RepunchVerb, releaser.RepunchVerbRequest{Paths: paths}, &rep, 10*time.Minute); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, rep)
	}
	for _, f := range rep.Files {
		switch {
		case f.Skipped != "":
			fmt.Fprintf(e.stdout, "kept %s: %s\n", f.Path, f.Skipped)
		case f.Freed > 0:
			fmt.Fprintf(e.stdout, "freed %d bytes of %s (%d frames verified)\n", f.Freed, f.Path, f.Frames)
		}
	}
	fmt.Fprintf(e.stdout, "%d stubs, %d bytes freed\n", len(rep.Files), rep.Freed)
	return nil
}
