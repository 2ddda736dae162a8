package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/strata-hsm/strata/workers/interceptor"
)

type recallSummary struct {
	Files   int      `json:"files"`
	Bytes   int64    `json:"bytes"`
	Seconds float64  `json:"seconds"`
	Failed  []string `json:"failed,omitempty"`
}

func cmdRecall(ctx context.Context, e *env, args []string) error {
	fs := newFlags("recall", "strata recall [--wait] [--json] [--data DIR] PATH...", "strata recall --wait /srv/projects/2019")
	data := dataDirFlag(fs)
	wait := fs.Bool("wait", false, "read every stub now and return when all are back (progress bar on a terminal)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: recall needs at least one PATH", errUsage)
	}
	paths, err := absPaths(fs.Args())
	if err != nil {
		return err
	}
	start := time.Now()
	var rep interceptor.RecallReply
	if err := request(ctx, *data, "recall", interceptor.RecallRequest{Paths: paths, Background: !*wait}, &rep, 10*time.Minute); err != nil {
		return err
	}
	sum := recallSummary{Files: len(rep.Stubs)}
	if *wait {
		var total int64
		for _, f := range rep.Stubs {
			total += f.Size
		}
		prog := newProgress(e.stderr, "recall", "bytes", total)
		var mu sync.Mutex
		var done int64
		for _, f := range rep.Stubs {
			n, err := interceptor.ReadAll(ctx, f.Path, func(n int64) {
				mu.Lock()
				done += n
				prog.Set(done, total, "")
				mu.Unlock()
			})
			sum.Bytes += n
			if err != nil {
				sum.Failed = append(sum.Failed, fmt.Sprintf("%s: %v", f.Path, err))
			}
		}
		prog.Finish()
	}
	sum.Seconds = time.Since(start).Seconds()
	if *asJSON {
		if err := printJSON(e, sum); err != nil {
			return err
		}
	} else if *wait {
		fmt.Fprintf(e.stdout, "recalled %d files (%s) in %.1fs\n", sum.Files-len(sum.Failed), humanBytes(sum.Bytes), sum.Seconds)
	} else {
		fmt.Fprintf(e.stdout, "prefetching %d stubs in the background\n", sum.Files)
	}
	if len(sum.Failed) > 0 {
		for _, f := range sum.Failed {
			fmt.Fprintln(e.stderr, "failed:", f)
		}
		return fmt.Errorf("recall: %d of %d files failed", len(sum.Failed), sum.Files)
	}
	return nil
}
