package recall

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// RestoreRequest is the control verb "restore": write one archived version
// of a file to a new path.
type RestoreRequest struct {
	Path    string `json:"path"`
	FileID  string `json:"file_id"`
	Version uint32 `json:"version"` // 0: the latest
	To      string `json:"to"`
}

// RestoreReply says what was restored.
type RestoreReply struct {
	To       string `json:"to"`
	Version  uint32 `json:"version"`
	ObjectID string `json:"object_id"`
	Bytes    int64  `json:"bytes"`
	Tier     string `json:"tier"`
}

// restoreCatalog is what a restore reads of the catalog.
type restoreCatalog interface {
	File(fileID string) (catalog.File, error)
	FileByPath(path string) (catalog.File, error)
	Versions(fileID string) ([]catalog.Version, error)
}

// RestoreVerb answers "restore": the version is written to a temporary
// file beside To, verified as a whole (WriteTo), fsynced, given the mode,
// owner and times it had when it was archived, and renamed to To, which
// must not exist (it is never overwritten).
func RestoreVerb(r *Reader, cat restoreCatalog) pipeline.ControlHandler {
	return pipeline.Verb("restore", func(ctx context.Context, req RestoreRequest) (any, error) {
		return r.restore(ctx, cat, req)
	})
}

func (r *Reader) restore(ctx context.Context, cat restoreCatalog, req RestoreRequest) (RestoreReply, error) {
	if !filepath.IsAbs(req.To) {
		return RestoreReply{}, errors.New("restore: --to must be an absolute path")
	}
	if _, err := os.Lstat(req.To); err == nil {
		return RestoreReply{}, fmt.Errorf("restore: %s already exists; choose another --to", req.To)
	}
	var f catalog.File
	var err error
	switch {
	case req.FileID != "":
		f, err = cat.File(req.FileID)
	case req.Path == "":
		return RestoreReply{}, errors.New("restore: give a path or a file id")
	default:
		f, err = stub.Find(cat, req.Path)
		if errors.Is(err, os.ErrNotExist) {
			f, err = cat.FileByPath(req.Path) // a deleted file, by its last path
		}
	}
	if err != nil {
		return RestoreReply{}, fmt.Errorf("restore: %s%s: %w", req.Path, req.FileID, err)
	}
	vs, err := cat.Versions(f.ID)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return RestoreReply{}, err
	}
	if len(vs) == 0 {
		return RestoreReply{}, fmt.Errorf("restore: %s has no archived version", f.Path)
	}
	v := vs[len(vs)-1]
	if req.Version != 0 {
		found := false
		for _, x := range vs {
			if x.Number == req.Version {
				v, found = x, true
			}
		}
		if !found {
			return RestoreReply{}, fmt.Errorf("restore: %s has versions 1 to %d, not %d", f.Path, vs[len(vs)-1].Number, req.Version)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(req.To), "."+filepath.Base(req.To)+".restore-*")
	if err != nil {
		return RestoreReply{}, fmt.Errorf("restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	servedBy, n, err := r.WriteTo(ctx, v.ObjectID, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return RestoreReply{}, fmt.Errorf("restore %s version %d: %w", f.Path, v.Number, err)
	}
	st := v.Stat
	_ = os.Chown(tmp.Name(), int(st.UID), int(st.GID))
	if err := os.Chmod(tmp.Name(), os.FileMode(st.Mode&0o7777)); err != nil {
		return RestoreReply{}, err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(st.AtimeNS), unix.NsecToTimespec(st.MtimeNS)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp.Name(), ts, 0); err != nil {
		return RestoreReply{}, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, req.To, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return RestoreReply{}, fmt.Errorf("restore: %s appeared meanwhile; not overwriting it", req.To)
		}
		return RestoreReply{}, err
	}
	if err := syncDir(filepath.Dir(req.To)); err != nil {
		return RestoreReply{}, err
	}
	return RestoreReply{To: req.To, Version: v.Number, ObjectID: v.ObjectID, Bytes: n, Tier: servedBy}, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
