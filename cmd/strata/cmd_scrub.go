package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/scrubber"
)

func cmdScrub(ctx context.Context, e *env, args []string) error {
	fs := newFlags("scrub", "strata scrub [--tier T] [--sample P%] [--rate 100MiB] [--json] [--data DIR]",
		"strata scrub --tier s3 --sample 10% --rate 50MiB")
	data := dataDirFlag(fs)
	tier := fs.String("tier", "", "scrub only this tier (default: every tier of this host)")
	sample := fs.String("sample", "100%", "percentage of the copies to re-read (a random sample)")
	rate := fs.String("rate", "", "bytes read per second at most, e.g. 100MiB; 0: unbounded (default: [scrub] rate)")
	noWait := fs.Bool("no-wait", false, "start the scrub in the daemon and return at once")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: scrub: unexpected argument %q", errUsage, fs.Arg(0))
	}
	req := scrubber.StartRequest{Tier: *tier}
	p, err := parsePercent(*sample)
	if err != nil {
		return fmt.Errorf("%w: scrub: --sample: %w", errUsage, err)
	}
	req.Sample = p
	if *rate != "" {
		n, err := parseSize(strings.TrimSuffix(*rate, "/s"))
		if err != nil {
			return fmt.Errorf("%w: scrub: --rate: %w", errUsage, err)
		}
		req.Rate = n
		if n == 0 {
			req.Rate = -1
		}
	}
	nc, err := pipeline.Dial(ctx, *data)
	if err != nil {
		return err
	}
	defer nc.Close()
	var started scrubber.Started
	if err := requestOn(ctx, nc, *data, "scrub", req, &started, 10*time.Second); err != nil {
		return err
	}
	if !started.New {
		fmt.Fprintf(e.stderr, "strata: a scrub is already running (run %s); following it\n", started.RunID)
	}
	if *noWait {
		if *asJSON {
			return printJSON(e, started)
		}
		fmt.Fprintf(e.stdout, "scrub %s started\n", started.RunID)
		return nil
	}
	bar := newProgress(e.stderr, "scrub", "bytes", 0)
	var st scrubber.Status
	for {
		if err := requestOn(ctx, nc, *data, "scrub-status", scrubber.StatusRequest{RunID: started.RunID}, &st, 10*time.Second); err != nil {
			if ctx.Err() != nil {
				fmt.Fprintf(e.stderr, "\nstrata: the scrub goes on in the daemon (run %s)\n", started.RunID)
			}
			return err
		}
		bar.Set(st.Bytes, st.TotalBytes, fmt.Sprintf("%d/%d copies, %d corrupt, %d repaired", st.Checked, st.Total, st.Corrupt, st.Repaired))
		if st.Done {
			break
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(e.stderr, "\nstrata: the scrub goes on in the daemon (run %s)\n", started.RunID)
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	bar.Finish()
	if *asJSON {
		if err := printJSON(e, st); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "scrub %s: %d copies checked (%s): %d good, %d corrupt (%d missing), %d repaired, %d not reachable\n",
			st.RunID, st.Checked, humanBytes(st.Bytes), st.Verified, st.Corrupt, st.Missing, st.Repaired, st.Unavailable)
		for _, f := range st.Failures {
			fmt.Fprintln(e.stdout, "  "+f)
		}
	}
	switch {
	case st.Error != "":
		return errors.New("scrub: " + st.Error)
	case st.Corrupt > st.Repaired:
		return &exitError{code: 3, err: fmt.Errorf("scrub: %d corrupt copies could not be repaired", st.Corrupt-st.Repaired)}
	case st.Unavailable > 0:
		return &exitError{code: 4, err: fmt.Errorf("scrub: %d copies were not checked (tier unreachable)", st.Unavailable)}
	}
	return nil
}
