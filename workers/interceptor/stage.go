//go:build linux

package interceptor

// The recall stage. The interceptor is driven by the kernel, not by a
// subject, and publishes what happens to stubs itself:
//
//	consumes  fanotify events on stubs (every program's access, held)
//	          strata.<host>.recall.requested, reason prefetch (durable
//	          "recall", PrefetchStage: reads the stub, which recalls it)
//	emits     strata.<host>.recall.requested  a program's first access to a stub
//	          strata.<host>.recall.completed  the whole content back, verified
//	          strata.<host>.recall.failed     an access denied, or a fill that failed
//	          strata.<host>.file.modified     a stub truncated during its recall
//	          strata.<host>.recall.storm      a process started many recalls in a short time (rules.go)
//
// Message ids are deterministic, so a publish retried (or repeated by a
// restarted daemon) is recorded once: a recall is named by its file,
// object and release (stub.Info.ReleaseID), so recall.requested and
// recall.completed are recorded once per release, and a stub released
// again is recalled anew. recall.failed names each failure: this daemon's
// life and a counter.

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/stub"
)

// PrefetchStageName is the durable consumer of PrefetchStage.
const PrefetchStageName = "recall"

// tierNone is the source tier of a recall that had nothing to fill.
const tierNone = "none"

// publisher sends the interceptor's events from its own goroutine, so that
// a slow or unreachable log never holds a program. Events wait in an
// unbounded queue (a few hundred bytes each) and are retried with their
// ids until published or until Close gives up on them.
type publisher struct {
	em   *pipeline.Emitter
	log  *slog.Logger
	boot string        // names this daemon's life in failure ids
	nth  atomic.Uint64 // failures published in this life

	mu struct {
		sync.Mutex
		queue   []pendingEvent
		closing bool // run returns once the queue is empty
	}
	wake    chan struct{}
	stopped chan struct{}
	cancel  context.CancelFunc
}

type pendingEvent struct {
	ev events.Event
	id []string
}

func newPublisher(em *pipeline.Emitter, log *slog.Logger) *publisher {
	if em == nil {
		return nil
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	p := &publisher{em: em, log: log, boot: hex.EncodeToString(b[:]), wake: make(chan struct{}, 1),
		stopped: make(chan struct{}), cancel: cancel}
	go p.run(ctx)
	return p
}

// send queues ev with its id parts. Safe on a nil publisher (no events).
func (p *publisher) send(ev events.Event, id ...string) {
	if p == nil || ev == nil {
		return
	}
	p.mu.Lock()
	p.mu.queue = append(p.mu.queue, pendingEvent{ev, id})
	p.mu.Unlock()
	p.poke()
}

func (p *publisher) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) run(ctx context.Context) {
	defer close(p.stopped)
	backoff := time.Second
	for {
		p.mu.Lock()
		var next *pendingEvent
		if len(p.mu.queue) > 0 {
			next = &p.mu.queue[0]
		}
		closing := p.mu.closing
		p.mu.Unlock()
		if next == nil && closing {
			return
		}
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			}
			continue
		}
		if _, err := p.em.Emit(ctx, next.ev, next.id...); err != nil {
			if ctx.Err() != nil {
				return
			}
			var invalid bool
			if invalid = errors.Is(err, events.ErrInvalid); !invalid {
				p.log.Error("publish recall event; retrying", "kind", next.ev.Kind(), "err", err, "in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Minute)
				continue
			}
			p.log.Error("recall event is invalid; dropped", "kind", next.ev.Kind(), "err", err)
		}
		backoff = time.Second
		p.mu.Lock()
		p.mu.queue = p.mu.queue[1:]
		p.mu.Unlock()
	}
}

// close publishes what is queued for up to timeout, then stops.
func (p *publisher) close(timeout time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.mu.closing = true
	p.mu.Unlock()
	p.poke()
	select {
	case <-p.stopped:
	case <-time.After(timeout):
		p.cancel()
		<-p.stopped
	}
	p.cancel()
	if n := len(p.mu.queue); n > 0 {
		p.log.Error("recall events not published at stop (the next start records finished recalls again)", "events", n)
	}
}

// requested records a program's first access to a stub.
func (p *publisher) requested(info stub.Info, path string, off, n int64, pid int32, process string) {
	p.send(&events.RecallRequested{FileID: info.FileID, Path: path, ObjectID: info.ObjectID, Offset: off, Length: n,
		PID: pid, Process: process, Exe: exePath(pid), Reason: events.RecallAccess}, info.FileID, info.ObjectID, info.ReleaseID)
}

