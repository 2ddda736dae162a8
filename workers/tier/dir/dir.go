// Package dir is the directory tier: a tier.Target that keeps objects
// as plain files under a root directory (another disk, a NAS mount), laid
// out as described in package tier:
//
//	<root>/objects/<aa>/<id>.zst, <id>.json, <id>.b3
//
// Every file is written to a temporary name in the same directory, fsynced
// and renamed; the packed bytes are read back from disk (after dropping them
// from the page cache) and checked against their BLAKE3 before the rename,
// and the directory is fsynced after it. So a name ending in .zst always
// holds complete, verified bytes, and a crash or a full disk leaves at most
// a temporary file, never a visible partial object.
//
// The tier is unavailable (tier.ErrUnavailable) while <root>/objects
// is missing, e.g. when the disk holding it is not mounted; Open creates it.
package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// Failpoints of Put, in the order it reaches them (see package failpoint).
var (
	FailAfterTemp   = failpoint.Define("store.dir-after-temp", "packed bytes in a verified, fsynced temp file; manifest and sum not written")
	FailAfterSum    = failpoint.Define("store.dir-after-sum", "manifest and sum in place; object not yet renamed")
	FailAfterRename = failpoint.Define("store.dir-after-rename", "object renamed; directory not yet fsynced")
)

var _ tier.Target = (*Target)(nil)

// Config configures a directory tier.
type Config struct {
	Name string // tier name, a NATS subject token (e.g. "hdd")
	Root string // absolute path of the tier's root directory; never created
	// RequireMount: Root must be a mount point (a disk of its own). While
	// it is not — the disk is not mounted — the tier is unavailable:
	// copies are never written to the directory under the mount point,
	// on the local disk.
	RequireMount bool
}

// EnsureDefaults fills in defaults (there are none besides cleaning Root).
func (c *Config) EnsureDefaults() {
	if c.Root != "" {
		c.Root = filepath.Clean(c.Root)
	}
}

// Validate checks the config.
func (c *Config) Validate() error {
	if c.Name == "" || strings.ContainsAny(c.Name, ". *>\t\n") {
		return pipeline.NewConfigError("name", c.Name, errors.New("want a non-empty name without dots, spaces or wildcards"))
	}
	if !filepath.IsAbs(c.Root) {
		return pipeline.NewConfigError("path", c.Root, errors.New("want an absolute path"))
	}
	return nil
}

// Target is a directory tier.
type Target struct {
	cfg     Config
	objects string // <root>/objects
	log     *slog.Logger
	fp      failpoint.Set

	// prepared: <root>/objects exists and the temporary files a crash
	// left were removed (done once, the first time the root is there).
	prepared struct {
		sync.Mutex
		done bool
	}
}

// Open checks cfg and returns the tier. A root that is missing (or not a
// mount point, with RequireMount) does not fail Open: the tier is
// unavailable (every call returns an error wrapping tier.ErrUnavailable
// that says why) until the root is there; then <root>/objects is created
// if needed. logger is the caller's, naming the tier already (the daemon
// passes logger.With("tier", name)).
func Open(cfg Config, logger *slog.Logger) (*Target, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Target{cfg: cfg, objects: filepath.Join(cfg.Root, "objects"), log: logger,
		fp: failpoint.New()} // armed only by STRATA_FAILPOINTS, in crash tests
	// An unavailable root is the daemon's to report (it warns for every
	// tier kind that does not answer at start), not a failure of Open.
	if err := t.available(); err != nil && !errors.Is(err, tier.ErrUnavailable) {
		return nil, err
	}
	return t, nil
}

// prepare creates <root>/objects and removes the temporary files a crash
// left, once; the caller checked the root.
func (t *Target) prepare() error {
	t.prepared.Lock()
	defer t.prepared.Unlock()
	if t.prepared.done {
		return nil
	}
	if err := os.Mkdir(t.objects, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("directory tier %s: %w", t.cfg.Name, err)
	}
	if err := syncDir(t.cfg.Root); err != nil {
		return fmt.Errorf("directory tier %s: %w", t.cfg.Name, err)
	}
	if err := t.removeTemps(); err != nil {
		return fmt.Errorf("directory tier %s: %w", t.cfg.Name, err)
	}
	t.prepared.done = true
	return nil
}

