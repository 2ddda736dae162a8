package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

// Progress is told how far a replay has come: done of total sequences. It
// may be nil.
type Progress func(done, total uint64)

// CatchUp applies the log to c from its next sequence up to and including
// upTo. Reading and decoding (pipeline.FollowRecords) and applying (Pebble)
// run on different goroutines, so a replay uses two cores. It returns nil
// only once c.LastSeq() >= upTo.
func (c *Catalog) CatchUp(ctx context.Context, js jetstream.JetStream, upTo uint64, progress Progress) error {
	if c.LastSeq() >= upTo {
		return nil
	}
	type batch struct {
		envs []events.Envelope
		evs  []events.Event
	}
	ch := make(chan batch, 4)
	done := make(chan error, 1)
	go func() {
		var err error
		for b := range ch {
			if err == nil {
				err = c.ApplyDecoded(b.envs, b.evs)
				if progress != nil {
					progress(c.LastSeq(), upTo)
				}
			}
		}
		done <- err
	}()
	ferr := pipeline.FollowRecords(ctx, js, c.LastSeq()+1, pipeline.FollowOptions{Batch: 2000}, func(recs []pipeline.Record) error {
		b := batch{envs: make([]events.Envelope, 0, len(recs)), evs: make([]events.Event, 0, len(recs))}
		for _, r := range recs {
			if r.Seq > upTo {
				break
			}
			b.envs = append(b.envs, r.Envelope)
			b.evs = append(b.evs, r.Event)
		}
		if len(b.envs) > 0 {
			select {
			case ch <- b:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if len(b.envs) < len(recs) || b.envs[len(b.envs)-1].Seq >= upTo {
			return pipeline.ErrStop
		}
		return nil
	})
	close(ch)
	err := <-done
	if c.LastSeq() >= upTo {
		return nil
	}
	err = firstErr(err, ferr, ctx.Err())
	return fmt.Errorf("catalog catch-up stopped at seq %d of %d: %w", c.LastSeq(), upTo, err)
}

// firstErr is the first non-nil error, or one saying the log ended early.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return errors.New("the event log ended first")
}

// errPaused stops a follow while the catalog's filesystem is full.
var errPaused = errors.New("catalog: paused: out of space")

// Follow backoff after a failure that is not for lack of space.
const (
	followRetryMin = time.Second
	followRetryMax = 30 * time.Second
)

// Follow keeps c following the log, batch by batch, until ctx ends. It
// returns nil when ctx ends. Verify pauses it (see followMu).
//
// While the catalog's Space is full nothing is applied (the follow stops
// and waits for room); a write that fails for lack of space is reported
// to the Space, and a database that Failed is reopened once there is room,
// so the catalog resumes by itself where it stopped. Any other failure is
// logged (the first, then at most every pipeline.DefaultRemind) and the
// projection restarts where it stopped, after a backoff of 1s growing to
// 30s.
func (c *Catalog) Follow(ctx context.Context, js jetstream.JetStream, logger *slog.Logger) error {
	sp := c.opts.Space
	logEvery := every{period: pipeline.DefaultRemind}
	wait := followRetryMin
	for {
		if sp != nil {
			if err := sp.Wait(ctx); err != nil {
				return nil
			}
		}
		err := c.Reopen()
		if err == nil {
			err = pipeline.FollowRecords(ctx, js, c.LastSeq()+1, pipeline.FollowOptions{}, func(recs []pipeline.Record) error {
				if sp != nil && sp.Full() {
					return errPaused
				}
				envs := make([]events.Envelope, len(recs))
				evs := make([]events.Event, len(recs))
				for i, r := range recs {
					envs[i], evs[i] = r.Envelope, r.Event
				}
				c.followMu.Lock()
				defer c.followMu.Unlock()
				if err := c.ApplyDecoded(envs, evs); err != nil {
					return err
				}
				wait = followRetryMin
				return nil
			})
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errPaused) || (sp != nil && sp.Report(err)) {
			continue // the Space logs the condition; wait for room
		}
		if ok, missed := logEvery.allow(); ok {
			logger.Error("catalog projection stopped; restarting", "err", err, "seq", c.LastSeq(), "in", wait, "failures_since_last_line", missed)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, followRetryMax)
	}
}

// Rebuild builds a fresh catalog in dir (which must not exist) from stream
// sequence 1 up to and including upTo, and returns it open. Replay is
// deterministic: the result equals any other catalog that applied the same
// sequences (Diff finds nothing).
func Rebuild(ctx context.Context, js jetstream.JetStream, dir string, upTo uint64, opts Options, progress Progress) (*Catalog, error) {
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("rebuild catalog: %s already exists", dir)
	}
	cat, err := Open(dir, opts)
	if err != nil {
		return nil, err
	}
	if err := cat.CatchUp(ctx, js, upTo, progress); err != nil {
		cat.Close()
		return nil, fmt.Errorf("rebuild catalog: %w", err)
	}
	return cat, nil
}

