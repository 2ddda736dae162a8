package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stub"
)

// walkStubs walks every hot tree — ignoring the policy's includes,
// excludes and pins, which say what to archive, not where stubs may be —
// and returns every stub it meets (file id → path). complete is false when
// some directory could not be read: then the absence of a stub proves
// nothing.
func (d *daemon) walkStubs(ctx context.Context) (stubs map[string]string, complete bool, err error) {
	roots := d.hotRoots()
	if len(roots) == 0 {
		return map[string]string{}, true, nil
	}
	p := scanner.Policy{Roots: roots, DataDir: d.cfg.DataDir, MinSize: math.MaxInt64}
	for _, h := range d.cfg.Hot {
		p.CrossFilesystems = p.CrossFilesystems || h.CrossMounts
	}
	var mu sync.Mutex
	stubs = map[string]string{}
	p.OnStub = func(path string, info stub.Info) {
		mu.Lock()
		stubs[info.FileID] = path
		mu.Unlock()
	}
	p.EnsureDefaults()
	sum, err := scanner.Scan(ctx, p, time.Now(), func(scanner.Candidate) error { return nil })
	if err != nil {
		return nil, false, err
	}
	return stubs, sum.Errors == 0, nil
}

// markFoundStubs marks every stub on disk, wherever it is now: a stub
// renamed while the daemon was down is not where the catalog says, and
// must be guarded all the same.
func (d *daemon) markFoundStubs(ctx context.Context, s *stages) (map[string]string, bool, error) {
	found, complete, err := d.walkStubs(ctx)
	if err != nil {
		return nil, false, err
	}
	for id, path := range found {
		// Only a file with holes needs the guard. One whose xattrs say
		// released but that still holds its data is a release cut short:
		// its bytes are all there, and the redelivered release will mark
		// it (marking it here would make the release's verification reads
		// look like a recall).
		if holes, err := hasHole(path); err != nil || !holes {
			continue
		}
		if err := s.interceptor.Mark(path); err != nil {
			return nil, false, fmt.Errorf("mark stub %s (file %s): %w", path, id, err)
		}
	}
	return found, complete, nil
}

// hasHole reports whether the regular file at path has a hole below its
// size. Not its block count: a stub of a few bytes can own more blocks
// than its size (those holding its xattrs) and still be all hole.
func hasHole(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, err
	}
	h, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
	if err != nil {
		return false, err
	}
	return h < st.Size, nil
}

// reconcileStubs runs after every scan. It marks every stub on disk (a
// renamed stub keeps its guard), publishes file.moved for stubs found at
// a new path (the catalog's path, and the exported map, stay true), and
// publishes file.deleted for stubs the
// catalog knows that are nowhere in the hot trees any more (their objects
// stay, for retention to decide). A deletion must never be recorded for a
// stub that still exists — a deleted file's objects can be pruned — so a
// stub counts as gone only when two complete walks in a row missed it and
// its last known path holds no stub with its id.
func (d *daemon) reconcileStubs(ctx context.Context) {
	found, complete, err := d.markFoundStubs(ctx, d.stages)
	if err != nil {
		d.logger.Error("reconcile stubs: walk the hot trees", "err", err)
		return
	}
	if !complete {
		d.logger.Warn("reconcile stubs: some directories could not be read; not looking for deleted stubs this time")
		return
	}
	d.reconcile.Lock()
	defer d.reconcile.Unlock()
	prev := d.reconcile.missing
	next := map[string]bool{}
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "scanner")
	err = d.cat.Stubs(func(f catalog.File) error {
		if !d.inHotTree(f.Path) {
			return nil
		}
		if p, ok := found[f.ID]; ok {
			if p == f.Path {
				return nil
			}
			if info, err := stub.ReadPath(f.Path); err == nil && info.FileID == f.ID {
				return nil // a second hard link; the recorded one still holds
			}
			d.logger.Info("stub moved", "from", f.Path, "path", p, "file_id", f.ID)
			_, err := em.Emit(ctx, &events.FileMoved{FileID: f.ID, Path: p, From: f.Path}, f.ID, p, fmt.Sprint(f.Seq))
			return err
		}
		if info, err := stub.ReadPath(f.Path); err == nil && info.FileID == f.ID {
			return nil // released after the walk passed its directory
		}
		if !prev[f.ID] {
			next[f.ID] = true
			return nil
		}
		d.logger.Info("stub deleted", "path", f.Path, "file_id", f.ID, "object", f.ObjectID)
		_, err := em.Emit(ctx, &events.FileDeleted{FileID: f.ID, Path: f.Path}, f.ID, fmt.Sprint(f.Seq))
		return err
	})
	if err != nil {
		d.logger.Error("reconcile stubs with the catalog", "err", err)
	}
	d.reconcile.missing = next
	d.findModified(ctx, em)
}

// findModified publishes file.modified for archived-clean files whose size
// or mtime no longer match what their xattrs recorded when they were
// archived (a recall keeps mtime, so only a write moves it): they are dirty
// until the policy archives them again, as a new version.
func (d *daemon) findModified(ctx context.Context, em *pipeline.Emitter) {
	for _, root := range d.hotRoots() {
		err := d.cat.Files(root, func(f catalog.File) error {
			if f.State != catalog.StateArchived {
				return nil
			}
			info, err := stub.ReadPath(f.Path)
			if err != nil || info.FileID != f.ID || info.State != stub.Archived {
				return nil
			}
			st, err := statOf(f.Path)
			if err != nil || (st.Size == info.Size && st.MtimeNS == info.MtimeNS) {
				return nil
			}
			d.logger.Info("archived file modified", "path", f.Path, "file_id", f.ID)
			_, err = em.Emit(ctx, &events.FileModified{FileID: f.ID, Path: f.Path, ObjectID: f.ObjectID, Stat: st},
				f.ID, fmt.Sprint(st.Size), fmt.Sprint(st.MtimeNS), fmt.Sprint(st.CtimeNS))
			return err
		})
		if err != nil {
			d.logger.Error("look for modified archived files", "root", root, "err", err)
		}
	}
}
