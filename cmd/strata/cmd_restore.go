package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/projections/catalog"
)

type restoreRequest struct {
	Path    string `json:"path"`
	FileID  string `json:"file_id"`
	Version uint32 `json:"version"` // 0: the latest
	To      string `json:"to"`
}

type restoreReply struct {
	To       string `json:"to"`
	Version  uint32 `json:"version"`
	ObjectID string `json:"object_id"`
	Bytes    int64  `json:"bytes"`
	Tier     string `json:"tier"`
}

// ctlRestore writes one archived version of a file to a new path, verified,
// with the mode, owner and times it had when it was archived.
func (d *daemon) ctlRestore(ctx context.Context, raw []byte) (any, error) {
	var req restoreRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("restore: bad request: %w", err)
	}
	if !filepath.IsAbs(req.To) {
		return nil, fmt.Errorf("restore: --to must be an absolute path")
	}
	if _, err := os.Lstat(req.To); err == nil {
		return nil, fmt.Errorf("restore: %s already exists; choose another --to", req.To)
	}
	var f catalog.File
	var err error
	if req.FileID != "" {
		f, err = d.cat.File(req.FileID)
	} else {
		f, err = d.fileAt(req.Path)
		if errors.Is(err, os.ErrNotExist) {
			f, err = d.cat.FileByPath(req.Path) // restore a deleted file by its last path
		}
	}
	if err != nil {
		return nil, fmt.Errorf("restore: %s%s: %w", req.Path, req.FileID, err)
	}
	vs, err := d.cat.Versions(f.ID)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("restore: %s has no archived version", f.Path)
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
			return nil, fmt.Errorf("restore: %s has versions 1 to %d, not %d", f.Path, vs[len(vs)-1].Number, req.Version)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(req.To), "."+filepath.Base(req.To)+".restore-*")
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	tier, n, err := d.stages.reader.WriteTo(ctx, v.ObjectID, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("restore %s version %d: %w", f.Path, v.Number, err)
	}
	st := v.Stat
	_ = os.Chown(tmp.Name(), int(st.UID), int(st.GID))
	if err := os.Chmod(tmp.Name(), os.FileMode(st.Mode&0o7777)); err != nil {
		return nil, err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(st.AtimeNS), unix.NsecToTimespec(st.MtimeNS)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp.Name(), ts, 0); err != nil {
		return nil, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, req.To, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("restore: %s appeared meanwhile; not overwriting it", req.To)
		}
		return nil, err
	}
	if err := syncDir(filepath.Dir(req.To)); err != nil {
		return nil, err
	}
	return restoreReply{To: req.To, Version: v.Number, ObjectID: v.ObjectID, Bytes: n, Tier: tier}, nil
}

func cmdRestore(ctx context.Context, e *env, args []string) error {
	fs := newFlags("restore", "strata restore [--version N] [--json] [--data DIR] PATH --to DEST",
		"strata restore --version 2 /srv/projects/report.odt --to /tmp/report-v2.odt")
	data := dataDirFlag(fs)
	version := fs.Uint("version", 0, "version to restore (default: the latest); see strata ls --json")
	to := fs.String("to", "", "where to write it (must not exist)")
	fileID := fs.String("file-id", "", "identify the file by its id instead of PATH (e.g. a deleted file)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if *to == "" || (fs.NArg() != 1 && *fileID == "") {
		return fmt.Errorf("%w: restore needs PATH (or --file-id) and --to DEST", errUsage)
	}
	req := restoreRequest{FileID: *fileID, Version: uint32(*version)}
	if fs.NArg() == 1 {
		p, err := filepath.Abs(fs.Arg(0))
		if err != nil {
			return err
		}
		req.Path = p
	}
	dest, err := filepath.Abs(*to)
	if err != nil {
		return err
	}
	req.To = dest
	var rep restoreReply
	if err := request(ctx, *data, "restore", req, &rep, time.Hour); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, rep)
	}
	fmt.Fprintf(e.stdout, "restored version %d (%s, %s from %s) to %s\n", rep.Version, rep.ObjectID[:16], humanBytes(rep.Bytes), rep.Tier, rep.To)
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