// removeTemps deletes the temporary files (".<name>.tmp-*") a crash left
// in <root>/objects/<aa>/. They never hold anything an object name refers
// to. A tier directory is written by one daemon: Open runs before any Put.
func (t *Target) removeTemps() error {
	subs, err := os.ReadDir(t.objects)
	if err != nil {
		return fmt.Errorf("remove temporary files: %w", err)
	}
	for _, sub := range subs {
		if !sub.IsDir() || len(sub.Name()) != 2 {
			continue
		}
		dir := filepath.Join(t.objects, sub.Name())
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("remove temporary files: %w", err)
		}
		for _, e := range ents {
			if n := e.Name(); strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-") && e.Type().IsRegular() {
				if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("remove temporary file: %w", err)
				}
				t.log.Info("removed a temporary file left by an interrupted write", "path", filepath.Join(dir, n))
			}
		}
	}
	return nil
}

// Name implements tier.Target.
func (t *Target) Name() string { return t.cfg.Name }

// Kind implements tier.Target.
func (t *Target) Kind() string { return events.TierDirectory }

// Root returns the tier's root directory.
func (t *Target) Root() string { return t.cfg.Root }

func (t *Target) path(key string) string { return filepath.Join(t.cfg.Root, filepath.FromSlash(key)) }

// Capacity is the size of the filesystem the root is on (tier.Sizer).
func (t *Target) Capacity(ctx context.Context) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(t.cfg.Root, &st); err != nil {
		return 0, fmt.Errorf("directory tier %s: %w", t.cfg.Name, err)
	}
	return int64(st.Blocks) * st.Bsize, nil
}

// Location is the path of object id's packed bytes on this tier.
func (t *Target) Location(id string) string { return t.path(tier.ObjectKey(id)) }

// available returns an error wrapping ErrUnavailable, saying why, when the
// root is missing, not a directory, or (RequireMount) not a mount point;
// the first time the root is there it prepares it.
func (t *Target) available() error {
	unavailable := func(format string, args ...any) error {
		return fmt.Errorf("directory tier %s: %w: %s", t.cfg.Name, tier.ErrUnavailable, fmt.Sprintf(format, args...))
	}
	st, err := os.Stat(t.cfg.Root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return unavailable("%s does not exist (is its disk mounted?); Strata does not create a tier's root", t.cfg.Root)
	case err != nil:
		return unavailable("%v", err)
	case !st.IsDir():
		return unavailable("%s is not a directory", t.cfg.Root)
	}
	if t.cfg.RequireMount {
		mounted, err := isMountPoint(t.cfg.Root)
		if err != nil {
			return unavailable("%v", err)
		}
		if !mounted {
			return unavailable("%s is not a mount point (require_mount = true): is its disk mounted?", t.cfg.Root)
		}
	}
	if err := t.prepare(); err != nil {
		return err
	}
	if st, err := os.Stat(t.objects); err != nil || !st.IsDir() {
		return unavailable("%s is gone", t.objects)
	}
	return nil
}

// isMountPoint reports whether dir is the root of a mount: its mount id
// differs from its parent's (bind mounts included, which share a device).
func isMountPoint(dir string) (bool, error) {
	id := func(p string) (uint64, error) {
		var sx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &sx); err != nil {
			return 0, fmt.Errorf("statx %s: %w", p, err)
		}
		if sx.Mask&unix.STATX_MNT_ID == 0 {
			return 0, fmt.Errorf("statx %s: no mount id", p)
		}
		return sx.Mnt_id, nil
	}
	if dir == "/" {
		return true, nil
	}
	a, err := id(dir)
	if err != nil {
		return false, err
	}
	b, err := id(filepath.Dir(dir))
	if err != nil {
		return false, err
	}
	return a != b, nil
}

// missing maps a "file not found" for object id to ErrNotFound, or to
// ErrUnavailable when the whole tier is gone.
func (t *Target) missing(id string, err error) error {
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("directory tier %s: object %s: %w", t.cfg.Name, id, err)
	}
	if aerr := t.available(); aerr != nil {
		return aerr
	}
	return fmt.Errorf("directory tier %s: object %s: %w", t.cfg.Name, id, tier.ErrNotFound)
}

