package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/pipeline"
)

type consumersCmd struct {
	Ls consumersLsCmd `cmd:"" default:"withargs" help:"List the consumers of the event streams: the daemon's stages, readers', and strays."`
	Rm consumersRmCmd `cmd:"" help:"Remove a consumer that is not the daemon's (a stray durable, a stuck reader)."`
}

func (*consumersCmd) Example() string {
	return "strata consumers ls\nstrata consumers rm grafana-old"
}

type consumersLsCmd struct {
	JSON bool `name:"json" help:"Print JSON."`
}

func (*consumersLsCmd) Example() string { return "strata consumers ls --json" }

func (c *consumersLsCmd) Run(ctx context.Context, e *env, g *globals) error {
	var cs []pipeline.Consumer
	if err := request(ctx, g.dataDir(), "consumers", struct{}{}, &cs, 30*time.Second); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, cs)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "STREAM\tNAME\tOWNER\tDURABLE\tLAG")
	for _, x := range cs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%d\n", x.Stream, x.Name, x.Owner, x.Durable, x.Lag)
	}
	return w.Flush()
}

type consumersRmCmd struct {
	Stream string `default:"STRATA_EVENTS" placeholder:"STREAM" help:"The stream (default ${default})."`
	JSON   bool   `name:"json" help:"Print JSON."`
	Name   string `arg:"" help:"The consumer's name (strata consumers ls)."`
}

func (*consumersRmCmd) Example() string { return "strata consumers rm grafana-old" }

func (c *consumersRmCmd) Run(ctx context.Context, e *env, g *globals) error {
	var removed pipeline.Consumer
	if err := request(ctx, g.dataDir(), "consumers-rm", pipeline.RemoveConsumerRequest{Stream: c.Stream, Name: c.Name}, &removed, 30*time.Second); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, removed)
	}
	fmt.Fprintf(e.stdout, "removed consumer %s of %s (%s)\n", removed.Name, removed.Stream, removed.Owner)
	return nil
}
