package catalog

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/strata-hsm/strata/pipeline"
)

// FormatVersion is the on-disk format this package reads and writes.
// Format 2 keys paths and pins by host (several hosts project one log);
// format 1 did not. An older catalog is refused with ErrFormat, which the
// daemon answers by rebuilding it from the log (Replace).
const FormatVersion = 2

// Errors.
var (
	ErrNotFound = errors.New("catalog: not found")
	ErrClosed   = errors.New("catalog: closed")
	// ErrFormat: the database was written in another format version (or is
	// not a catalog). Rebuild it with `strata replay`.
	ErrFormat = errors.New("catalog: unsupported on-disk format")
	// ErrFailed: Pebble hit a fatal write error (its write-ahead log
	// could not be written, e.g. the disk is full). Nothing more is
	// written until Reopen; reads go on.
	ErrFailed = errors.New("catalog: database failed a write")
	// ErrUnavailable: a Reopen could not open the database again; it is
	// tried again by the next Reopen.
	ErrUnavailable = errors.New("catalog: database unavailable")
)

// Space is the filesystem the catalog lives on as the daemon watches it
// (a *pipeline.Space). Follow writes nothing while it is Full; errors that
// mean it is full are Reported to it.
type Space interface {
	Full() bool
	Wait(ctx context.Context) error
	Report(err error) bool
}

var (
	keyFormat = []byte("meta/format")
	keySeq    = []byte("meta/seq")
	keyStats  = []byte("meta/stats")
)

// Options configure a catalog.
type Options struct {
	// Logger receives the catalog's and Pebble's messages. Nil discards them.
	Logger *slog.Logger
	// Sync makes every Apply durable before it returns (fsync of the
	// write-ahead log). Leave it false for a replay: a crash then loses at
	// most the tail, which the next replay redoes; the last applied
	// sequence always matches the state.
	Sync bool
	// CacheEntries bounds the records Apply keeps decoded in memory between
	// batches (0: 1<<16). Larger is faster for replays with long gaps
	// between the events of one file.
	CacheEntries int
	// BlockCacheBytes is Pebble's block cache size (0: 64 MiB).
	BlockCacheBytes int64
	// MemTableBytes is Pebble's memtable size (0: 64 MiB).
	MemTableBytes uint64
	// ReplaceStep, if set, is called by Replace after each of its durable
	// steps (ReplaceRebuilt, ReplaceMovedAside, ReplaceSwapped): crash
	// tests kill the process there (cmd/strata arms it with failpoints).
	ReplaceStep func(step string)
	// Space, if set, is the filesystem of the catalog (see Space).
	Space Space
	// Host is the local host's token: the queries that a host asks of
	// its own files (FileByPath, Files, Stubs, Pinned, Pins,
	// FilesByObject) answer for it alone, since every host's catalog
	// projects every host's events. "" answers for every host (a
	// catalog read by tools, tests of one host). The projection itself
	// does not depend on it: catalogs of any two hosts that applied the
	// same log are equal.
	Host string
}

// EnsureDefaults fills in zero fields.
func (o *Options) EnsureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.CacheEntries = cmp.Or(o.CacheEntries, 1<<16)
	o.BlockCacheBytes = cmp.Or(o.BlockCacheBytes, 64<<20)
	o.MemTableBytes = cmp.Or(o.MemTableBytes, 64<<20)
}

// Validate reports nonsensical options.
func (o *Options) Validate() error {
	if o.CacheEntries < 0 {
		return fmt.Errorf("catalog: cache entries %d: want >= 0", o.CacheEntries)
	}
	if o.BlockCacheBytes < 0 {
		return fmt.Errorf("catalog: block cache %d bytes: want >= 0", o.BlockCacheBytes)
	}
	return nil
}

