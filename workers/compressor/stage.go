package compressor

// The compressor stage (durable "compressor"):
//
//	consumes  strata.<host>.file.selected
//	emits     strata.<host>.object.packed          the file packed into staging (seekable zstd, BLAKE3)
//	          strata.<host>.file.release_skipped   the file changed, vanished or cannot be read

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/stub"
)

// StageName is the durable consumer of the compressor stage.
const StageName = "compressor"

// Failpoints of the compressor stage.
var (
	FailAfterPack    = failpoint.Define("compress.after-pack", "object staged, object.packed not yet published")
	FailAfterPublish = failpoint.Define("compress.after-publish", "object.packed published, message not yet acked")
)

// StageConfig wires the compressor to the event log.
type StageConfig struct {
	Compressor *Compressor
	Emitter    *pipeline.Emitter
	// Roots are this host's hot trees: a selection of a path outside them
	// is refused (dead-lettered), and a file is read only beneath its tree
	// (a symlink anywhere on its path is refused: package beneath).
	Roots      []string
	Failpoints failpoint.Set
	Logger     *slog.Logger
}

// Stage returns the compressor stage: it consumes this host's
// file.selected, packs each file into staging and publishes object.packed
// — or file.release_skipped when the file changed, vanished or cannot be
// read (it stays hot and may be selected again).
func Stage(cfg StageConfig) pipeline.Stage {
	h := &stageHandler{cfg: cfg}
	return pipeline.Stage{
		Name:   StageName,
		Filter: []string{events.Subject(cfg.Emitter.Host(), events.KindFileSelected)},
		// A large file already uses every core (its frames are compressed
		// in parallel); several small files at once keep the cores busy
		// while others wait on fsync.
		Concurrency: 4,
		Handle:      pipeline.Handle(StageName, h.handle),
	}
}

type stageHandler struct {
	cfg StageConfig
}

func (h *stageHandler) handle(ctx context.Context, env events.Envelope, sel *events.FileSelected) error {
	root := ""
	for _, r := range h.cfg.Roots {
		if _, err := beneath.Rel(r, sel.Path); err == nil && sel.Path != r {
			root = r
		}
	}
	if root == "" {
		return pipeline.Permanent(fmt.Errorf("compressor: %s is outside every configured hot tree; refusing to read it", sel.Path))
	}
	if info, err := stub.ReadPath(sel.Path); err == nil && info.State == stub.Released {
		// Selected twice and released in between: reading the stub would
		// recall it. Nothing to do.
		h.cfg.Logger.Debug("already a stub; not packing", "path", sel.Path)
		return nil
	}
	res, err := h.cfg.Compressor.Pack(ctx, root, sel.Path)
	if err != nil {
		reason := skipReason(err)
		if reason == "" {
			return fmt.Errorf("pack %s: %w", sel.Path, err) // retried with backoff (e.g. staging full)
		}
		h.cfg.Logger.Info("not archiving file", "path", sel.Path, "reason", reason)
		_, perr := h.cfg.Emitter.Emit(ctx, &events.FileReleaseSkipped{FileID: sel.FileID, Path: sel.Path, Reason: reason},
			sel.FileID, env.ID)
		return perr
	}
	h.cfg.Failpoints.Hit(FailAfterPack)
	packed := res.ObjectPacked(sel.FileID)
	packed.Path = sel.Path
	// The id names this selection (env.ID): a redelivery of it is
	// deduplicated, but a new selection of an unchanged file (after a
	// release was skipped, e.g. busy) publishes a new object.packed, which
	// wakes the releaser; without env.ID it would be dropped as a
	// duplicate for the whole dedup window and the file would stay
	// "archiving".
	if _, err := h.cfg.Emitter.Emit(ctx, packed, sel.FileID, res.ObjectID,
		strconv.FormatInt(res.Stat.MtimeNS, 10), strconv.FormatInt(res.Stat.CtimeNS, 10), env.ID); err != nil {
		return err
	}
	h.cfg.Failpoints.Hit(FailAfterPublish)
	h.cfg.Logger.Debug("packed", "path", sel.Path, "object", res.ObjectID, "size", res.Manifest.Size,
		"packed", res.Manifest.PackedSize, "dedup", res.Deduped)
	return nil
}

// skipReason names why a file cannot be archived now, or "" when the error
// is not about the file (retry).
func skipReason(err error) string {
	switch {
	case errors.Is(err, ErrChanged):
		return "changed while it was being read; it will be selected again"
	case errors.Is(err, ErrNotRegular):
		return "not a regular file"
	case errors.Is(err, fs.ErrNotExist):
		return "vanished before it could be read"
	case errors.Is(err, fs.ErrPermission):
		return "unreadable: " + err.Error()
	case errors.Is(err, beneath.ErrOutside):
		return "its path leaves the hot tree through a symlink: not read"
	}
	return ""
}