// completed records a finished recall: recall.completed, or file.modified
// when the file was cut below its archived size, or written by a program,
// during the recall (its content is no longer the object).
func (p *publisher) completed(c Completion) {
	if p == nil {
		return
	}
	if c.Truncated || c.Modified {
		st, err := stub.Lstat(c.Path)
		if err != nil {
			p.log.Warn("stat of a file changed during its recall", "path", c.Path, "err", err)
			return
		}
		ev, id := stub.Modified(c.FileID, c.ObjectID, c.Path, st)
		p.send(ev, id...)
		return
	}
	p.send(&events.RecallCompleted{FileID: c.FileID, Path: c.Path, ObjectID: c.ObjectID, Bytes: c.Bytes,
		DurationNS: c.Duration.Nanoseconds(), SourceTier: cmp.Or(c.Tier, tierNone), PID: c.PID, Process: c.Process, Exe: c.Exe},
		c.FileID, c.ObjectID, c.ReleaseID)
}

// exePath is the executable of process pid ("" once it is gone, or for
// a kernel thread): with its comm (which any program can set) it names
// the program that touched a stub.
func exePath(pid int32) string {
	if pid <= 0 {
		return ""
	}
	p, err := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
	if err != nil {
		return ""
	}
	return p
}

// failed records a denied access or a failed fill of a known stub.
func (p *publisher) failed(f Failure) {
	if p == nil || f.FileID == "" || f.ObjectID == "" || f.Path == "" {
		return
	}
	p.send(&events.RecallFailed{FileID: f.FileID, Path: f.Path, ObjectID: f.ObjectID, Reason: f.Err.Error(),
		PID: f.PID, Process: f.Process, Exe: exePath(f.PID)}, f.FileID, f.ObjectID, f.ReleaseID, p.boot, strconv.FormatUint(p.nth.Add(1), 10))
}

// FinishedBeforeCrash records the completion of a recall that finished
// (its xattrs say archived only once the file is proven whole) when the
// daemon died before recall.completed was published. Its id is that of
// the completion the dead daemon would have published, so a completion
// that did get out is not recorded twice.
func (i *Interceptor) FinishedBeforeCrash(info stub.Info, path string) {
	i.pub.send(&events.RecallCompleted{FileID: info.FileID, Path: path, ObjectID: info.ObjectID, SourceTier: tierNone},
		info.FileID, info.ObjectID, info.ReleaseID)
}

// PrefetchStage reads every stub a prefetch recall.requested names (what
// `strata recall` publishes): the reads recall it through this daemon's
// own events. A file that is no longer that stub needs nothing. The
// message is acknowledged when the whole file was read.
func PrefetchStage(host string, logger *slog.Logger) pipeline.Stage {
	return pipeline.Stage{
		Name:        PrefetchStageName,
		Filter:      []string{events.Subject(host, events.KindRecallRequested)},
		Concurrency: 2,
		Handle: pipeline.Handle(PrefetchStageName, func(ctx context.Context, _ events.Envelope, r *events.RecallRequested) error {
			if r.Reason != events.RecallPrefetch && r.Reason != events.RecallProbe {
				return nil // a program's access: the interceptor is on it
			}
			info, err := stub.ReadPath(r.Path)
			if err != nil || info.FileID != r.FileID || info.ObjectID != r.ObjectID || info.State != stub.Released {
				return nil // gone, replaced or already back
			}
			if _, err := ReadAll(ctx, r.Path, nil); err != nil {
				logger.Warn("prefetch failed", "path", r.Path, "err", err)
				return fmt.Errorf("prefetch %s: %w", r.Path, err)
			}
			return nil
		}),
	}
}

// RecallRequest is the control verb "recall": prefetch every stub under
// Paths (directories recursively).
type RecallRequest struct {
	Paths []string `json:"paths"`
	// Background: publish a prefetch request per stub (PrefetchStage
	// reads them), in the order of the reply; otherwise only list them
	// (the CLI reads them itself, with a progress bar).
	Background bool `json:"background"`
	// Ordered: a bulk recall (`strata recall --from-list`): the reply
	// names where each stub is read from and lists the stubs in that
	// order (OrderRecalls); a path that does not exist is listed in
	// Missing instead of failing the request.
	Ordered bool `json:"ordered,omitempty"`
}

// RecallFile is one stub a recall request found.
type RecallFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// Ordered requests: the object, and the copy a recall reads first
	// (tier, its cost, a tape copy's position), or why none can be read.
	ObjectID string               `json:"object_id,omitempty"`
	Tier     string               `json:"tier,omitempty"`
	Cost     int                  `json:"cost,omitempty"`
	Tape     *events.TapePosition `json:"tape,omitempty"`
	NoCopy   string               `json:"no_copy,omitempty"`
}

// RecallReply answers RecallRequest.
type RecallReply struct {
	Stubs   []RecallFile `json:"stubs"`
	Missing []string     `json:"missing,omitempty"` // Ordered: paths that do not exist
}

