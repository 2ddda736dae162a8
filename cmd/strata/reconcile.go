package main

import (
	"context"
	"fmt"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// reconcileStubs runs after every complete scan with the stubs the walk met
// (file id → path). A stub the catalog knows that is nowhere in the hot
// trees was deleted: file.deleted is published (its objects stay, for
// retention to decide). Renames must never be taken for deletions — a
// deleted file's objects can be pruned — so a stub counts as gone only
// when two scans in a row missed it and its last known path holds no stub
// with its file id.
func (d *daemon) reconcileStubs(ctx context.Context, seen map[string]string) {
	d.reconcile.Lock()
	defer d.reconcile.Unlock()
	prev := d.reconcile.missing
	next := map[string]bool{}
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "scanner")
	err := d.cat.Stubs(func(f catalog.File) error {
		if !d.inHotTree(f.Path) {
			return nil
		}
		if _, ok := seen[f.ID]; ok {
			return nil
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
}
