package scanner

// The scanner stage is not a consumer: it produces events from what it
// finds on disk.
//
//	consumes  the hot trees (a walk every Interval, or when triggered)
//	emits     strata.<host>.file.selected   a file the policy archives now
//	          strata.<host>.file.moved      a stub found at a new path  (Reconciler)
//	          strata.<host>.file.deleted    a stub gone from every hot tree (Reconciler)
//	          strata.<host>.file.modified   an archived-clean file written since (Reconciler;
//	                                        the backstop of workers/modwatch, which reports
//	                                        writes as they happen, for writes it cannot see)
//
// Its control verbs (verbs.go) select files now (strata archive), record
// pins and preview the policy.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/failpoint"
)

// ErrPathNotUTF8: a file whose name is not valid UTF-8 cannot be named in
// an event (JSON strings are UTF-8), so it is never archived.
var ErrPathNotUTF8 = errors.New("scanner: path is not valid UTF-8")

// LoopConfig configures the scanner stage: a periodic scan that publishes
// file.selected for every candidate.
type LoopConfig struct {
	Policy   Policy
	Interval time.Duration
	Emitter  *pipeline.Emitter
	// Catalog, if set, skips candidates already on their way (archiving,
	// same content) and adds the pins it records to Policy.Pinned.
	Catalog scanCatalog
	// Reconciler, if set, runs after every scan that ended without error.
	Reconciler *Reconciler
	Logger     *slog.Logger
	// Failpoints: crash tests arm FailAfterSelect (package failpoint).
	Failpoints failpoint.Set
}

// FailAfterSelect fires after a file.selected is published and before the
// next one: a scan or an archive request half done.
var FailAfterSelect = failpoint.Define("scan.after-select", "one file.selected published, the rest of the scan or archive request not")

// scanCatalog is what the scanner stage reads of the catalog.
type scanCatalog interface {
	File(fileID string) (catalog.File, error)
	Pinned(path string) (bool, error)
}

// PinnedByCatalog returns a Policy.Pinned that asks cat; a path the
// catalog cannot answer for is taken as pinned (unsure: do not archive).
func PinnedByCatalog(cat interface{ Pinned(string) (bool, error) }) func(string) bool {
	return func(path string) bool {
		ok, err := cat.Pinned(path)
		return err != nil || ok
	}
}

// beingArchived reports whether the catalog already has c on its way.
func beingArchived(cat scanCatalog, c Candidate) bool {
	f, err := cat.File(c.FileID)
	return err == nil && f.State == catalog.StateArchiving && f.Stat.SameContent(c.Stat)
}

// Loop is the scanner stage.
type Loop struct {
	cfg     LoopConfig
	trigger chan struct{}
	mu      struct {
		sync.Mutex
		last LastScan
	}
}

// NewLoop returns a scanner stage; call Run.
func NewLoop(cfg LoopConfig) *Loop {
	if cfg.Catalog != nil && cfg.Policy.Pinned == nil {
		cfg.Policy.Pinned = PinnedByCatalog(cfg.Catalog)
	}
	return &Loop{cfg: cfg, trigger: make(chan struct{}, 1)}
}

// Run scans at once, then every Interval (or when triggered), until ctx
// ends. A failed scan is logged and retried at the next interval.
func (l *Loop) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-l.trigger:
		}
		sum, err := l.ScanOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			l.cfg.Logger.Error("scan failed", "err", err)
		} else {
			l.cfg.Logger.Info("scan done", "files", sum.Files, "selected", sum.Selected, "bytes", sum.SelectedBytes,
				"errors", sum.Errors, "took", sum.Duration.Round(time.Millisecond))
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(l.cfg.Interval)
	}
}

// Trigger asks for a scan now.
func (l *Loop) Trigger() {
	select {
	case l.trigger <- struct{}{}:
	default:
	}
}

// LastScan is the outcome of the last scan, for strata status.
type LastScan struct {
	Summary Summary   `json:"summary"`
	Err     string    `json:"error,omitempty"`
	At      time.Time `json:"at"`
}

// Last returns the outcome of the last scan (zero before the first).
func (l *Loop) Last() LastScan {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.last
}

// ScanOnce scans every hot tree once and publishes the selections.
func (l *Loop) ScanOnce(ctx context.Context) (Summary, error) {
	sum, err := Scan(ctx, l.cfg.Policy, time.Now(), func(c Candidate) error {
		if l.cfg.Catalog != nil && beingArchived(l.cfg.Catalog, c) {
			return nil
		}
		err := Select(ctx, l.cfg.Emitter, c)
		if err == nil {
			l.cfg.Failpoints.Hit(FailAfterSelect)
		}
		if errors.Is(err, ErrPathNotUTF8) {
			l.cfg.Logger.Warn("not archiving a file whose name is not valid UTF-8", "path", c.Path)
			return nil
		}
		return err
	})
	if err == nil && l.cfg.Reconciler != nil {
		l.cfg.Reconciler.Run(ctx)
	}
	last := LastScan{Summary: sum, At: time.Now()}
	if err != nil {
		last.Err = err.Error()
	}
	l.mu.Lock()
	l.mu.last = last
	l.mu.Unlock()
	return sum, err
}

// Select publishes file.selected for c. The event id depends on the file,
// its content's identity (size, mtime, ctime) and extra: with no extra,
// selecting the same unchanged file twice (two scans) is recorded once; an
// explicit request (strata archive) passes its own token so that it is
// always recorded and can be waited for.
func Select(ctx context.Context, em *pipeline.Emitter, c Candidate, extra ...string) error {
	if !utf8.ValidString(c.Path) {
		// JSON cannot carry the name byte for byte: the event would name
		// another file. Such files stay hot.
		return fmt.Errorf("%w: %q", ErrPathNotUTF8, c.Path)
	}
	parts := append([]string{c.FileID, strconv.FormatInt(c.Stat.Size, 10), strconv.FormatInt(c.Stat.MtimeNS, 10),
		strconv.FormatInt(c.Stat.CtimeNS, 10)}, extra...)
	_, err := em.Emit(ctx, &events.FileSelected{FileID: c.FileID, Path: c.Path, Root: c.Root, Stat: c.Stat, Reason: c.Reason}, parts...)
	return err
}