// Placer tells where a recall of an object reads it (recall.Reader's
// Placement, adapted): the tier, its cost and, on tape, the position.
type Placer func(objectID string) (tier string, cost int, tape *events.TapePosition, err error)

// RecallVerb answers the control verb "recall" for the hot trees roots;
// place orders the stubs of Ordered requests (nil: they are refused).
func RecallVerb(em *pipeline.Emitter, roots []string, place Placer) pipeline.ControlHandler {
	return pipeline.Verb("recall", func(ctx context.Context, req RecallRequest) (any, error) {
		if len(req.Paths) == 0 {
			return nil, errors.New("recall: no path given")
		}
		if req.Ordered && place == nil {
			return nil, errors.New("recall: this daemon cannot order recalls")
		}
		rep := RecallReply{Stubs: []RecallFile{}}
		type found struct {
			path string
			info stub.Info
		}
		var stubs []found
		for _, p := range req.Paths {
			if !within(roots, p) {
				return nil, fmt.Errorf("recall: %s is not inside a configured hot tree", p)
			}
			err := filepath.WalkDir(p, func(path string, de fs.DirEntry, err error) error {
				if err != nil && req.Ordered && path == p && errors.Is(err, fs.ErrNotExist) {
					rep.Missing = append(rep.Missing, p)
					return nil
				}
				if err != nil || !de.Type().IsRegular() {
					return err
				}
				if info, err := stub.ReadPath(path); err == nil && info.State == stub.Released {
					stubs = append(stubs, found{path, info})
				}
				return ctx.Err()
			})
			if err != nil {
				return nil, fmt.Errorf("recall: %w", err)
			}
		}
		infos := map[string]stub.Info{}
		for _, s := range stubs {
			f := RecallFile{Path: s.path, Size: s.info.Size}
			if req.Ordered {
				f.ObjectID = s.info.ObjectID
				var err error
				if f.Tier, f.Cost, f.Tape, err = place(s.info.ObjectID); err != nil {
					f.NoCopy = err.Error()
				}
			}
			infos[s.path] = s.info
			rep.Stubs = append(rep.Stubs, f)
		}
		if req.Ordered {
			rep.Stubs = OrderRecalls(rep.Stubs)
		}
		if req.Background {
			for _, f := range rep.Stubs {
				info := infos[f.Path]
				_, err := em.Emit(ctx, &events.RecallRequested{FileID: info.FileID, Path: f.Path, ObjectID: info.ObjectID,
					Length: info.Size, Reason: events.RecallPrefetch}, info.FileID, info.ObjectID, info.ReleaseID, events.RecallPrefetch)
				if err != nil {
					return nil, err
				}
			}
		}
		return rep, nil
	})
}

// OrderRecalls returns files without repeated paths, in the order a bulk
// recall reads them: by the copy each is read from — tier (cost, then
// name), then on tape volume, tape file, block and offset (one pass along
// each cartridge, no seeking back), elsewhere object id (the copies of
// one object together), then path — and stubs no tier can serve last.
func OrderRecalls(files []RecallFile) []RecallFile {
	seen := make(map[string]bool, len(files))
	out := make([]RecallFile, 0, len(files))
	for _, f := range files {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	slices.SortStableFunc(out, func(a, b RecallFile) int {
		if (a.NoCopy == "") != (b.NoCopy == "") {
			return cmp.Compare(len(a.NoCopy), len(b.NoCopy)) // readable first
		}
		if c := cmp.Or(cmp.Compare(a.Cost, b.Cost), strings.Compare(a.Tier, b.Tier)); c != 0 {
			return c
		}
		if a.Tape != nil && b.Tape != nil {
			if c := cmp.Or(strings.Compare(a.Tape.Volume, b.Tape.Volume), cmp.Compare(a.Tape.TapeFile, b.Tape.TapeFile),
				cmp.Compare(a.Tape.Block, b.Tape.Block), cmp.Compare(a.Tape.Offset, b.Tape.Offset)); c != 0 {
				return c
			}
		}
		return cmp.Or(strings.Compare(a.ObjectID, b.ObjectID), strings.Compare(a.Path, b.Path))
	})
	return out
}

// within reports whether p (absolute, clean) is one of roots or below one.
func within(roots []string, p string) bool {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return false
	}
	for _, r := range roots {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// ReadAll reads a file to its end in large chunks (a stub is filled by the
// interceptor as the reads arrive), reporting the bytes of each read.
func ReadAll(ctx context.Context, path string, progress func(n int64)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	var total int64
	for ctx.Err() == nil {
		n, err := f.Read(buf)
		total += int64(n)
		if progress != nil {
			progress(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, ctx.Err()
}
