package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/scrubber"
)

type scrubCmd struct {
	Tier   string `placeholder:"T" help:"Scrub only this tier (default: every tier of this host)."`
	Sample string `default:"100%" placeholder:"P%" help:"Percentage of the copies to re-read, a random sample (default ${default})."`
	Rate   string `placeholder:"SIZE" help:"Bytes read per second at most, e.g. 100MiB; 0: unbounded (default: [scrub] rate)."`
	NoWait bool   `name:"no-wait" help:"Start the scrub in the daemon and return at once."`
	JSON   bool   `name:"json" help:"Print the result as JSON."`
}

func (*scrubCmd) Example() string { return "strata scrub --tier s3 --sample 10% --rate 50MiB" }

func (c *scrubCmd) Run(ctx context.Context, e *env, g *globals) error {
	data := g.dataDir()
	req := scrubber.StartRequest{Tier: c.Tier}
	p, err := parsePercent(c.Sample)
	if err != nil {
		return fmt.Errorf("%w: scrub: --sample: %w", errUsage, err)
	}
	req.Sample = p
	if c.Rate != "" {
		n, err := parseSize(strings.TrimSuffix(c.Rate, "/s"))
		if err != nil {
			return fmt.Errorf("%w: scrub: --rate: %w", errUsage, err)
		}
		req.Rate = n
		if n == 0 {
			req.Rate = -1
		}
	}
	nc, err := pipeline.Dial(ctx, data)
	if err != nil {
		return err
	}
	defer nc.Close()
	var started scrubber.Started
	if err := requestOn(ctx, nc, data, "scrub", req, &started, 10*time.Second); err != nil {
		return err
	}
	if !started.New {
		fmt.Fprintf(e.stderr, "strata: a scrub is already running (run %s); following it\n", started.RunID)
	}
	if c.NoWait {
		if c.JSON {
			return printJSON(e, started)
		}
		fmt.Fprintf(e.stdout, "scrub %s started\n", started.RunID)
		return nil
	}
	bar := progress.New(e.stderr, "scrub", "bytes", 0)
	defer bar.Finish()
	var st scrubber.Status
	for {
		if err := requestOn(ctx, nc, data, "scrub-status", scrubber.StatusRequest{RunID: started.RunID}, &st, 10*time.Second); err != nil {
			bar.Finish()
			if ctx.Err() != nil {
				fmt.Fprintf(e.stderr, "strata: the scrub goes on in the daemon (run %s)\n", started.RunID)
			}
			return err
		}
		bar.Set(st.Bytes, st.TotalBytes, fmt.Sprintf("%d/%d copies, %d corrupt, %d repaired", st.Checked, st.Total, st.Corrupt, st.Repaired))
		if st.Done {
			break
		}
		select {
		case <-ctx.Done():
			bar.Finish()
			fmt.Fprintf(e.stderr, "strata: the scrub goes on in the daemon (run %s)\n", started.RunID)
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	bar.Finish()
	if c.JSON {
		if err := printJSON(e, st); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "scrub %s: %d copies checked (%s): %d good, %d corrupt (%d missing), %d repaired, %d not reachable\n",
			st.RunID, st.Checked, progress.Bytes(st.Bytes), st.Verified, st.Corrupt, st.Missing, st.Repaired, st.Unavailable)
		for _, f := range st.Failures {
			fmt.Fprintln(e.stdout, "  "+f)
		}
	}
	switch {
	case st.Error != "":
		return errors.New("scrub: " + st.Error)
	case st.Corrupt > st.Repaired:
		return &exitError{code: exitDiffers, err: fmt.Errorf("scrub: %d corrupt copies could not be repaired", st.Corrupt-st.Repaired)}
	case st.Unavailable > 0:
		return &exitError{code: exitUnchecked, err: fmt.Errorf("scrub: %d copies were not checked (tier unreachable)", st.Unavailable)}
	}
	return nil
}
