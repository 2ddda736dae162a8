package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	// --from-list: the stubs in the order they were recalled, and the
	// listed paths that do not exist.
	Order   []interceptor.RecallFile `json:"order,omitempty"`
	Missing []string                 `json:"missing,omitempty"`
}

type recallCmd struct {
	Wait     bool     `help:"Read every stub now and return when all are back (progress on stderr)."`
	JSON     bool     `name:"json" help:"Print JSON."`
	FromList string   `name:"from-list" placeholder:"FILE" complete:"file" help:"Recall the paths listed in FILE (one a line; - for stdin) in tape and object order, for bulk jobs."`
	Paths    []string `arg:"" optional:"" name:"path" complete:"file" help:"Stubs or directories (recursively) to bring back."`
}

func (*recallCmd) Example() string { return "strata recall --wait /srv/projects/2019" }

// listBatch bounds the paths of one control request of --from-list (NATS
// messages are bounded; each path and its reply are a few hundred bytes).
const listBatch = 1000

func (c *recallCmd) Run(ctx context.Context, e *env, g *globals) error {
	if (c.FromList == "") == (len(c.Paths) == 0) {
		return fmt.Errorf("%w: recall: give paths or --from-list FILE, one of the two (see strata recall --help)", errUsage)
	}
	var sum recallSummary
	var rep interceptor.RecallReply
	start := time.Now()
	if c.FromList != "" {
		listed, err := readList(c.FromList)
		if err != nil {
			return err
		}
		// Where every stub is read from, batch by batch; then one order
		// for the whole list, and the prefetch requests in that order.
		for b := range slices.Chunk(listed, listBatch) {
			var part interceptor.RecallReply
			if err := request(ctx, g.dataDir(), "recall", interceptor.RecallRequest{Paths: b, Ordered: true}, &part, 10*time.Minute); err != nil {
				return err
			}
			rep.Stubs, rep.Missing = append(rep.Stubs, part.Stubs...), append(rep.Missing, part.Missing...)
		}
		rep.Stubs = interceptor.OrderRecalls(rep.Stubs)
		sum.Order, sum.Missing = rep.Stubs, rep.Missing
		if !c.Wait {
			for b := range slices.Chunk(rep.Stubs, listBatch) {
				var paths []string
				for _, f := range b {
					paths = append(paths, f.Path)
				}
				if err := request(ctx, g.dataDir(), "recall", interceptor.RecallRequest{Paths: paths, Background: true}, nil, 10*time.Minute); err != nil {
					return err
				}
			}
		}
	} else {
		paths, err := absPaths(c.Paths)
		if err != nil {
			return err
		}
		if err := request(ctx, g.dataDir(), "recall", interceptor.RecallRequest{Paths: paths, Background: !c.Wait}, &rep, 10*time.Minute); err != nil {
			return err
		}
	}
	sum.Files = len(rep.Stubs)
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
	for _, m := range sum.Missing {
		fmt.Fprintln(e.stderr, "missing:", m)
	}
	if len(sum.Failed) > 0 {
		for _, f := range sum.Failed {
			fmt.Fprintln(e.stderr, "failed:", f)
		}
		return fmt.Errorf("recall: %d of %d files failed", len(sum.Failed), sum.Files)
	}
	if len(sum.Missing) > 0 {
		return fmt.Errorf("recall: %d listed paths do not exist", len(sum.Missing))
	}
	return nil
}

// readList reads the paths of a --from-list file (one a line, made
// absolute; empty lines are skipped). "-" is stdin.
func readList(name string) ([]string, error) {
	var r io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("recall: %w", err)
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" {
			continue
		}
		p, err := filepath.Abs(line)
		if err != nil {
			return nil, fmt.Errorf("recall: %s: %w", line, err)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("recall: read %s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("recall: %s lists no path", name)
	}
	return out, nil
}
