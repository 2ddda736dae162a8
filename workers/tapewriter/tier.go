package tapewriter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	"github.com/strata-hsm/strata/workers/tier"
)

// TierConfig configures a tape tier: one drive (a real st device or an
// emulated library), the pool of volumes it writes, and how objects are
// aggregated into bundles.
type TierConfig struct {
	// Name is the tier name (events.ObjectStored.Tier), a subject token.
	Name string
	// Device is "/dev/nstX" (a real drive; operators load cartridges) or
	// "emulator:/dir" (an emulated library: cartridges are the
	// subdirectories of dir, made by `strata tape label`).
	Device string
	// Pool: only volumes labelled with this pool are written.
	Pool string
	// Volumes the writer may write, in order. Empty: every cartridge of
	// the device whose label names this pool and whose barcode (emulator:
	// directory name) equals the label's volume id; with a real drive, the
	// loaded cartridge if its label names this pool.
	Volumes []string
	// BlockSize, if set, is the only block size accepted: a volume
	// labelled with another one is not written. 0: each label decides.
	BlockSize int
	// BundleBytes closes a bundle at this size (default 16 GiB);
	// BundleAge closes it at this age (default 5 min). An object is
	// reported stored only after its bundle is closed with a flushing
	// filemark, so BundleAge bounds how long an object waits for tape.
	BundleBytes int64
	BundleAge   time.Duration
	// RingBytes is the writer's RAM ring (default 256 MiB).
	RingBytes int64
	// MinRate is the drive's lowest matched speed in bytes/s (default:
	// LTO-9's); a slower source is spooled to disk first.
	MinRate float64
	// StateDir holds the spool and recall spill files (required).
	StateDir string
	// Concurrency is how many objects may wait in the writer for their
	// bundle's flushing filemark (default 256). When that many wait, the
	// bundle is closed at once.
	Concurrency int
	// RecallWindow is how long recall requests are collected before the
	// batch is read in tape order (default 200 ms).
	RecallWindow time.Duration
}

// Tier defaults.
const (
	DefaultTierBundleBytes  = 16 << 30
	DefaultTierBundleAge    = 5 * time.Minute
	DefaultTierRingBytes    = 256 << 20
	DefaultTierConcurrency  = 256
	DefaultTierRecallWindow = 200 * time.Millisecond
	// spillAbove: recall ranges larger than this are buffered in a file
	// under StateDir rather than in RAM.
	spillAbove = 64 << 20
)

// EnsureDefaults fills unset fields.
func (c *TierConfig) EnsureDefaults() {
	if c.BundleBytes == 0 {
		c.BundleBytes = DefaultTierBundleBytes
	}
	if c.BundleAge == 0 {
		c.BundleAge = DefaultTierBundleAge
	}
	if c.RingBytes == 0 {
		c.RingBytes = DefaultTierRingBytes
	}
	if c.MinRate == 0 {
		c.MinRate = tape.LTO9().MinRate
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultTierConcurrency
	}
	if c.RecallWindow == 0 {
		c.RecallWindow = DefaultTierRecallWindow
	}
}

// Validate checks c (after EnsureDefaults).
func (c *TierConfig) Validate() error {
	bad := func(f string, v any, format string, args ...any) error {
		return &ConfigError{f, v, fmt.Errorf(format, args...)}
	}
	if !events.ValidToken(c.Name) {
		return bad("Name", c.Name, "want letters, digits, '-' or '_'")
	}
	if _, _, err := tape.ParseDevice(c.Device); err != nil {
		return bad("Device", c.Device, "%w", err)
	}
	if c.Pool == "" || len(c.Pool) > 64 {
		return bad("Pool", c.Pool, "want 1 to 64 characters")
	}
	for _, v := range c.Volumes {
		if v == "" || strings.ContainsAny(v, "/\x00") || len(v) > 64 {
			return bad("Volumes", v, "bad volume id")
		}
	}
	switch {
	case c.BlockSize != 0 && (c.BlockSize < bundle.MinBlockSize || c.BlockSize > bundle.MaxBlockSize || c.BlockSize%512 != 0):
		return bad("BlockSize", c.BlockSize, "want 0 or a multiple of 512 in [%d, %d]", bundle.MinBlockSize, bundle.MaxBlockSize)
	case c.BundleBytes < bundle.MaxBlockSize:
		return bad("BundleBytes", c.BundleBytes, "want at least %d", bundle.MaxBlockSize)
	case c.BundleAge < 0:
		return bad("BundleAge", c.BundleAge, "negative")
	case c.RingBytes < 4*bundle.MaxBlockSize:
		return bad("RingBytes", c.RingBytes, "want at least 4 MiB")
	case c.MinRate < 0:
		return bad("MinRate", c.MinRate, "negative")
	case !filepath.IsAbs(c.StateDir):
		return bad("StateDir", c.StateDir, "want an absolute path")
	case c.Concurrency < 1:
		return bad("Concurrency", c.Concurrency, "want >= 1")
	case c.RecallWindow < 0:
		return bad("RecallWindow", c.RecallWindow, "negative")
	}
	return nil
}

