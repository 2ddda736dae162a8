package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/store"
)

type tierCmds struct {
	Drain tierDrainCmd `cmd:"" help:"Take a tier out of service: make sure no object depends on it, copying what must be copied to the other tiers."`
}

func (*tierCmds) Example() string { return "strata tier drain old-nas" }

type tierDrainCmd struct {
	NoWait bool   `name:"no-wait" help:"Start the drain in the daemon and return at once."`
	JSON   bool   `name:"json" help:"Print the result as JSON."`
	Name   string `arg:"" help:"The tier to drain (a [[tier]] of this host's configuration)."`
}

func (*tierDrainCmd) Example() string {
	return "strata tier drain old-nas   # then remove [[tier]] old-nas from strata.toml and restart"
}

func (c *tierDrainCmd) Run(ctx context.Context, e *env, g *globals) error {
	data := g.dataDir()
	nc, err := pipeline.Dial(ctx, data)
	if err != nil {
		return err
	}
	defer nc.Close()
	req := store.DrainRequest{Tier: c.Name}
	var st store.DrainStatus
	if err := requestOn(ctx, nc, data, "tier-drain", req, &st, 10*time.Second); err != nil {
		return err
	}
	if c.NoWait {
		if c.JSON {
			return printJSON(e, st)
		}
		fmt.Fprintf(e.stdout, "draining tier %s (strata tier drain %s again to follow it)\n", c.Name, c.Name)
		return nil
	}
	bar := progress.New(e.stderr, "drain "+c.Name, "objects", 0)
	defer bar.Finish()
	for !st.Done {
		select {
		case <-ctx.Done():
			bar.Finish()
			fmt.Fprintf(e.stderr, "strata: the drain of %s goes on in the daemon\n", c.Name)
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if err := requestOn(ctx, nc, data, "tier-drain-status", req, &st, 10*time.Second); err != nil {
			return err
		}
		bar.Set(int64(st.Copied+len(st.Failed)), int64(st.Needing), fmt.Sprintf("%d objects on %s, %d copies made (%s)", st.Scanned, c.Name, st.Copied, progress.Bytes(st.Bytes)))
	}
	bar.Finish()
	if c.JSON {
		if err := printJSON(e, st); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "tier %s: %d objects have a copy there; %d had fewer than %d good copies elsewhere; %d copies made (%s)\n",
			c.Name, st.Scanned, st.Needing, st.Copies, st.Copied, progress.Bytes(st.Bytes))
		for _, f := range st.Failed {
			fmt.Fprintf(e.stdout, "  object %s: %s\n", f.ObjectID, f.Reason)
		}
	}
	switch {
	case st.Error != "":
		return errors.New("tier drain: " + st.Error)
	case len(st.Failed) > 0:
		return fmt.Errorf("tier drain: %d objects still depend on %s; keep it configured, fix what is said above and drain again", len(st.Failed), c.Name)
	}
	if !c.JSON {
		fmt.Fprintf(e.stdout, "no object depends on %s any more: remove its [[tier]] table from the configuration and restart the daemon (until then its copies no longer count)\n", c.Name)
	}
	return nil
}
