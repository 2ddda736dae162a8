package catalog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// FormatVersion is the on-disk format this package reads and writes.
const FormatVersion = 1

// Errors.
var (
	ErrNotFound = errors.New("catalog: not found")
	ErrClosed   = errors.New("catalog: closed")
	// ErrFormat: the database was written in another format version (or is
	// not a catalog). Rebuild it with `strata replay`.
	ErrFormat = errors.New("catalog: unsupported on-disk format")
)

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
}

// EnsureDefaults fills in zero fields.
func (o *Options) EnsureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CacheEntries == 0 {
		o.CacheEntries = 1 << 16
	}
	if o.BlockCacheBytes == 0 {
		o.BlockCacheBytes = 64 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = 64 << 20
	}
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
	dir string
	log *slog.Logger
	wo  *pebble.WriteOptions

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

	// mu guards db against Close: readers and Apply hold it shared, Close
	// exclusively.
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
	pcache := pebble.NewCache(opts.BlockCacheBytes)
	defer pcache.Unref()
	po := &pebble.Options{
		Cache:              pcache,
		Logger:             pebbleLogger{opts.Logger},
		MemTableSize:       opts.MemTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
	}
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("catalog: open %s: %w", dir, err)
	}
	c := &Catalog{dir: dir, log: opts.Logger, wo: pebble.NoSync, waitCh: make(chan struct{}), filterMin: minFilterKeys}
	if opts.Sync {
		c.wo = pebble.Sync
	}
	c.mu.db = db
	c.cache.init(opts.CacheEntries)
	if err := c.load(); err != nil {
		db.Close()
		return nil, err
	}
	return c, nil
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

// Close flushes and closes the database. It is safe to call more than once
// and wakes every WaitSeq with ErrClosed.
func (c *Catalog) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil
	}
	c.mu.closed = true
	c.notify()
	err := c.mu.db.Flush()
	if cerr := c.mu.db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("catalog: close: %w", err)
	}
	return nil
}

// rlock takes the shared lock and returns the database, or ErrClosed.
func (c *Catalog) rlock() (*pebble.DB, error) {
	c.mu.RLock()
	if c.mu.closed {
		c.mu.RUnlock()
		return nil, ErrClosed
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

// pebbleLogger sends Pebble's messages to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug("pebble: " + fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("pebble: " + fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	l.log.Error(msg)
	panic(msg)
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
