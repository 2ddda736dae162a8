package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/stub"
)

type recallRequest struct {
	Paths      []string `json:"paths"`
	Background bool     `json:"background"`
}

type recallFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

type recallReply struct {
	Stubs []recallFile `json:"stubs"`
}

// ctlRecall records a prefetch of every stub under the paths and, in the
// background mode, reads them (which makes the interceptor fill them).
func (d *daemon) ctlRecall(ctx context.Context, raw []byte) (any, error) {
	var req recallRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("recall: bad request: %w", err)
	}
	rep := recallReply{Stubs: []recallFile{}}
	type todo struct {
		path string
		info stub.Info
	}
	var stubs []todo
	for _, p := range req.Paths {
		if d.hotRootOf(p) == "" {
			return nil, fmt.Errorf("recall: %s is not inside a configured hot tree", p)
		}
		err := filepath.WalkDir(p, func(path string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return err
			}
			info, err := stub.ReadPath(path)
			if err == nil && info.State == stub.Released {
				stubs = append(stubs, todo{path, info})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("recall: %w", err)
		}
	}
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "recall")
	for _, s := range stubs {
		if _, err := em.Emit(ctx, &events.RecallRequested{FileID: s.info.FileID, Path: s.path, ObjectID: s.info.ObjectID,
			Length: s.info.Size, Reason: events.RecallPrefetch}, s.info.FileID, fmt.Sprint(time.Now().UnixNano())); err != nil {
			return nil, err
		}
		rep.Stubs = append(rep.Stubs, recallFile{Path: s.path, Size: s.info.Size})
	}
	if req.Background {
		files := rep.Stubs
		go func() {
			for _, f := range files {
				if _, err := readAll(context.Background(), f.Path, nil); err != nil {
					d.logger.Warn("prefetch failed", "path", f.Path, "err", err)
				}
			}
		}()
	}
	return rep, nil
}

// readAll reads a file to the end in large chunks (a stub is filled by the
// interceptor as the reads arrive), reporting progress.
func readAll(ctx context.Context, path string, progress func(n int64)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	var total int64
	for ctx.Err() == nil {
		n, err := f.Read(buf)
		total += int64(n)
		if progress != nil {
			progress(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, ctx.Err()
}

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
	var rep recallReply
	if err := request(ctx, *data, "recall", recallRequest{Paths: paths, Background: !*wait}, &rep, 10*time.Minute); err != nil {
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
			n, err := readAll(ctx, f.Path, func(n int64) {
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