// Catalog is an open catalog database.
//
// Lock order: followMu, then applyMu, then mu.
type Catalog struct {
	dir  string
	opts Options
	log  *slog.Logger
	wo   *pebble.WriteOptions

	// failed holds the fatal write error after which Pebble must not be
	// written to (nor flushed): set by apply when a commit fails, cleared
	// by Reopen. INVARIANT: while failed is set, nothing calls a writing
	// method of mu.db (Apply, Flush); Close and Reopen only close it.
	failed atomic.Pointer[error]
	// bg counts Pebble's background errors (failed flushes and
	// compactions), bgSeen is poked at each, and bgLog rate-limits the
	// lines about those not caused by a full disk.
	bg     atomic.Uint64
	bgSeen chan struct{}
	bgLog  every

	// followMu is held by Follow while it applies a batch, and by Verify
	// for as long as it needs the catalog to stand still.
	followMu sync.Mutex

	// applyMu serialises Apply. Protected by applyMu: cache, filter, st.
	applyMu sync.Mutex
	cache   cache
	filter  *keyFilter // nil until the first Apply
	// filterMin is the smallest filter capacity (minFilterKeys; tests
	// lower it to exercise rebuilds).
	filterMin int
	st        stats

	// mu guards db against Close and Reopen: readers and Apply hold it
	// shared, Close and Reopen exclusively. db is nil only after a Reopen
	// that could not open the database (reads return ErrUnavailable).
	mu struct {
		sync.RWMutex
		db     *pebble.DB
		closed bool
	}

	// seq is the last applied sequence; waitCh is closed and replaced
	// whenever it advances (or the catalog closes). Protected by waitMu:
	// waitCh.
	seq    atomic.Uint64
	waitMu sync.Mutex
	waitCh chan struct{}
}

// Open opens (creating if needed) the catalog in dir.
func Open(dir string, opts Options) (*Catalog, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := RecoverReplace(dir); err != nil {
		return nil, err
	}
	c := &Catalog{dir: dir, opts: opts, log: opts.Logger, wo: pebble.NoSync, waitCh: make(chan struct{}),
		filterMin: minFilterKeys, bgSeen: make(chan struct{}, 1), bgLog: every{period: pipeline.DefaultRemind}}
	if opts.Sync {
		c.wo = pebble.Sync
	}
	db, err := c.openDB()
	if err != nil {
		return nil, err
	}
	c.mu.db = db
	c.cache.init(opts.CacheEntries)
	if err := c.load(); err != nil {
		db.Close()
		return nil, err
	}
	return c, nil
}

// openDB opens the Pebble database of c.dir (with a block cache of its
// own: a closed database drops its cache).
func (c *Catalog) openDB() (*pebble.DB, error) {
	pcache := pebble.NewCache(c.opts.BlockCacheBytes)
	defer pcache.Unref()
	po := &pebble.Options{
		Cache:              pcache,
		Logger:             pebbleLogger{c},
		MemTableSize:       c.opts.MemTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
		EventListener:      &pebble.EventListener{BackgroundError: c.backgroundError},
	}
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(c.dir, po)
	if err != nil {
		if c.opts.Space != nil {
			c.opts.Space.Report(err)
		}
		return nil, fmt.Errorf("catalog: open %s: %w", c.dir, err)
	}
	return db, nil
}

// load checks the format version and reads the sequence and counters.
func (c *Catalog) load() error {
	db := c.mu.db
	v, err := get(db, keyFormat)
	switch {
	case errors.Is(err, ErrNotFound):
		empty, err := isEmpty(db)
		if err != nil {
			return err
		}
		if !empty {
			return fmt.Errorf("%w: %s has no format version (not a catalog?): move it away and run `strata replay`", ErrFormat, c.dir)
		}
		if err := db.Set(keyFormat, []byte(strconv.Itoa(FormatVersion)), pebble.Sync); err != nil {
			return fmt.Errorf("catalog: write format version: %w", err)
		}
		return nil
	case err != nil:
		return err
	}
	if got := string(v); got != strconv.Itoa(FormatVersion) {
		return fmt.Errorf("%w: %s is format %q, this strata uses %d: rebuild it with `strata replay`", ErrFormat, c.dir, got, FormatVersion)
	}
	v, err = get(db, keySeq)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return err
	case len(v) != 8:
		return fmt.Errorf("%w: meta/seq is %d bytes", errCorrupt, len(v))
	default:
		c.seq.Store(binary.BigEndian.Uint64(v))
	}
	v, err = get(db, keyStats)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return err
	default:
		if c.st, err = decodeStats(v); err != nil {
			return err
		}
	}
	return nil
}

