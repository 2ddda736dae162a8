package releaser

// The releaser stage (durable "releaser"):
//
//	consumes  strata.*.object.stored (a copy on any host's tier)
//	          strata.<host>.object.packed (an object already stored everywhere)
//	          strata.*.object.store_failed (a tier gave up: maybe never enough copies)
//	emits     strata.<host>.file.released          the file is a stub
//	          strata.<host>.file.release_skipped   changed, busy or refused: it stays hot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier"
)

// StageName is the durable consumer of the releaser stage.
const StageName = "releaser"

// FailBeforePublish is the failpoint between a finished release (hole
// punched, times restored) and the publication of file.released.
var FailBeforePublish = failpoint.Define("release.before-publish", "hole punched and times restored, file.released not yet published")

// catalogView is what the releaser reads from the catalog.
type catalogView interface {
	WaitSeq(ctx context.Context, seq uint64) error
	FilesByObject(objectID string) ([]catalog.File, error)
	Copies(objectID string) ([]catalog.Copy, error)
	Versions(fileID string) ([]catalog.Version, error)
	StoreFailures(objectID string) ([]catalog.StoreFailure, error)
}

// StageConfig wires the releaser to the event log and the catalog.
type StageConfig struct {
	Catalog catalogView
	Emitter *pipeline.Emitter
	// Roots are this host's hot trees.
	Roots []string
	// Copies is how many good copies, on tiers in CountingTiers, must exist
	// before a file is released.
	Copies        int
	CountingTiers []string
	// Draining tiers' copies do not count (strata tier drain).
	Draining *tier.Draining
	// AllTiers are every configured tier: once each has a good copy, the
	// staged object is removed.
	AllTiers []string
	// StagingDir holds staged objects (<id>.zst and <id>.json).
	StagingDir string
	// Mark puts the interceptor's mark on a file before its hole is
	// punched.
	Mark   func(path string) error
	Unhold func(path string)  // see Request.Unhold
	Guard  func(fd int) error // see Request.Guard
	// ResidentHead and ResidentTail: see Request (release.resident_head,
	// release.resident_tail).
	ResidentHead, ResidentTail int64
	Failpoints                 failpoint.Set
	Logger                     *slog.Logger
}

// Stage returns the releaser stage. It wakes on every object.stored (from
// any host: a tape box may hold a copy) and on this host's object.packed
// (an object already stored everywhere), and releases each file of that
// object that is being archived once enough verified copies exist. It reads
// the catalog only after the catalog has applied the event it handles.
// When a tier gives up on an object (object.store_failed, permanent) and
// the tiers left cannot make up release.copies, the object's files are
// skipped, saying which tier gave up and why, rather than left archiving
// for ever.
func Stage(cfg StageConfig) pipeline.Stage {
	h := &releaseHandler{cfg: cfg}
	return pipeline.Stage{
		Name: StageName,
		Filter: []string{
			events.Subject(events.AnyHost, events.KindObjectStored),
			events.Subject(cfg.Emitter.Host(), events.KindObjectPacked),
			events.Subject(events.AnyHost, events.KindObjectStoreFailed),
		},
		Concurrency: 1, // one release at a time: releases of one file never race
		Handle:      h.dispatch,
	}
}

func (h *releaseHandler) dispatch(ctx context.Context, env events.Envelope, ev events.Event) error {
	switch x := ev.(type) {
	case *events.ObjectStored, *events.ObjectPacked:
		return h.handle(ctx, env, ev)
	case *events.ObjectStoreFailed:
		if !x.Permanent {
			return nil // the store stage retries: the copy may still come
		}
		return h.givenUp(ctx, env, x)
	}
	return pipeline.Permanent(fmt.Errorf("%s: unexpected event %s", StageName, env.Type))
}