// Verify rebuilds the catalog from the log, up to c's last sequence, in a
// temporary directory under tmpParent, and returns the first difference
// between the two ("" if none). The projection (Follow) is paused while it
// runs, so c stands still.
func (c *Catalog) Verify(ctx context.Context, js jetstream.JetStream, tmpParent string, progress Progress) (seq uint64, diff string, err error) {
	c.followMu.Lock()
	defer c.followMu.Unlock()
	tmp, err := os.MkdirTemp(tmpParent, "catalog.verify-")
	if err != nil {
		return 0, "", err
	}
	defer os.RemoveAll(tmp)
	seq = c.LastSeq()
	fresh, err := Rebuild(ctx, js, filepath.Join(tmp, "db"), seq, Options{Logger: c.log}, progress)
	if err != nil {
		return seq, "", err
	}
	defer fresh.Close()
	diff, err = Diff(c, fresh)
	return seq, diff, err
}

// The durable steps of Replace, in order (Options.ReplaceStep).
const (
	ReplaceRebuilt    = "rebuilt"     // the new catalog is complete beside dir; dir untouched
	ReplaceMovedAside = "moved-aside" // the old catalog renamed to dir.old; the new one not yet at dir
	ReplaceSwapped    = "swapped"     // the new catalog at dir; dir.old not yet removed
)

// Replace rebuilds the catalog of dir from the log (up to upTo) into a new
// directory beside it and swaps it in. A crash at any point leaves the old
// or the new catalog at dir, or the old one at dir.old for a moment, which
// the next Open (RecoverReplace) puts back; leftover directories are
// removed by the next Open or Replace. No catalog may be open on dir.
func Replace(ctx context.Context, js jetstream.JetStream, dir string, upTo uint64, opts Options, progress Progress) error {
	if err := RecoverReplace(dir); err != nil {
		return err
	}
	next, old := dir+".replay", dir+".old"
	step := func(s string) {
		if opts.ReplaceStep != nil {
			opts.ReplaceStep(s)
		}
	}
	cat, err := Rebuild(ctx, js, next, upTo, opts, progress)
	if err != nil {
		os.RemoveAll(next)
		return err
	}
	if err := cat.Close(); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	step(ReplaceRebuilt)
	if err := os.Rename(dir, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	step(ReplaceMovedAside)
	if err := os.Rename(next, dir); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	step(ReplaceSwapped)
	return os.RemoveAll(old)
}

// RecoverReplace finishes or undoes a Replace that a crash interrupted:
// with no catalog at dir but one at dir.old (killed between the two
// renames), it puts the old one back, which then catches up with the log
// like any catalog; then it removes dir.replay and dir.old. Open calls it.
func RecoverReplace(dir string) error {
	next, old := dir+".replay", dir+".old"
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(old); err == nil {
			if err := os.Rename(old, dir); err != nil {
				return fmt.Errorf("catalog: put back %s after an interrupted replay: %w", old, err)
			}
			if err := syncDir(filepath.Dir(dir)); err != nil {
				return err
			}
		}
	}
	for _, p := range []string{next, old} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("catalog: remove %s left by an interrupted replay: %w", p, err)
		}
	}
	return nil
}

// OpenOrRebuild opens the catalog in dir; one of another format version
// (ErrFormat: written by an older Strata) is rebuilt from the log first
// (Replace, up to the log's last sequence; the projection follows the
// rest), since the log alone is the truth and the catalog a projection.
func OpenOrRebuild(ctx context.Context, js jetstream.JetStream, dir string, opts Options) (*Catalog, error) {
	cat, err := Open(dir, opts)
	if !errors.Is(err, ErrFormat) {
		return cat, err
	}
	opts.EnsureDefaults()
	opts.Logger.Warn("catalog is of another format: rebuilding it from the event log", "dir", dir, "err", err)
	last, err := pipeline.LastSeq(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("rebuild catalog %s: %w", dir, err)
	}
	ropts := opts
	ropts.Sync = false // Replace syncs the directory swap; the tail is replayed again if lost
	if err := Replace(ctx, js, dir, last, ropts, nil); err != nil {
		return nil, fmt.Errorf("rebuild catalog %s of another format from the log: %w", dir, err)
	}
	return Open(dir, opts)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