func isEmpty(db *pebble.DB) (bool, error) {
	it, err := db.NewIter(nil)
	if err != nil {
		return false, fmt.Errorf("catalog: %w", err)
	}
	empty := !it.First()
	if err := it.Close(); err != nil {
		return false, fmt.Errorf("catalog: %w", err)
	}
	return empty, nil
}

// get returns a copy of the value of key, or ErrNotFound.
func get(db pebble.Reader, key []byte) ([]byte, error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: get %q: %w", key, err)
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, nil
}

// closeFlushWait bounds the flush Close does before closing: what is not
// flushed is in the write-ahead log, recovered at the next Open.
const closeFlushWait = 10 * time.Second

// Close closes the database, and wakes every WaitSeq with ErrClosed. It is
// safe to call more than once and returns in bounded time even when the
// disk is full: it flushes the memtable first (so that the next Open has
// little log to replay) only while writes work, and waits for that flush
// at most closeFlushWait or until Pebble reports a background error. A
// failed flush loses nothing: every committed batch is in the write-ahead
// log.
func (c *Catalog) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil
	}
	c.mu.closed = true
	c.notify()
	db := c.mu.db
	if db == nil {
		return nil
	}
	var err error
	if c.failed.Load() == nil && (c.opts.Space == nil || !c.opts.Space.Full()) {
		err = c.flushBounded(db)
	}
	if cerr := db.Close(); err == nil && c.failed.Load() == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("catalog: close: %w", err)
	}
	return nil
}

// flushBounded flushes db, giving up (without error: the data is in the
// write-ahead log) after closeFlushWait or at the first background error.
func (c *Catalog) flushBounded(db *pebble.DB) error {
	select {
	case <-c.bgSeen: // an error seen before: start afresh
	default:
	}
	done, err := db.AsyncFlush()
	if err != nil {
		return err
	}
	t := time.NewTimer(closeFlushWait)
	defer t.Stop()
	select {
	case <-done:
	case <-c.bgSeen:
		c.log.Warn("catalog: flush at close failed; closing without it (the write-ahead log has every batch)")
	case <-t.C:
		c.log.Warn("catalog: flush at close did not finish; closing without it (the write-ahead log has every batch)", "waited", closeFlushWait)
	}
	return nil
}

// Failed returns the fatal write error after which the catalog takes no
// more writes until Reopen, or nil.
func (c *Catalog) Failed() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// Reopen closes and opens again a catalog that Failed: Pebble cannot take
// writes after a fatal write error, and reopening recovers from its
// write-ahead log every batch that was committed (LastSeq is then what the
// database holds; applying resumes after it). It does nothing on a
// catalog that has not failed. Meant for Follow, once there is room.
func (c *Catalog) Reopen() error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	if c.failed.Load() == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return ErrClosed
	}
	if c.mu.db != nil {
		// Its error is the one that failed the database.
		_ = c.mu.db.Close()
		c.mu.db = nil
	}
	db, err := c.openDB()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	c.mu.db = db
	c.cache.init(c.cache.max)
	c.filter = nil
	if err := c.load(); err != nil {
		return err
	}
	c.failed.Store(nil)
	c.log.Info("catalog reopened after a failed write", "seq", c.seq.Load())
	c.notify()
	return nil
}

// rlock takes the shared lock and returns the database, or ErrClosed (or
// ErrUnavailable after a Reopen that could not open it).
func (c *Catalog) rlock() (*pebble.DB, error) {
	c.mu.RLock()
	if c.mu.closed {
		c.mu.RUnlock()
		return nil, ErrClosed
	}
	if c.mu.db == nil {
		c.mu.RUnlock()
		return nil, ErrUnavailable
	}
	return c.mu.db, nil
}

// LastSeq returns the last applied stream sequence (0 for an empty catalog).
func (c *Catalog) LastSeq() uint64 { return c.seq.Load() }

