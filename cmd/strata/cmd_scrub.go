package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scrubber"
	"github.com/strata-hsm/strata/workers/tier"
)

// scrubRequest starts a scrub in the daemon (control verb "scrub").
type scrubRequest struct {
	Tier   string  `json:"tier,omitempty"`
	Sample float64 `json:"sample,omitempty"` // percent, (0, 100]; 0: 100
	Rate   int64   `json:"rate,omitempty"`   // bytes/s; 0: the configured rate; -1: unbounded
}

// scrubStarted is the reply to "scrub".
type scrubStarted struct {
	RunID string `json:"run_id"`
	New   bool   `json:"new"` // false: a scrub was already running; this is its id
}

// scrubStatusRequest asks for a run's progress (control verb "scrub-status").
type scrubStatusRequest struct {
	RunID string `json:"run_id"`
}

// serveTierControl answers the verbs of the replication stages — scrub,
// scrub-status and prune — until ctx ends.
func (d *daemon) serveTierControl(ctx context.Context, s *stages) error {
	handlers := map[string]pipeline.ControlHandler{
		"scrub": pipeline.Verb("scrub", func(_ context.Context, req scrubRequest) (any, error) {
			return d.startScrub(ctx, s, req)
		}),
		"scrub-status": pipeline.Verb("scrub-status", func(_ context.Context, req scrubStatusRequest) (any, error) {
			st, ok := s.scrubs.Status(req.RunID)
			if !ok {
				return nil, fmt.Errorf("scrub-status: no scrub run %q", req.RunID)
			}
			return st, nil
		}),
		"prune": func(hctx context.Context, raw []byte) (any, error) { return d.ctlPrune(hctx, s, raw) },
	}
	stop, err := pipeline.ServeControl(ctx, d.nc, d.cfg.Host, handlers, d.logger)
	if err != nil {
		return err
	}
	defer stop()
	<-ctx.Done()
	return nil
}

// startScrub starts a scrub run (or reports the one in progress).
func (d *daemon) startScrub(ctx context.Context, s *stages, req scrubRequest) (scrubStarted, error) {
	if req.Tier != "" {
		if _, ok := s.targets[req.Tier]; !ok {
			return scrubStarted{}, fmt.Errorf("scrub: tier %q is not configured (tiers: %s)", req.Tier, strings.Join(d.cfg.tierNames(), ", "))
		}
	}
	if req.Sample < 0 || req.Sample > 100 {
		return scrubStarted{}, fmt.Errorf("scrub: sample %v%%: want (0, 100]", req.Sample)
	}
	sample := req.Sample
	if sample == 0 {
		sample = 100
	}
	rate := req.Rate
	switch {
	case rate == 0:
		rate = int64(d.cfg.Scrub.Rate)
	case rate < 0:
		rate = 0
	}
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "scrub")
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	id, isNew := s.scrubs.Start(ctx, scrubber.Config{
		Targets: s.targets,
		Copies: func(fn func(scrubber.Copy) error) error {
			_, err := d.cat.Scan(catalog.ScanFuncs{Copy: func(c *catalog.Copy) error {
				return fn(scrubber.Copy{ObjectID: c.ObjectID, Tier: c.Tier, Size: c.Size, PackedSize: c.PackedSize,
					PackedSum: c.PackedSum, Corrupt: c.State == catalog.CopyCorrupt})
			}})
			return err
		},
		Repair: func(ctx context.Context, id string, to tier.Target) (string, string, error) {
			return s.reader.Repair(ctx, id, to)
		},
		Emit: func(ctx context.Context, ev events.Event, parts ...string) error {
			_, err := em.Emit(ctx, ev, parts...)
			return err
		},
		Tier: req.Tier, Sample: sample / 100, Rate: rate, RunID: runID,
		Logger: d.logger.With("component", "scrub", "run", runID),
	})
	if isNew {
		d.logger.Info("scrub started", "run", id, "tier", req.Tier, "sample", sample, "rate", rate)
	}
	return scrubStarted{RunID: id, New: isNew}, nil
}

// scheduleScrubs starts a scrub every [scrub] interval.
func (d *daemon) scheduleScrubs(ctx context.Context, s *stages) error {
	t := time.NewTicker(time.Duration(d.cfg.Scrub.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := d.startScrub(ctx, s, scrubRequest{Sample: float64(d.cfg.Scrub.Sample)}); err != nil {
				d.logger.Error("scheduled scrub", "err", err)
			}
		}
	}
}

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
	req := scrubRequest{Tier: *tier}
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
	var started scrubStarted
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
		if err := requestOn(ctx, nc, *data, "scrub-status", scrubStatusRequest{RunID: started.RunID}, &st, 10*time.Second); err != nil {
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