// givenUp skips the files of an object that can no longer get enough
// copies: a tier gave up on it, and the counting tiers that have a good
// copy or may still store one are fewer than release.copies.
func (h *releaseHandler) givenUp(ctx context.Context, env events.Envelope, ev *events.ObjectStoreFailed) error {
	if err := h.cfg.Catalog.WaitSeq(ctx, env.Seq); err != nil {
		return err
	}
	copies, err := h.cfg.Catalog.Copies(ev.ObjectID)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return err
	}
	failures, err := h.cfg.Catalog.StoreFailures(ev.ObjectID)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return err
	}
	gaveUp := map[string]bool{}
	for _, f := range failures {
		if f.Permanent {
			gaveUp[f.Tier] = true
		}
	}
	good, _ := h.count(copies)
	hasGood := map[string]bool{}
	for _, c := range copies {
		if c.State == catalog.CopyGood {
			hasGood[c.Tier] = true
		}
	}
	counting := h.cfg.CountingTiers
	if len(counting) == 0 {
		counting = h.cfg.AllTiers
	}
	possible := good
	for _, t := range counting {
		if !hasGood[t] && !gaveUp[t] && !h.cfg.Draining.Has(t) {
			possible++
		}
	}
	if possible >= h.cfg.Copies {
		return nil
	}
	files, err := h.cfg.Catalog.FilesByObject(ev.ObjectID)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return err
	}
	reason := fmt.Sprintf("cannot have the %d verified copies release.copies asks for: tier %s gave up: %s", h.cfg.Copies, ev.Tier, ev.Reason)
	for _, f := range files {
		if f.State != catalog.StateArchiving || f.ObjectID != ev.ObjectID || !h.mine(f) {
			continue
		}
		h.cfg.Logger.Warn("release skipped", "path", f.Path, "reason", reason)
		if _, err := h.cfg.Emitter.Emit(ctx, &events.FileReleaseSkipped{FileID: f.ID, Path: f.Path, ObjectID: f.ObjectID, Reason: reason},
			f.ID, f.ObjectID, env.ID); err != nil {
			return err
		}
	}
	return nil
}

type releaseHandler struct {
	cfg StageConfig
}

func (h *releaseHandler) handle(ctx context.Context, env events.Envelope, ev events.Event) error {
	oid := ev.Entity() // the object both event types name
	if err := h.cfg.Catalog.WaitSeq(ctx, env.Seq); err != nil {
		return err
	}
	copies, err := h.cfg.Catalog.Copies(oid)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return err
	}
	good, everywhere := h.count(copies)
	busy := 0
	if good >= h.cfg.Copies {
		files, err := h.cfg.Catalog.FilesByObject(oid)
		if err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return err
		}
		for _, f := range files {
			if f.State != catalog.StateArchiving || f.ObjectID != oid || !h.mine(f) {
				continue
			}
			err := h.release(ctx, env, f, good)
			if errors.Is(err, errTryAgain) {
				busy++
				continue
			}
			if err != nil {
				return err
			}
		}
	}
	if everywhere {
		h.removeStaged(oid)
	}
	if busy > 0 {
		// Retried after the stage's backoff, while other objects go on.
		return fmt.Errorf("releaser: %d file(s) of object %s open by another process: %w", busy, oid, errTryAgain)
	}
	return nil
}

// count returns the good copies on counting tiers, and whether every
// configured tier has a good copy.
func (h *releaseHandler) count(copies []catalog.Copy) (int, bool) {
	good := map[string]bool{}
	for _, c := range copies {
		if c.State == catalog.CopyGood {
			good[c.Tier] = true
		}
	}
	n := 0
	for t := range good {
		if (len(h.cfg.CountingTiers) == 0 || contains(h.cfg.CountingTiers, t)) && !h.cfg.Draining.Has(t) {
			n++
		}
	}
	all := len(h.cfg.AllTiers) > 0
	for _, t := range h.cfg.AllTiers {
		all = all && good[t]
	}
	return n, all
}

