package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// lsRequest asks for the state of files (directories recursively).
type lsRequest struct {
	Paths []string `json:"paths"`
	Limit int      `json:"limit"`
}

// lsEntry is one file as `strata ls` shows it.
type lsEntry struct {
	Path     string   `json:"path"`
	State    string   `json:"state"`
	Size     int64    `json:"size"`
	FileID   string   `json:"file_id,omitempty"`
	ObjectID string   `json:"object_id,omitempty"`
	Version  uint32   `json:"version,omitempty"`
	Copies   []string `json:"copies"`
}

type lsReply struct {
	Files     []lsEntry `json:"files"`
	Truncated bool      `json:"truncated,omitempty"`
}

const lsDefaultLimit = 100000 // about 200 bytes each: fits pipeline.MaxPayload

func (d *daemon) ctlLs(ctx context.Context, raw []byte) (any, error) {
	var req lsRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("ls: bad request: %w", err)
	}
	if req.Limit <= 0 || req.Limit > lsDefaultLimit {
		req.Limit = lsDefaultLimit
	}
	var rep lsReply
	errFull := errors.New("full")
	for _, p := range req.Paths {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("ls: %q is not an absolute path", p)
		}
		err := filepath.WalkDir(p, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !de.Type().IsRegular() {
				return nil
			}
			if len(rep.Files) >= req.Limit {
				rep.Truncated = true
				return errFull
			}
			fi, err := de.Info()
			if err != nil {
				return nil // vanished
			}
			rep.Files = append(rep.Files, d.lsEntry(path, fi.Size()))
			return nil
		})
		if errors.Is(err, errFull) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("ls: %w", err)
		}
	}
	return rep, nil
}

// lsEntry joins what the filesystem says with what the catalog knows.
func (d *daemon) lsEntry(path string, size int64) lsEntry {
	e := lsEntry{Path: path, State: catalog.StateResident.String(), Size: size, Copies: []string{}}
	f, err := stub.Find(d.cat, path)
	if err != nil || f.State == catalog.StateDeleted {
		return e
	}
	e.State, e.FileID, e.ObjectID, e.Version = f.State.String(), f.ID, f.ObjectID, f.Version
	if f.ObjectID != "" {
		if cps, err := d.cat.Copies(f.ObjectID); err == nil {
			for _, c := range cps {
				if c.State == catalog.CopyGood {
					e.Copies = append(e.Copies, c.Tier)
				}
			}
		}
	}
	return e
}

func cmdLs(ctx context.Context, e *env, args []string) error {
	fs := newFlags("ls", "strata ls [--json] [--data DIR] PATH...", "strata ls /srv/projects/2019")
	data := dataDirFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", lsDefaultLimit, "list at most this many files")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: ls needs at least one PATH", errUsage)
	}
	req := lsRequest{Limit: *limit}
	for _, p := range fs.Args() {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		req.Paths = append(req.Paths, abs)
	}
	var rep lsReply
	if err := request(ctx, *data, "ls", req, &rep, time.Minute); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, rep)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "STATE\tSIZE\tOBJECT\tCOPIES\tPATH")
	for _, f := range rep.Files {
		obj := "-"
		if f.ObjectID != "" {
			obj = f.ObjectID[:16]
		}
		copies := "-"
		if len(f.Copies) > 0 {
			copies = fmt.Sprint(len(f.Copies), " ", f.Copies)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", lsState(f.State), f.Size, obj, copies, f.Path)
	}
	if rep.Truncated {
		fmt.Fprintf(w, "… truncated at %d files (--limit)\n", len(rep.Files))
	}
	return w.Flush()
}

// lsState names a state the way users know it.
func lsState(s string) string {
	if s == catalog.StateArchived.String() {
		return "archived-clean"
	}
	return s
}