// TapeCopy is what the catalog records about an object's copy on this
// tier.
type TapeCopy struct {
	Pos        events.TapePosition
	Size       int64 // uncompressed (0 in the session index: Put does not know it)
	PackedSize int64
	PackedSum  string
}

// TierDeps is what a tape tier needs from the daemon.
type TierDeps struct {
	// Emitter publishes object.stored (required for Stage).
	Emitter *pipeline.Emitter
	// Logger (default: discard).
	Logger *slog.Logger
	// Copy returns the catalog's record of this tier's good copy of an
	// object (ok false: none). Required: recall reads positions from it,
	// and the stage uses it to recognise a redelivered object that is
	// already on tape. It is the source of truth for every copy written
	// before the tier was opened; copies that Target().Put writes are
	// known from the session index until the catalog learns them (see
	// Tier.lookup).
	Copy func(objectID string) (c TapeCopy, ok bool, err error)
	// Event, optional, receives volume events (full, write protected,
	// label mismatch, mounted, …) after they are logged.
	Event func(VolumeEvent)
	// Failpoints: crash tests arm the tape failpoints (package failpoint).
	Failpoints failpoint.Set
}

// VolumeState is the last event of a volume, for status and `strata tape
// ls`.
type VolumeState struct {
	Volume string    `json:"volume"`
	State  string    `json:"state"` // a VolumeEvent kind
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"at"`
}

// Errors of a Tier. Delete on tape fails with tier.ErrNotSupported.
var (
	// ErrTierClosed: the tier was closed while a request waited.
	ErrTierClosed = errors.New("tapewriter: tape tier closed")
	// errBusy: another packing of the object (another packed sum) is
	// being written right now; the request is retried later.
	errBusy = errors.New("tapewriter: another packing of the object is being written")
)

// Tier is a tape tier: the store stage that writes objects to tape
// (Stage) and the tier.Target that recall, scrub and repair use (Target).
// One goroutine owns the drive and serialises everything: objects are
// added to the Writer (the stage's, and Target().Put's, which close their
// bundle at once), recall requests are collected for RecallWindow and read
// in tape order, and a recall parks the writer (its bundle closed with a
// flushing filemark, its objects reported) before the tape moves.
type Tier struct {
	cfg  TierConfig
	deps TierDeps
	log  *slog.Logger
	dev  *tape.Device

	reqs chan any // *addReq, *readReq, *flushReq, *pendingReq, *listReq
	stop chan struct{}
	done chan struct{}
	once sync.Once

	vmu  sync.Mutex
	vols map[string]VolumeState // protected by vmu

	// written is the session index: for each object that Target().Put
	// wrote since the tier was opened, its newest durable copy. See
	// lookup for why it is consulted before the catalog.
	written struct {
		sync.Mutex
		m map[string]TapeCopy
	}

	// Owned by the loop goroutine.
	w       *Writer
	waiters map[string]*waiting // objects in the writer, by id
}

// waiting is an object in the writer and the requests waiting for it.
type waiting struct {
	sum string // its packed sum
	res []chan addResult
	put bool // a Target().Put waits: its copy goes into the session index
}

// OpenTier opens the device and starts the tier's drive goroutine.
func OpenTier(cfg TierConfig, deps TierDeps) (*Tier, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Copy == nil {
		return nil, &ConfigError{"TierDeps.Copy", nil, errors.New("required")}
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "spool"), filepath.Join(cfg.StateDir, "recall")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("tape tier %s: %w", cfg.Name, err)
		}
	}
	dev, err := tape.OpenDevice(cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("tape tier %s: %w", cfg.Name, err)
	}
	t := &Tier{cfg: cfg, deps: deps, log: deps.Logger.With("tier", cfg.Name), dev: dev,
		reqs: make(chan any), stop: make(chan struct{}), done: make(chan struct{}),
		vols: map[string]VolumeState{}, waiters: map[string]*waiting{}}
	t.written.m = map[string]TapeCopy{}
	go t.loop()
	return t, nil
}

// Name returns the tier name.
func (t *Tier) Name() string { return t.cfg.Name }

// Volumes returns the last known state of every volume the tier touched.
func (t *Tier) Volumes() []VolumeState {
	t.vmu.Lock()
	defer t.vmu.Unlock()
	out := make([]VolumeState, 0, len(t.vols))
	for _, v := range t.vols {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b VolumeState) int { return strings.Compare(a.Volume, b.Volume) })
	return out
}

// Close flushes what the writer holds (reporting it stored), fails the
// requests still waiting with ErrTierClosed and releases the drive.
// Idempotent.
func (t *Tier) Close() error {
	t.once.Do(func() { close(t.stop) })
	<-t.done
	return t.dev.Close()
}

// Flush closes the open bundle with a flushing filemark now, so every
// object waiting in the writer is reported stored (their handlers
// return). The daemon calls it when it shuts down, before the stage
// runner's drain timeout.
func (t *Tier) Flush(ctx context.Context) error {
	r := &flushReq{res: make(chan error, 1)}
	if err := t.send(ctx, r); err != nil {
		return err
	}
	select {
	case err := <-r.res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return ErrTierClosed
	}
}

func (t *Tier) send(ctx context.Context, r any) error {
	select {
	case t.reqs <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return ErrTierClosed
	}
}

type addReq struct {
	obj Object
	res chan addResult
	// put: the request of a Target().Put. The open bundle is closed with
	// a flushing filemark right after the object (its caller waits), and
	// if another Put made a copy of the same bytes durable since this one
	// looked (a session copy that is not at seen, the copy it found
	// missing or bad), that copy is the answer and nothing is written.
	put  bool
	seen *events.TapePosition
}

type addResult struct {
	pos       events.TapePosition
	err       error
	permanent bool
	// reused: pos is a copy that another Put wrote (put requests only).
	reused bool
	// indexed: the copy went into the session index, replacing prev
	// (hadPrev false: no entry before).
	indexed bool
	prev    TapeCopy
	hadPrev bool
}

type flushReq struct{ res chan error }

// pendingReq asks how many objects wait in the writer (for tests and
// status).
type pendingReq struct{ res chan int }

// Pending returns how many objects wait in the writer for a flushing
// filemark.
func (t *Tier) Pending(ctx context.Context) (int, error) {
	r := &pendingReq{res: make(chan int, 1)}
	if err := t.send(ctx, r); err != nil {
		return 0, err
	}
	select {
	case n := <-r.res:
		return n, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-t.done:
		return 0, ErrTierClosed
	}
}

// loop owns the drive and the writer.
func (t *Tier) loop() {
	defer close(t.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	every := min(max(t.cfg.BundleAge/4, 10*time.Millisecond), time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var reads []*readReq
	var window <-chan time.Time
	for {
		select {
		case <-t.stop:
			if t.w != nil {
				if err := t.w.Close(ctx); err != nil {
					t.log.Warn("close tape writer", "err", err)
				}
				t.w = nil
			}
			t.failAll(ErrTierClosed)
			for _, r := range reads {
				r.res <- readResult{err: ErrTierClosed}
			}
			return
		case x := <-t.reqs:
			switch r := x.(type) {
			case *addReq:
				t.add(ctx, r)
			case *flushReq:
				r.res <- t.flush(ctx)
			case *readReq:
				reads = append(reads, r)
				if window == nil {
					window = time.After(t.cfg.RecallWindow)
				}
			case *pendingReq:
				r.res <- len(t.waiters)
			case *listReq:
				t.park(ctx)
				r.res <- t.list(ctx)
			}
		case <-window:
			t.park(ctx)
			t.serveReads(ctx, reads)
			reads, window = nil, nil
		case <-tick.C:
			if t.w != nil {
				t.writerErr(ctx, t.w.Tick(ctx))
			}
		}
	}
}

// add puts an object into the writer; its waiter is answered when the
// object is reported stored (or fails).
func (t *Tier) add(ctx context.Context, r *addReq) {
	id := r.obj.ID
	if ws, ok := t.waiters[id]; ok {
		if ws.sum != r.obj.PackedSum {
			r.res <- addResult{err: fmt.Errorf("tape tier %s: object %s: %w", t.cfg.Name, id, errBusy)}
			return
		}
		// Already in the writer (another file with the same content).
		ws.res = append(ws.res, r.res)
		if r.put {
			ws.put = true
			t.flush(ctx)
		}
		return
	}
	if r.put {
		if c, ok := t.sessionCopy(id); ok && c.PackedSum == r.obj.PackedSum && c.PackedSize == r.obj.PackedSize &&
			(r.seen == nil || !samePlace(c.Pos, *r.seen)) {
			r.res <- addResult{pos: c.Pos, reused: true}
			return
		}
	}
	if t.w == nil {
		w, err := t.newWriter(ctx)
		if err != nil {
			r.res <- addResult{err: err}
			return
		}
		t.w = w
	}
	t.waiters[id] = &waiting{sum: r.obj.PackedSum, res: []chan addResult{r.res}, put: r.put}
	if !t.writerErr(ctx, t.w.Add(ctx, r.obj)) {
		return
	}
	if _, waits := t.waiters[id]; waits && (r.put || len(t.waiters) >= t.cfg.Concurrency) {
		t.flush(ctx)
	}
}

// flush closes the open bundle with a flushing filemark (reporting every
// object written so far).
func (t *Tier) flush(ctx context.Context) error {
	if t.w == nil {
		return nil
	}
	err := t.w.Flush(ctx)
	t.writerErr(ctx, err)
	return err
}

// writerErr handles an error of the writer: the objects that failed on
// their own are answered (the writer goes on without them); anything else
// stops the writer (writerFailed). It reports whether the writer goes on.
func (t *Tier) writerErr(ctx context.Context, err error) bool {
	if err == nil {
		return true
	}
	objects, rest := splitErrors(err)
	for id, oerr := range objects {
		if ws, ok := t.waiters[id]; ok {
			for _, c := range ws.res {
				c <- addResult{err: oerr, permanent: errors.Is(oerr, bundle.ErrChecksum)}
			}
			delete(t.waiters, id)
		}
	}
	if rest != nil {
		t.writerFailed(ctx, rest)
		return false
	}
	return true
}

// stored is the writer's Stored callback (on the loop goroutine).
func (t *Tier) stored(obj Object, pos events.TapePosition) {
	ws := t.waiters[obj.ID]
	res := addResult{pos: pos}
	res.prev, res.hadPrev, res.indexed = t.remember(obj.ID,
		TapeCopy{Pos: pos, PackedSize: obj.PackedSize, PackedSum: obj.PackedSum}, ws != nil && ws.put)
	if ws != nil {
		for _, c := range ws.res {
			c <- res
		}
	}
	delete(t.waiters, obj.ID)
}

// lookup returns the tier's copy of object id: the session index's, else
// the catalog's (TierDeps.Copy).
//
// The session index holds the objects that Target().Put wrote since the
// tier was opened (scrub's repairs: rare, so it stays small), and of each
// its newest durable copy. It comes first because it cannot be stale.
// INVARIANT: while the tier is open only its drive goroutine writes its
// volumes, and every copy that goroutine makes durable of an object in the
// index replaces the object's entry (stored, Stage writes too), so an entry
// is the newest copy of its object on the media; the catalog learns a copy
// only from the object.stored published after the write, so it can only be
// as new. Put's caller publishes object.stored with the copy's position,
// and after a restart the catalog answers alone. The stage's writes of
// other objects never enter the index: the catalog knows them, as before.
func (t *Tier) lookup(id string) (TapeCopy, bool, error) {
	if c, ok := t.sessionCopy(id); ok {
		return c, true, nil
	}
	c, ok, err := t.deps.Copy(id)
	if err != nil {
		return TapeCopy{}, false, fmt.Errorf("tape tier %s: catalog: %w: %w", t.cfg.Name, tier.ErrUnavailable, err)
	}
	return c, ok, nil
}

func (t *Tier) sessionCopy(id string) (TapeCopy, bool) {
	t.written.Lock()
	defer t.written.Unlock()
	c, ok := t.written.m[id]
	return c, ok
}

// remember records c as the newest copy of id if force or id is in the
// index already, and returns the entry it replaced.
func (t *Tier) remember(id string, c TapeCopy, force bool) (prev TapeCopy, hadPrev, indexed bool) {
	t.written.Lock()
	defer t.written.Unlock()
	prev, hadPrev = t.written.m[id]
	if !force && !hadPrev {
		return TapeCopy{}, false, false
	}
	t.written.m[id] = c
	return prev, hadPrev, true
}

// forget undoes remember(id, c): the copy did not read back. Another
// write of id since then is kept.
func (t *Tier) forget(id string, c TapeCopy, prev TapeCopy, hadPrev bool) {
	t.written.Lock()
	defer t.written.Unlock()
	if cur, ok := t.written.m[id]; !ok || cur != c {
		return
	}
	if hadPrev {
		t.written.m[id] = prev
	} else {
		delete(t.written.m, id)
	}
}

// samePlace reports whether a and b are the same copy.
func samePlace(a, b events.TapePosition) bool {
	return a.Volume == b.Volume && a.Block == b.Block && a.Offset == b.Offset
}

// writerFailed drops a writer that cannot go on (no volume left, a spool
// error): whatever it reports while closing is reported, every other
// waiting object fails (its message is redelivered), and the next object
// starts a new writer over the volumes found then.
func (t *Tier) writerFailed(ctx context.Context, cause error) {
	t.log.Error("tape writer stopped; objects not yet on tape will be retried", "err", cause)
	if t.w != nil {
		if err := t.w.Close(ctx); err != nil && !errors.Is(err, cause) {
			t.log.Warn("close tape writer", "err", err)
		}
		t.w = nil
	}
	t.failAll(fmt.Errorf("tape tier %s: %w", t.cfg.Name, cause))
}

func (t *Tier) failAll(err error) {
	for id, ws := range t.waiters {
		for _, c := range ws.res {
			c <- addResult{err: err}
		}
		delete(t.waiters, id)
	}
}

// park makes the drive free for reads: the writer closes its bundle with
// a flushing filemark (reporting its objects) and forgets its position;
// the next object mounts the same volume again at its end of data.
func (t *Tier) park(ctx context.Context) {
	if t.w == nil || t.w.vol == nil {
		return
	}
	if t.flush(ctx); t.w == nil {
		return // the writer stopped
	}
	w := t.w
	if i := slices.Index(w.cfg.Volumes, w.vol.id); i >= 0 {
		w.volIdx = i
	}
	w.vol, w.ew = nil, false
}

// newWriter starts a writer over the tier's volumes.
func (t *Tier) newWriter(ctx context.Context) (*Writer, error) {
	vols := t.cfg.Volumes
	if len(vols) == 0 {
		var err error
		if vols, err = t.discover(ctx); err != nil {
			return nil, err
		}
	}
	if len(vols) == 0 {
		return nil, fmt.Errorf("tape tier %s: no volume of pool %q on %s (label one with strata tape label): %w",
			t.cfg.Name, t.cfg.Pool, t.cfg.Device, ErrNoVolume)
	}
	return New(Config{
		Pool: t.cfg.Pool, Volumes: vols, Changer: t.dev,
		BundleSize: t.cfg.BundleBytes, BundleAge: t.cfg.BundleAge, FlushEvery: 1,
		RingSize: t.cfg.RingBytes, MinRate: t.cfg.MinRate, SpoolDir: filepath.Join(t.cfg.StateDir, "spool"),
		Stored: t.stored, Event: t.volumeEvent, Logger: t.log, Failpoints: t.deps.Failpoints,
	})
}

// discover lists the device's volumes of this pool, reading their labels.
func (t *Tier) discover(ctx context.Context) ([]string, error) {
	barcodes, err := t.dev.Barcodes()
	if err != nil {
		return nil, err
	}
	if !t.dev.Emulated() {
		barcodes = []string{""} // whatever is loaded
	}
	var out []string
	for _, b := range barcodes {
		d, err := t.dev.Mount(ctx, b)
		if err != nil {
			t.log.Warn("cannot mount volume", "volume", b, "err", err)
			continue
		}
		l, err := bundle.ReadLabel(d)
		if err != nil {
			t.log.Info("cartridge without a Strata label: not used", "volume", b, "err", err)
			continue
		}
		switch {
		case l.Pool != t.cfg.Pool:
			continue
		case b != "" && l.Volume != b:
			t.log.Warn("cartridge label names another volume: never written", "barcode", b, "label", l.Volume)
			t.volumeEvent(VolumeEvent{Volume: b, Kind: EventLabelMismatch,
				Err: fmt.Errorf("label says volume %q", l.Volume)})
			continue
		case t.cfg.BlockSize != 0 && l.BlockSize != t.cfg.BlockSize:
			t.log.Warn("volume has another block size: not written", "volume", l.Volume,
				"block_size", l.BlockSize, "want", t.cfg.BlockSize)
			continue
		}
		out = append(out, l.Volume)
	}
	if err := t.dev.Dismount(ctx, ""); err != nil {
		t.log.Warn("dismount", "err", err)
	}
	return out, nil
}

// volumeEvent logs a volume event and records it.
func (t *Tier) volumeEvent(ev VolumeEvent) {
	switch ev.Kind {
	case EventMounted:
		t.log.Info("tape volume mounted", "volume", ev.Volume)
	case EventFull:
		t.log.Warn("tape volume full: moving on to the next volume", "volume", ev.Volume, "err", ev.Err)
	case EventWriteProtected:
		t.log.Warn("tape volume write protected: not written, moving on", "volume", ev.Volume)
	case EventLabelMismatch:
		t.log.Error("tape volume label does not match: never written", "volume", ev.Volume, "err", ev.Err)
	case EventContinued:
		t.log.Info("bundle continues on the next volume", "volume", ev.Volume)
	default:
		t.log.Error("tape volume error: moving on", "volume", ev.Volume, "kind", ev.Kind, "err", ev.Err)
	}
	st := VolumeState{Volume: ev.Volume, State: ev.Kind, At: time.Now()}
	if ev.Err != nil {
		st.Error = ev.Err.Error()
	}
	t.vmu.Lock()
	if ev.Kind != EventContinued {
		t.vols[ev.Volume] = st
	}
	t.vmu.Unlock()
	if t.deps.Event != nil {
		t.deps.Event(ev)
	}
}

// copyLister lists an object's copies: the catalog.
type copyLister interface {
	Copies(objectID string) ([]catalog.Copy, error)
}

// CatalogCopy is a TierDeps.Copy backed by the catalog: the good copy of
// an object on tape tier name.
func CatalogCopy(cat copyLister, name string) func(string) (TapeCopy, bool, error) {
	return func(objectID string) (TapeCopy, bool, error) {
		cps, err := cat.Copies(objectID)
		if errors.Is(err, catalog.ErrNotFound) {
			return TapeCopy{}, false, nil
		}
		if err != nil {
			return TapeCopy{}, false, err
		}
		for _, c := range cps {
			if c.Tier == name && c.State == catalog.CopyGood && c.Tape != nil {
				return TapeCopy{Pos: *c.Tape, Size: c.Size, PackedSize: c.PackedSize, PackedSum: c.PackedSum}, true, nil
			}
		}
		return TapeCopy{}, false, nil
	}
}