func (h *releaseHandler) release(ctx context.Context, env events.Envelope, f catalog.File, copies int) error {
	expect, err := h.packedStat(f)
	if err != nil {
		return err
	}
	if !expect.SameContent(f.Stat) {
		// The file was selected again since this object was packed for it
		// (a file with the same content as another, or the file itself
		// after a recall moved its ctime), and that selection is not
		// packed yet. Its own object.packed, later in the log, releases it
		// against the stat it is read with; held to the old packing's
		// stat now, it would be skipped as changed although nobody
		// touched it (found by the soak).
		h.cfg.Logger.Debug("selected again and not packed yet; released by its own packing", "path", f.Path, "object", f.ObjectID)
		return nil
	}
	req := Request{
		Path: f.Path, FileID: f.ID, ObjectID: f.ObjectID, Expect: expect, Reread: true,
		ReleaseID: strconv.FormatUint(env.Seq, 10),
		Roots:     h.cfg.Roots, Mark: h.cfg.Mark, Unhold: h.cfg.Unhold, Guard: h.cfg.Guard, Failpoints: h.cfg.Failpoints,
		ResidentHead: h.cfg.ResidentHead, ResidentTail: h.cfg.ResidentTail,
	}
	res, err := Release(ctx, req)
	if errors.Is(err, ErrBusy) && !errors.Is(err, ErrOpenedDuring) && pipeline.Deliveries(ctx) < busyTries {
		// A file is often open for a moment only (the scanner reading its
		// inode generation, a backup tool, an editor saving): the message
		// comes back after the stage's backoff (1 s, then 5 s) before the
		// file is left to a later scan.
		h.cfg.Logger.Info("file open by another process; trying again", "path", f.Path, "delivery", pipeline.Deliveries(ctx))
		return errTryAgain
	}
	if err != nil {
		reason := skipReason(err)
		if reason == "" && errors.Is(err, fs.ErrPermission) && !isStub(f.Path) {
			// Not ours to write (immutable, append-only, a read-only
			// mount): a retry will not help, and since the xattrs do not
			// say released nothing was punched.
			reason = "not writable (immutable, append-only or read-only?): " + err.Error()
		}
		if reason != "" {
			h.cfg.Logger.Info("release skipped", "path", f.Path, "reason", reason)
			_, perr := h.cfg.Emitter.Emit(ctx, &events.FileReleaseSkipped{FileID: f.ID, Path: f.Path, ObjectID: f.ObjectID, Reason: reason},
				f.ID, f.ObjectID, env.ID)
			return perr
		}
		return fmt.Errorf("release %s: %w", f.Path, err)
	}
	h.cfg.Failpoints.Hit(FailBeforePublish)
	h.cfg.Logger.Info("released", "path", f.Path, "object", f.ObjectID, "freed", res.Freed(), "copies", copies)
	_, err = h.cfg.Emitter.Emit(ctx, &events.FileReleased{FileID: f.ID, Path: f.Path, ObjectID: f.ObjectID, Stat: res.Stat, Copies: copies},
		f.ID, f.ObjectID, env.ID)
	return err
}

// packedStat is the file as the compressor read it for this object: what
// the file must still be for its release to be safe.
func (h *releaseHandler) packedStat(f catalog.File) (events.FileStat, error) {
	vs, err := h.cfg.Catalog.Versions(f.ID)
	if err != nil {
		return events.FileStat{}, err
	}
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].ObjectID == f.ObjectID {
			return vs[i].Stat, nil
		}
	}
	return events.FileStat{}, fmt.Errorf("release %s: catalog has no version with object %s", f.Path, f.ObjectID)
}

// busyTries is how many deliveries of a message try to release a file that
// another process has open before it is skipped.
const busyTries = 3

// errTryAgain: a file of the object was open by another process; the
// message is retried.
var errTryAgain = errors.New("will try again")

// skipReason names why a file is not released now, or "" to retry.
func skipReason(err error) string {
	switch {
	case errors.Is(err, ErrChanged):
		return "changed since it was read: " + err.Error()
	case errors.Is(err, ErrBusy):
		return "open by another process; will retry on a later scan"
	case errors.Is(err, ErrOutsideRoot), errors.Is(err, ErrNotRegular), errors.Is(err, ErrUnsupportedFS):
		return err.Error()
	}
	return ""
}

// isStub reports whether the xattrs of path say released (or cannot be
// read: then assume they might).
func isStub(path string) bool {
	info, err := stub.ReadPath(path)
	if errors.Is(err, stub.ErrNotManaged) || errors.Is(err, stub.ErrNoXattr) {
		return false
	}
	return err != nil || info.State == stub.Released
}

// mine reports whether f is a file of this host's hot trees: every host's
// catalog holds every host's files, and another host may have the same
// path.
func (h *releaseHandler) mine(f catalog.File) bool {
	return f.Host == h.cfg.Emitter.Host() && h.inRoots(f.Path)
}

func (h *releaseHandler) inRoots(p string) bool {
	for _, r := range h.cfg.Roots {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// removeStaged deletes a staged object that every tier now holds.
func (h *releaseHandler) removeStaged(oid string) {
	if h.cfg.StagingDir == "" {
		return
	}
	for _, ext := range []string{".zst", ".json"} {
		p := filepath.Join(h.cfg.StagingDir, oid+ext)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.cfg.Logger.Warn("remove staged object", "path", p, "err", err)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