// Put implements tier.Target.
func (t *Target) Put(ctx context.Context, o tier.Object) (string, error) {
	if err := o.Validate(); err != nil {
		return "", fmt.Errorf("directory tier %s: put: %w", t.cfg.Name, err)
	}
	if err := t.available(); err != nil {
		return "", err
	}
	final := t.path(tier.ObjectKey(o.ID))
	dir := filepath.Dir(final)
	info, err := t.Verify(ctx, o.ID)
	switch {
	case err == nil && info.PackedSum == o.PackedSum:
		if err := t.ensureManifest(o); err != nil {
			return "", err
		}
		return final, nil
	case err == nil, errors.Is(err, tier.ErrNotFound), errors.Is(err, tier.ErrCorrupt):
		if err != nil && errors.Is(err, tier.ErrCorrupt) {
			t.log.Warn("replacing corrupt copy", "object", o.ID, "err", err)
		}
	default:
		return "", err
	}
	if err := t.mkdir(dir); err != nil {
		return "", err
	}
	// Order: the packed bytes to a verified temporary file; then the
	// manifest and the sum; then the rename that makes the object visible.
	// A failure before the last step leaves any previous copy as it was
	// (only a crash between the sum and the rename can pair an old copy
	// with a new sum, which Verify reports and the next Put repairs).
	tmp, err := t.writeTemp(ctx, o, dir)
	if err != nil {
		return "", fmt.Errorf("directory tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	t.fp.Hit(FailAfterTemp)
	err = writeAtomic(filepath.Join(dir, o.ID+".json"), o.Manifest)
	if err == nil {
		err = writeAtomic(filepath.Join(dir, o.ID+".b3"), tier.SumFile(o.ID, o.PackedSum))
	}
	if err == nil {
		t.fp.Hit(FailAfterSum)
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("directory tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	t.fp.Hit(FailAfterRename)
	if err := syncDir(dir); err != nil {
		return "", fmt.Errorf("directory tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	return final, nil
}

// writeTemp copies o's bytes to a temporary file in dir, fsyncs it, reads
// it back from disk and checks it, and returns its path.
func (t *Target) writeTemp(ctx context.Context, o tier.Object, dir string) (tmp string, err error) {
	src, err := o.Open()
	if err != nil {
		return "", fmt.Errorf("open source: %w", err)
	}
	defer src.Close()
	f, err := os.CreateTemp(dir, "."+o.ID+".zst.tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name() // not tmp: the error returns below set tmp to ""
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(name)
		}
	}()
	tmp = name
	// Reserve the space first where the filesystem can: a full disk then
	// fails at once instead of after writing most of the object.
	if ferr := unix.Fallocate(int(f.Fd()), 0, 0, o.PackedSize); ferr != nil && !errors.Is(ferr, unix.EOPNOTSUPP) {
		// A PathError: whoever watches the tier's space sees where.
		return "", fmt.Errorf("allocate %d bytes: %w", o.PackedSize, &fs.PathError{Op: "fallocate", Path: tmp, Err: ferr})
	}
	if _, err := io.CopyBuffer(f, ctxReader{ctx, tier.NewVerifyingReader(src, o.PackedSize, o.PackedSum)}, make([]byte, 1<<20)); err != nil {
		return "", fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("fsync %s: %w", tmp, err)
	}
	// Read back from the disk, not from the page cache.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	if err := tier.Check(ctx, io.NewSectionReader(f, 0, 1<<62), o.PackedSize, o.PackedSum); err != nil {
		return "", fmt.Errorf("verify %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", tmp, err)
	}
	return tmp, nil
}

// ensureManifest rewrites the manifest of a valid object if it differs.
func (t *Target) ensureManifest(o tier.Object) error {
	p := t.path(tier.ManifestKey(o.ID))
	if b, err := os.ReadFile(p); err == nil && string(b) == string(o.Manifest) {
		return nil
	}
	if err := writeAtomic(p, o.Manifest); err != nil {
		return fmt.Errorf("directory tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("directory tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	return nil
}

func (t *Target) mkdir(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("directory tier %s: %w", t.cfg.Name, err)
	}
	if err := syncDir(t.objects); err != nil {
		return fmt.Errorf("directory tier %s: %w", t.cfg.Name, err)
	}
	return nil
}

// GetRange implements tier.Target.
func (t *Target) GetRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error) {
	if err := tier.ValidateID(id); err != nil {
		return nil, fmt.Errorf("directory tier %s: get: %w", t.cfg.Name, err)
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("directory tier %s: object %s: bad range off %d n %d", t.cfg.Name, id, off, n)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(t.path(tier.ObjectKey(id)))
	if err != nil {
		return nil, t.missing(id, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("directory tier %s: object %s: %w", t.cfg.Name, id, err)
	}
	if off+n > st.Size() {
		f.Close()
		return nil, fmt.Errorf("directory tier %s: object %s: bytes %d+%d of %d: %w", t.cfg.Name, id, off, n, st.Size(), tier.ErrRange)
	}
	return tier.ExactReader(struct {
		io.Reader
		io.Closer
	}{ctxReader{ctx, io.NewSectionReader(f, off, n)}, f}, n), nil
}

// Manifest implements tier.Target.
func (t *Target) Manifest(ctx context.Context, id string) ([]byte, error) {
	if err := tier.ValidateID(id); err != nil {
		return nil, fmt.Errorf("directory tier %s: manifest: %w", t.cfg.Name, err)
	}
	if _, err := os.Stat(t.path(tier.ObjectKey(id))); err != nil {
		return nil, t.missing(id, err)
	}
	b, err := os.ReadFile(t.path(tier.ManifestKey(id)))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("directory tier %s: object %s: manifest missing: %w", t.cfg.Name, id, tier.ErrCorrupt)
		}
		return nil, fmt.Errorf("directory tier %s: object %s: %w", t.cfg.Name, id, err)
	}
	return b, nil
}

// Stat implements tier.Target.
func (t *Target) Stat(ctx context.Context, id string) (tier.Info, error) {
	if err := tier.ValidateID(id); err != nil {
		return tier.Info{}, fmt.Errorf("directory tier %s: stat: %w", t.cfg.Name, err)
	}
	st, err := os.Stat(t.path(tier.ObjectKey(id)))
	if err != nil {
		return tier.Info{}, t.missing(id, err)
	}
	sum, err := t.readSum(id)
	if err != nil {
		return tier.Info{}, err
	}
	return tier.Info{ID: id, PackedSize: st.Size(), PackedSum: sum}, nil
}

func (t *Target) readSum(id string) (string, error) {
	b, err := os.ReadFile(t.path(tier.SumKey(id)))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("directory tier %s: object %s: sum file missing: %w", t.cfg.Name, id, tier.ErrCorrupt)
		}
		return "", fmt.Errorf("directory tier %s: object %s: %w", t.cfg.Name, id, err)
	}
	sum, err := tier.ParseSum(id, b)
	if err != nil {
		return "", fmt.Errorf("directory tier %s: %w: %w", t.cfg.Name, tier.ErrCorrupt, err)
	}
	return sum, nil
}

// Verify implements tier.Target.
func (t *Target) Verify(ctx context.Context, id string) (tier.Info, error) {
	info, err := t.Stat(ctx, id)
	if err != nil {
		return info, err
	}
	f, err := os.Open(t.path(tier.ObjectKey(id)))
	if err != nil {
		return info, t.missing(id, err)
	}
	defer f.Close()
	if err := tier.Check(ctx, f, info.PackedSize, info.PackedSum); err != nil {
		return info, fmt.Errorf("directory tier %s: verify %s: %w", t.cfg.Name, id, err)
	}
	return info, nil
}

// List implements tier.Target.
func (t *Target) List(ctx context.Context, fn func(tier.Info) error) error {
	if err := t.available(); err != nil {
		return err
	}
	subs, err := os.ReadDir(t.objects)
	if err != nil {
		return fmt.Errorf("directory tier %s: list: %w", t.cfg.Name, err)
	}
	for _, sub := range subs {
		if !sub.IsDir() || len(sub.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(t.objects, sub.Name()))
		if err != nil {
			return fmt.Errorf("directory tier %s: list: %w", t.cfg.Name, err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			id, ok := strings.CutSuffix(e.Name(), ".zst")
			if !ok || tier.ValidateID(id) != nil || id[:2] != sub.Name() || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				return fmt.Errorf("directory tier %s: list: %w", t.cfg.Name, err)
			}
			sum, _ := t.readSum(id) // empty when missing: Verify reports it
			if err := fn(tier.Info{ID: id, PackedSize: fi.Size(), PackedSum: sum}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements tier.Target.
func (t *Target) Delete(ctx context.Context, id string) error {
	if err := tier.ValidateID(id); err != nil {
		return fmt.Errorf("directory tier %s: delete: %w", t.cfg.Name, err)
	}
	if err := t.available(); err != nil {
		return err
	}
	// The .zst first: the object stops being visible before its manifest goes.
	for _, key := range []string{tier.ObjectKey(id), tier.ManifestKey(id), tier.SumKey(id)} {
		if err := os.Remove(t.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("directory tier %s: delete %s: %w", t.cfg.Name, id, err)
		}
	}
	if err := syncDir(filepath.Dir(t.path(tier.ObjectKey(id)))); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("directory tier %s: delete %s: %w", t.cfg.Name, id, err)
	}
	return nil
}

// writeAtomic writes b to path via a temporary file, fsync and rename. The
// caller fsyncs the directory.
func writeAtomic(path string, b []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	return os.Rename(f.Name(), path)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
