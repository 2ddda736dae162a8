package scanner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// LsLimit is the most files one ls request lists (about 200 bytes each:
// the reply fits one NATS message).
const LsLimit = 100000

// LsRequest is the control verb "ls": the state of the files under Paths
// (directories recursively), which must lie inside the hot trees.
type LsRequest struct {
	Paths []string `json:"paths"`
	Limit int      `json:"limit"` // 0 or above LsLimit: LsLimit
	// AllHosts adds the files the catalog knows on other hosts under
	// Paths (from the log; those paths need not be in this host's hot
	// trees).
	AllHosts bool `json:"all_hosts,omitempty"`
}

// LsEntry is one file as `strata ls` shows it.
type LsEntry struct {
	// Host is the host whose hot tree holds the file.
	Host  string `json:"host"`
	Path  string `json:"path"`
	State string `json:"state"`
	Size  int64  `json:"size"`
	// Resident is how many bytes of the file are on the hot tier: its
	// allocated blocks (st_blocks), at most Size. For a stub it says how
	// much is partially resident (a resident head, ranges recalled); an
	// extended attribute block can add up to one block of its own.
	Resident int64    `json:"resident"`
	FileID   string   `json:"file_id,omitempty"`
	ObjectID string   `json:"object_id,omitempty"`
	Version  uint32   `json:"version,omitempty"`
	Copies   []string `json:"copies"` // tiers with a good copy
	// Failures say why tiers have no copy yet (object.store_failed since
	// their last copy): "tier: reason (…)".
	Failures []string `json:"store_failures,omitempty"`
}

// LsReply answers LsRequest.
type LsReply struct {
	Files     []LsEntry `json:"files"`
	Truncated bool      `json:"truncated,omitempty"`
}

// lsCatchUp is how long ls waits for the catalog to apply what the log
// held when the request came.
const lsCatchUp = 5 * time.Second

// lsCatalog is what ls reads of the catalog.
type lsCatalog interface {
	File(fileID string) (catalog.File, error)
	FileByPath(path string) (catalog.File, error)
	FilesOn(host, prefix string, fn func(catalog.File) error) error
	Copies(objectID string) ([]catalog.Copy, error)
	StoreFailures(objectID string) ([]catalog.StoreFailure, error)
}

// ls lists the files under the requested paths: what the filesystem says
// joined with what the catalog knows. It walks as root, so it refuses any
// path outside the hot trees, as every other verb does.
func (v *Verbs) ls(ctx context.Context, req LsRequest) (any, error) {
	if len(req.Paths) == 0 {
		return nil, errors.New("ls: no path given")
	}
	if req.Limit <= 0 || req.Limit > LsLimit {
		req.Limit = LsLimit
	}
	for _, p := range req.Paths {
		if v.Policy.RootOf(p) == "" && !req.AllHosts {
			return nil, fmt.Errorf("ls: %s is not inside a configured hot tree (ls --all lists other hosts' files there)", p)
		}
	}
	// Read your writes: what the log held when the request came (a
	// file.released that archive --wait just saw) is in the catalog before
	// it is read, unless the catalog is far behind (then ls shows what it
	// has rather than nothing).
	if v.JS != nil {
		if seq, err := pipeline.LastSeq(ctx, v.JS); err == nil {
			wctx, cancel := context.WithTimeout(ctx, lsCatchUp)
			_ = v.Catalog.WaitSeq(wctx, seq)
			cancel()
		}
	}
	rep := LsReply{Files: []LsEntry{}}
	errFull := errors.New("full")
	for _, p := range req.Paths {
		if v.Policy.RootOf(p) == "" {
			continue // another host's tree (AllHosts): the catalog alone knows it
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
			e := v.lsEntry(path, fi.Size())
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				e.Resident = min(st.Blocks*512, fi.Size())
			}
			rep.Files = append(rep.Files, e)
			return nil
		})
		if errors.Is(err, errFull) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("ls: %w", err)
		}
	}
	if req.AllHosts && !rep.Truncated {
		if err := v.lsOtherHosts(req, &rep); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// lsOtherHosts appends the catalog's files of other hosts under req.Paths.
func (v *Verbs) lsOtherHosts(req LsRequest, rep *LsReply) error {
	errFull := errors.New("full")
	for _, p := range req.Paths {
		err := v.Catalog.FilesOn("", p, func(f catalog.File) error {
			if f.Host == v.Host {
				return nil // walked above
			}
			if len(rep.Files) >= req.Limit {
				rep.Truncated = true
				return errFull
			}
			e := LsEntry{Host: f.Host, Path: f.Path, Size: f.Stat.Size, Copies: []string{}}
			v.describe(&e, f)
			if f.State != catalog.StateReleased {
				e.Resident = f.Stat.Size // as its host last reported it
			}
			rep.Files = append(rep.Files, e)
			return nil
		})
		if errors.Is(err, errFull) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ls: %w", err)
		}
	}
	return nil
}

// lsEntry joins what the filesystem says with what the catalog knows.
func (v *Verbs) lsEntry(path string, size int64) LsEntry {
	e := LsEntry{Host: v.Host, Path: path, State: catalog.StateResident.String(), Size: size, Copies: []string{}}
	f, err := stub.Find(v.Catalog, path)
	if err != nil || f.State == catalog.StateDeleted {
		return e
	}
	v.describe(&e, f)
	return e
}

// describe fills in what the catalog knows of f.
func (v *Verbs) describe(e *LsEntry, f catalog.File) {
	e.State, e.FileID, e.ObjectID, e.Version = f.State.String(), f.ID, f.ObjectID, f.Version
	if f.ObjectID != "" {
		if cps, err := v.Catalog.Copies(f.ObjectID); err == nil {
			for _, c := range cps {
				if c.State == catalog.CopyGood {
					e.Copies = append(e.Copies, c.Tier)
				}
			}
		}
		if fs, err := v.Catalog.StoreFailures(f.ObjectID); err == nil {
			for _, sf := range fs {
				e.Failures = append(e.Failures, DescribeStoreFailure(sf))
			}
		}
	}
}

// DescribeStoreFailure says why a tier has no copy, and what happens next.
func DescribeStoreFailure(f catalog.StoreFailure) string {
	next := fmt.Sprintf("retried in %s", f.RetryIn)
	if f.Permanent {
		next = "given up"
	}
	return fmt.Sprintf("%s: %s (%d attempts, %s)", f.Tier, f.Reason, f.Attempts, next)
}
