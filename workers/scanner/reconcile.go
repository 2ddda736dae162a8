package scanner

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// FindStubs walks every hot tree of p — ignoring its includes, excludes
// and pins, which say what to archive, not where stubs may be — and
// returns every stub it meets (file id → path). complete is false when
// some directory could not be read: then the absence of a stub proves
// nothing.
func FindStubs(ctx context.Context, p Policy) (stubs map[string]string, complete bool, err error) {
	if len(p.Roots) == 0 {
		return map[string]string{}, true, nil
	}
	walk := Policy{Roots: p.Roots, DataDir: p.DataDir, MinSize: math.MaxInt64, CrossFilesystems: p.CrossFilesystems}
	var mu sync.Mutex
	stubs = map[string]string{}
	walk.OnStub = func(path string, info stub.Info) {
		mu.Lock()
		stubs[info.FileID] = path
		mu.Unlock()
	}
	walk.EnsureDefaults()
	sum, err := Scan(ctx, walk, time.Now(), func(Candidate) error { return nil })
	if err != nil {
		return nil, false, err
	}
	return stubs, sum.Errors == 0, nil
}

// reconcileCatalog is what reconciling reads of the catalog.
type reconcileCatalog interface {
	Stubs(fn func(catalog.File) error) error
	Files(prefix string, fn func(catalog.File) error) error
}

// stubMarker guards stubs: the interceptor. MarkFound marks every stub of
// found (file id → path) that still has holes.
type stubMarker interface {
	MarkFound(found map[string]string) error
}

// Reconciler runs after every scan. It marks every stub on disk (a stub
// renamed while the daemon was down keeps its guard), publishes
// file.moved for stubs found at a new path (the catalog's path, and the
// exported map, stay true), file.deleted for stubs the catalog knows that
// are nowhere in the hot trees any more (their objects stay, for
// retention to decide), and file.modified for archived-clean files that
// were written since they were archived.
//
// A deletion must never be recorded for a stub that still exists — a
// deleted file's objects can be pruned — so a stub counts as gone only
// when two complete walks in a row missed it and its last known path
// holds no stub with its id.
type Reconciler struct {
	Policy  Policy // its Roots are the hot trees
	Catalog reconcileCatalog
	Marker  stubMarker
	Emitter *pipeline.Emitter
	Logger  *slog.Logger

	mu      sync.Mutex
	missing map[string]bool // stubs the last complete walk missed
}

// Run reconciles once.
func (r *Reconciler) Run(ctx context.Context) {
	found, complete, err := FindStubs(ctx, r.Policy)
	if err == nil {
		err = r.Marker.MarkFound(found)
	}
	if err != nil {
		r.Logger.Error("reconcile stubs: walk the hot trees", "err", err)
		return
	}
	if !complete {
		r.Logger.Warn("reconcile stubs: some directories could not be read; not looking for deleted stubs this time")
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.missing
	next := map[string]bool{}
	err = r.Catalog.Stubs(func(f catalog.File) error {
		if !r.Policy.inRoots(f.Path) {
			return nil
		}
		if p, ok := found[f.ID]; ok {
			if p == f.Path {
				return nil
			}
			if info, err := stub.ReadPath(f.Path); err == nil && info.FileID == f.ID {
				return nil // a second hard link; the recorded one still holds
			}
			r.Logger.Info("stub moved", "from", f.Path, "path", p, "file_id", f.ID)
			_, err := r.Emitter.Emit(ctx, &events.FileMoved{FileID: f.ID, Path: p, From: f.Path}, f.ID, p, fmt.Sprint(f.Seq))
			return err
		}
		if info, err := stub.ReadPath(f.Path); err == nil && info.FileID == f.ID {
			return nil // released after the walk passed its directory
		}
		if !prev[f.ID] {
			next[f.ID] = true
			return nil
		}
		r.Logger.Info("stub deleted", "path", f.Path, "file_id", f.ID, "object", f.ObjectID)
		_, err := r.Emitter.Emit(ctx, &events.FileDeleted{FileID: f.ID, Path: f.Path}, f.ID, fmt.Sprint(f.Seq))
		return err
	})
	if err != nil {
		r.Logger.Error("reconcile stubs with the catalog", "err", err)
	}
	r.missing = next
	r.findModified(ctx)
}

// findModified publishes file.modified for archived-clean files whose size
// or mtime no longer match what their xattrs recorded when they were
// archived (a recall keeps mtime, so only a write moves it): they are dirty
// until the policy archives them again, as a new version.
func (r *Reconciler) findModified(ctx context.Context) {
	for _, root := range r.Policy.Roots {
		err := r.Catalog.Files(root, func(f catalog.File) error {
			if f.State != catalog.StateArchived {
				return nil
			}
			info, err := stub.ReadPath(f.Path)
			if err != nil || info.FileID != f.ID || info.State != stub.Archived {
				return nil
			}
			st, err := stub.Lstat(f.Path)
			if err != nil || info.Unchanged(st.Size, st.MtimeNS) {
				return nil
			}
			r.Logger.Info("archived file modified", "path", f.Path, "file_id", f.ID)
			ev, id := stub.Modified(f.ID, f.ObjectID, f.Path, st)
			_, err = r.Emitter.Emit(ctx, ev, id...)
			return err
		})
		if err != nil {
			r.Logger.Error("look for modified archived files", "root", root, "err", err)
		}
	}
}
