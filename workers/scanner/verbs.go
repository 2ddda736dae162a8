package scanner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/failpoint"
)

// MaxArchiveFiles bounds one archive request: its reply lists every
// selected file (about 150 bytes each) and must fit in one NATS message.
const MaxArchiveFiles = 150_000

// ArchiveRequest is the control verb "archive": select every file under
// Paths now, whatever its age (pins and excludes still apply).
type ArchiveRequest struct {
	Paths []string `json:"paths"`
}

// ArchivedFile is a file an archive request selected.
type ArchivedFile struct {
	FileID string `json:"file_id"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
}

// ArchiveSkip is a path an archive request did not select, and why.
type ArchiveSkip struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// ArchiveReply answers ArchiveRequest.
type ArchiveReply struct {
	// Seq is the last stream sequence before the selections: a caller
	// that waits for the releases follows the log from there.
	Seq      uint64         `json:"seq"`
	Host     string         `json:"host"`
	Selected []ArchivedFile `json:"selected"`
	Skipped  []ArchiveSkip  `json:"skipped"`
}

// PinRequest is the control verb "pin": record pins (or unpins) of paths.
type PinRequest struct {
	Paths []string `json:"paths"`
	Unpin bool     `json:"unpin"`
}

// PreviewRequest is the control verb "preview": a dry run of the policy.
type PreviewRequest struct {
	Limit int `json:"limit"`
}

// verbCatalog is what the verbs read of the catalog.
type verbCatalog interface {
	lsCatalog
	Pinned(path string) (bool, error)
	WaitSeq(ctx context.Context, seq uint64) error
}

// Verbs are the scanner's control verbs.
type Verbs struct {
	Policy  Policy // the daemon's policy; its Roots are the hot trees
	Catalog verbCatalog
	JS      jetstream.JetStream
	Host    string
	// Failpoints: crash tests arm FailAfterSelect.
	Failpoints failpoint.Set
}

// Handlers returns the verbs archive, ls, pin and preview.
func (v *Verbs) Handlers() map[string]pipeline.ControlHandler {
	return map[string]pipeline.ControlHandler{
		"archive": pipeline.Verb("archive", v.archive),
		"ls":      pipeline.Verb("ls", v.ls),
		"pin":     pipeline.Verb("pin", v.pin),
		"preview": pipeline.Verb("preview", v.preview),
	}
}

func (v *Verbs) archive(ctx context.Context, req ArchiveRequest) (any, error) {
	if len(req.Paths) == 0 {
		return nil, errors.New("archive: no path given")
	}
	seq, err := pipeline.LastSeq(ctx, v.JS)
	if err != nil {
		return nil, err
	}
	// A path outside every hot tree is a mistake (a typo, the wrong
	// machine), not a file to skip: refuse the request before selecting
	// anything, as every other verb does.
	for _, p := range req.Paths {
		if v.Policy.RootOf(p) == "" {
			trees := "none is configured"
			if len(v.Policy.Roots) > 0 {
				trees = "hot trees: " + strings.Join(v.Policy.Roots, ", ")
			}
			return nil, fmt.Errorf("archive: %s is not inside a configured hot tree (%s)", p, trees)
		}
	}
	rep := ArchiveReply{Seq: seq, Host: v.Host, Selected: []ArchivedFile{}, Skipped: []ArchiveSkip{}}
	em := pipeline.NewEmitter(v.JS, v.Host, "archive")
	token := fmt.Sprint("manual@", seq, "@", time.Now().UnixNano())
	pinned := PinnedByCatalog(v.Catalog)
	// Gather first, then publish the selections many at a time: one
	// publish waits for its acknowledgement, and a large tree has many.
	var cands []Candidate
	for _, p := range req.Paths {
		root := v.Policy.RootOf(p)
		if pinned(p) {
			rep.Skipped = append(rep.Skipped, ArchiveSkip{p, "pinned"})
			continue
		}
		st, err := lstatBeneath(root, p)
		if err != nil {
			rep.Skipped = append(rep.Skipped, ArchiveSkip{p, err.Error()})
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			c, err := Inspect(p, root, events.ReasonManual)
			if err != nil {
				rep.Skipped = append(rep.Skipped, ArchiveSkip{p, err.Error()})
				continue
			}
			c.Root, c.Reason = root, events.ReasonManual
			cands = append(cands, c)
			continue
		}
		manual := v.Policy
		manual.Roots, manual.Within = []string{p}, root
		manual.Pinned = pinned
		manual.MinSize, manual.MinAtimeAge, manual.MinMtimeAge = 0, 0, 0
		manual.HighWatermark, manual.LowWatermark = 0, 0
		if _, err := Scan(ctx, manual, time.Now(), func(c Candidate) error {
			c.Root, c.Reason = root, events.ReasonManual
			cands = append(cands, c)
			return nil
		}); err != nil {
			return nil, fmt.Errorf("archive %s: %w", p, err)
		}
	}
	if len(cands) > MaxArchiveFiles {
		return nil, fmt.Errorf("archive: %d files in one request; at most %d (archive subdirectories one at a time)", len(cands), MaxArchiveFiles)
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for _, c := range cands {
		g.Go(func() error {
			err := Select(gctx, em, c, token)
			if err == nil {
				v.Failpoints.Hit(FailAfterSelect)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrPathNotUTF8):
				rep.Skipped = append(rep.Skipped, ArchiveSkip{c.Path, "name is not valid UTF-8: it cannot be recorded in an event"})
			case err != nil:
				return err
			default:
				rep.Selected = append(rep.Selected, ArchivedFile{FileID: c.FileID, Path: c.Path, Size: c.Stat.Size})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return rep, nil
}

// pin records pins (or unpins) in the log and answers once the catalog
// has them, so a scan right after sees them.
func (v *Verbs) pin(ctx context.Context, req PinRequest) (any, error) {
	if len(req.Paths) == 0 {
		return nil, errors.New("pin: no path given")
	}
	for _, p := range req.Paths {
		if v.Policy.RootOf(p) == "" {
			return nil, fmt.Errorf("pin: %s is not inside a configured hot tree", p)
		}
	}
	em := pipeline.NewEmitter(v.JS, v.Host, "pin")
	token := strconv.FormatInt(time.Now().UnixNano(), 10)
	var last uint64
	for _, p := range req.Paths {
		var ev events.Event = &events.FilePinned{Path: p}
		if req.Unpin {
			ev = &events.FileUnpinned{Path: p}
		}
		seq, err := em.Emit(ctx, ev, p, token)
		if err != nil {
			return nil, err
		}
		last = seq
	}
	if err := v.Catalog.WaitSeq(ctx, last); err != nil {
		return nil, err
	}
	return req.Paths, nil
}

func (v *Verbs) preview(ctx context.Context, req PreviewRequest) (any, error) {
	if len(v.Policy.Roots) == 0 {
		return Report{Candidates: []Candidate{}}, nil
	}
	return Preview(ctx, v.Policy, time.Now(), req.Limit)
}

// lstatBeneath is Lstat of path inside root, refusing a path that leaves
// root through a symlink (package beneath).
func lstatBeneath(root, path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if path == root {
		return st, unix.Lstat(path, &st)
	}
	fd, err := beneath.Open(root, filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	if err := unix.Fstatat(fd, filepath.Base(path), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return st, nil
}