// WaitSeq blocks until the catalog has applied sequence seq, ctx ends
// (ctx.Err()) or the catalog closes (ErrClosed).
func (c *Catalog) WaitSeq(ctx context.Context, seq uint64) error {
	for {
		c.waitMu.Lock()
		ch := c.waitCh
		c.waitMu.Unlock()
		if c.seq.Load() >= seq {
			return nil
		}
		c.mu.RLock()
		closed := c.mu.closed
		c.mu.RUnlock()
		if closed {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notify wakes every WaitSeq.
func (c *Catalog) notify() {
	c.waitMu.Lock()
	close(c.waitCh)
	c.waitCh = make(chan struct{})
	c.waitMu.Unlock()
}

// bgRetryPause is how long a failed background job for lack of space
// holds Pebble back before its retry (see backgroundError).
const bgRetryPause = 250 * time.Millisecond

// backgroundError is Pebble's EventListener.BackgroundError: a flush or
// compaction failed. Pebble calls it on the failing job's goroutine, with
// DB.mu held, and retries a failed flush at once in a loop ("TODO: count
// consecutive flush errors and backoff"): on a full disk that loop wrote
// ~800 log lines a second and spun a core. So an out-of-space failure is
// reported to the Space (which logs the condition once), logged at Debug,
// and paused for bgRetryPause before Pebble retries — holding DB.mu delays
// only commits (which Follow does not make while the Space is full) and
// Close; reads do not take DB.mu. Other failures are logged, the first
// and then at most every pipeline.DefaultRemind.
func (c *Catalog) backgroundError(err error) {
	c.bg.Add(1)
	select {
	case c.bgSeen <- struct{}{}:
	default:
	}
	if pipeline.IsNoSpace(err) {
		if c.opts.Space != nil {
			c.opts.Space.Report(err)
		}
		c.log.Debug("pebble: background error", "err", err)
		time.Sleep(bgRetryPause)
		return
	}
	if ok, missed := c.bgLog.allow(); ok {
		c.log.Error("pebble: background error", "err", err, "errors_since_last_line", missed)
	}
}

// fatalError is what pebbleLogger.Fatalf panics with; apply recovers it
// (Pebble calls Fatalf on the committing goroutine when it cannot write
// its write-ahead log).
type fatalError struct{ err error }

// pebbleLogger sends Pebble's messages to slog.
type pebbleLogger struct{ c *Catalog }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.c.log.Debug("pebble: " + fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	if pipeline.IsNoSpace(errors.New(msg)) {
		l.c.log.Debug(msg)
		return
	}
	l.c.log.Error(msg)
}

// Fatalf must not return (Pebble goes on as if it had not failed). It
// panics with a fatalError: apply turns one raised by a commit into
// ErrFailed; one raised on Pebble's own goroutines (a MANIFEST that cannot
// be written after a flush) still ends the process, with the database
// consistent on disk for the next start.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	if !strings.Contains(msg, "no space left on device") {
		l.c.log.Error(msg)
	}
	panic(fatalError{errors.New(msg)})
}

// every rate-limits a log line: allow says yes at most once a period, and
// how many calls it said no to since.
type every struct {
	period time.Duration
	mu     sync.Mutex
	last   time.Time
	missed int
}

func (e *every) allow() (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now := time.Now(); e.last.IsZero() || now.Sub(e.last) >= e.period {
		e.last = now
		missed := e.missed
		e.missed = 0
		return true, missed
	}
	e.missed++
	return false, 0
}

// cache keeps decoded records between batches for Apply: two generations of
// at most max entries each; a hit in the old generation is promoted. The
// catalog is the only writer of its database, so the cache is coherent as
// long as it is dropped when a batch fails to commit.
type cache struct {
	cur, old map[string]any
	max      int
}

func (c *cache) init(max int) {
	c.max = max
	c.cur = make(map[string]any)
	c.old = nil
}

func (c *cache) get(k string) (any, bool) {
	if v, ok := c.cur[k]; ok {
		return v, true
	}
	if v, ok := c.old[k]; ok {
		c.put(k, v)
		return v, true
	}
	return nil, false
}

func (c *cache) put(k string, v any) {
	if c.max == 0 {
		return
	}
	if len(c.cur) >= c.max {
		c.old = c.cur
		c.cur = make(map[string]any, c.max/4)
	}
	c.cur[k] = v
}
