package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/workers/interceptor"
)

type recallSummary struct {
	Files   int      `json:"files"`
	Bytes   int64    `json:"bytes"`
	Seconds float64  `json:"seconds"`
	Failed  []string `json:"failed,omitempty"`
}

type recallCmd struct {
	Wait  bool     `help:"Read every stub now and return when all are back (progress on stderr)."`
	JSON  bool     `name:"json" help:"Print JSON."`
	Paths []string `arg:"" name:"path" complete:"file" help:"Stubs or directories (recursively) to bring back."`
}

func (*recallCmd) Example() string { return "strata recall --wait /srv/projects/2019" }

func (c *recallCmd) Run(ctx context.Context, e *env, g *globals) error {
	paths, err := absPaths(c.Paths)
	if err != nil {
		return err
	}
	start := time.Now()
	var rep interceptor.RecallReply
	if err := request(ctx, g.dataDir(), "recall", interceptor.RecallRequest{Paths: paths, Background: !c.Wait}, &rep, 10*time.Minute); err != nil {
		return err
	}
	sum := recallSummary{Files: len(rep.Stubs)}
	if c.Wait {
		var total int64
		for _, f := range rep.Stubs {
			total += f.Size
		}
		prog := progress.New(e.stderr, "recall", "bytes", total)
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
	if c.JSON {
		if err := printJSON(e, sum); err != nil {
			return err
		}
	} else if c.Wait {
		fmt.Fprintf(e.stdout, "recalled %d files (%s) in %.1fs\n", sum.Files-len(sum.Failed), progress.Bytes(sum.Bytes), sum.Seconds)
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
