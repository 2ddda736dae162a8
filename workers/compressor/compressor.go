// Package compressor packs one hot file into the staging directory: it
// reads the file once, writes it as a seekable zstd object (see
// workers/object) under <staging>/<object_id>.zst with its manifest
// <object_id>.json, and proves the file did not change while it was read.
//
// Durability and visibility: the object is written to a temporary name
// (".pack-*.tmp", never mistaken for an object), fsynced, and renamed only
// after the file is known unchanged; the manifest is written, fsynced and
// renamed before the object, so a staged <id>.zst always has its <id>.json;
// the directory is fsynced last. On any error (the file changed, the disk is
// full, the context ended) the temporary files are removed: nothing partial
// is ever visible under an object name. Temporary files left by a crash are
// removed by RemoveTemps.
//
// Identical content packs to the same object id; a second file with the
// same content finds the object already staged, verifies it, and keeps it
// (dedup).
package compressor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/object"
)

// Errors callers test with errors.Is.
var (
	// ErrChanged means the file was modified, truncated, replaced or deleted
	// while it was read: the object was discarded; select the file again
	// later.
	ErrChanged = errors.New("compressor: file changed while it was read")
	// ErrNotRegular means the path is not a regular file (directory,
	// symlink, device, FIFO, socket).
	ErrNotRegular = errors.New("compressor: not a regular file")
)

// Temporary files in the staging directory start with this prefix.
const tempPrefix = ".pack-"

// Config configures a Compressor.
type Config struct {
	// StagingDir receives the objects; it must exist.
	StagingDir string
	// Object are the packing options (frame size, level, concurrency).
	Object object.Options
}

// EnsureDefaults fills zero fields with defaults.
func (c *Config) EnsureDefaults() { c.Object.EnsureDefaults() }

// Validate checks c after EnsureDefaults. Errors are *pipeline.ConfigError
// naming the key of the [compressor] section: the limits an administrator
// may set are narrower than what the object format allows (frames of 64
// KiB to 64 MiB keep seek tables small and recalls fine-grained; levels
// above 19 cost far more than they save).
func (c Config) Validate() error {
	if c.StagingDir == "" {
		return pipeline.BadConfig("staging_dir", nil, "required")
	}
	o := c.Object
	switch {
	case o.Level < 1 || o.Level > 19:
		return pipeline.BadConfig("level", o.Level, "want 1-19")
	case o.FrameSize < 64<<10 || o.FrameSize > 64<<20:
		return pipeline.BadConfig("frame_size", o.FrameSize, "want 64 KiB to 64 MiB")
	}
	return o.Validate()
}

// Result is what Pack produced.
type Result struct {
	ObjectID string
	// Manifest describes the staged object, with the File section of the
	// file just read (when the object was already staged, the manifest file
	// on disk keeps the File section of the file that staged it first).
	Manifest     object.Manifest
	ObjectPath   string // <staging>/<object_id>.zst
	ManifestPath string // <staging>/<object_id>.json
	// Stat is the file as read: identical before and after the read in
	// inode, generation, size, mtime and ctime.
	Stat events.FileStat
	// Deduped reports that the object was already staged and kept.
	Deduped bool
}

// ObjectPacked returns the object.packed event for this result, for the
// file fileID. Staging is the staged object's path.
func (r Result) ObjectPacked(fileID string) *events.ObjectPacked {
	m := r.Manifest
	path := ""
	if m.File != nil {
		path = m.File.Path
	}
	return &events.ObjectPacked{
		FileID:     fileID,
		Path:       path,
		ObjectID:   r.ObjectID,
		Stat:       r.Stat,
		Size:       m.Size,
		PackedSize: m.PackedSize,
		PackedSum:  m.PackedSum,
		FrameSize:  m.FrameSize,
		Frames:     int64(len(m.Frames)),
		Staging:    r.ObjectPath,
	}
}

// Compressor packs files into one staging directory, reusing its encoders
// between files. It is safe for concurrent use.
type Compressor struct {
	cfg    Config
	dir    string
	packer *object.Packer
	// hooks are test seams; nil in production.
	hooks struct {
		// onRead is called after each read of the file with the bytes
		// read so far.
		onRead func(total int64)
	}
}

// New returns a Compressor for cfg.
func New(cfg Config) (*Compressor, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.StagingDir)
	if err != nil {
		return nil, fmt.Errorf("compressor: staging dir %s: %w", cfg.StagingDir, err)
	}
	p, err := object.NewPacker(cfg.Object)
	if err != nil {
		return nil, fmt.Errorf("compressor: %w", err)
	}
	return &Compressor{cfg: cfg, dir: dir, packer: p}, nil
}

// Pack reads the regular file at path, inside the hot tree root, once and
// stages it as an object. The file is opened beneath root (package
// beneath): a path that leaves the tree through a symlink is
// beneath.ErrOutside, and nothing outside is ever read. It returns an
// error wrapping ErrChanged if the file changed during the read,
// ErrNotRegular if it is not a regular file, fs.ErrNotExist if it is gone,
// and the underlying errno (e.g. ENOSPC) when staging fails; in every
// error case nothing is left in the staging directory.
func (c *Compressor) Pack(ctx context.Context, root, path string) (res Result, err error) {
	path, err = filepath.Abs(path)
	if err != nil {
		return Result{}, fmt.Errorf("compressor: %s: %w", path, err)
	}
	if fi, err := os.Stat(c.dir); err != nil {
		return Result{}, fmt.Errorf("compressor: staging dir: %w", err)
	} else if !fi.IsDir() {
		return Result{}, fmt.Errorf("compressor: staging dir %s is not a directory", c.dir)
	}
	f, err := openNoATime(root, path)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	before, err := statFile(f)
	if err != nil {
		return Result{}, fmt.Errorf("compressor: %s: %w", path, err)
	}
	if before.Mode&unix.S_IFMT != unix.S_IFREG {
		return Result{}, fmt.Errorf("compressor: %s: %w (mode %#o)", path, ErrNotRegular, before.Mode)
	}
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL) // a hint; failure is harmless

	tmp, err := os.CreateTemp(c.dir, tempPrefix+"*.tmp")
	if err != nil {
		return Result{}, fmt.Errorf("compressor: create temp in staging: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		if err != nil {
			os.Remove(tmpName)
		}
	}()

	var r io.Reader = f
	if c.hooks.onRead != nil {
		r = &hookReader{r: f, fn: c.hooks.onRead}
	}
	m, err := c.packer.Pack(ctx, r, tmp)
	if err != nil {
		return Result{}, fmt.Errorf("compressor: %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return Result{}, fmt.Errorf("compressor: fsync staged object: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return Result{}, fmt.Errorf("compressor: close staged object: %w", err)
	}
	tmp = nil

	// The file must be the same before and after the read: same inode and
	// generation, size, mtime, ctime; still at path; and the size read
	// must be its size.
	after, err := statFile(f)
	if err != nil {
		return Result{}, fmt.Errorf("compressor: %s: %w", path, err)
	}
	if d := before.Diff(after); d != "" {
		return Result{}, fmt.Errorf("%w: %s: %s", ErrChanged, path, d)
	}
	if m.Size != before.Size {
		return Result{}, fmt.Errorf("%w: %s: read %d bytes, size is %d", ErrChanged, path, m.Size, before.Size)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Result{}, fmt.Errorf("%w: %s: deleted", ErrChanged, path)
		}
		return Result{}, fmt.Errorf("compressor: %s: %w", path, err)
	}
	if uint64(st.Ino) != before.Inode || uint64(st.Dev) != before.Dev {
		return Result{}, fmt.Errorf("%w: %s: replaced by another file", ErrChanged, path)
	}

	m.File = &object.FileInfo{
		Path: path, Size: before.Size, Mode: before.Mode, UID: before.UID, GID: before.GID,
		AtimeNS: before.AtimeNS, MtimeNS: before.MtimeNS, CtimeNS: before.CtimeNS,
	}
	res = Result{
		ObjectID:     m.ObjectID,
		Manifest:     m,
		ObjectPath:   filepath.Join(c.dir, m.ObjectID+".zst"),
		ManifestPath: filepath.Join(c.dir, m.ObjectID+".json"),
		Stat:         before,
	}

	if existing, ok := c.staged(res.ObjectPath, res.ManifestPath, m.ObjectID); ok {
		existing.File = m.File
		res.Manifest, res.Deduped = existing, true
		if err := os.Remove(tmpName); err != nil {
			return Result{}, fmt.Errorf("compressor: remove temp: %w", err)
		}
		return res, nil
	}

	js, err := m.Encode()
	if err != nil {
		return Result{}, fmt.Errorf("compressor: %w", err)
	}
	if err := writeFileSync(c.dir, res.ManifestPath, js); err != nil {
		return Result{}, err
	}
	if err := os.Rename(tmpName, res.ObjectPath); err != nil {
		return Result{}, fmt.Errorf("compressor: stage object: %w", err)
	}
	if err := syncDir(c.dir); err != nil {
		return Result{}, err
	}
	return res, nil
}

// staged reports whether the object id is already staged and sound: its
// manifest is valid and names it, and the object verifies against it.
func (c *Compressor) staged(objPath, manPath, id string) (object.Manifest, bool) {
	js, err := os.ReadFile(manPath)
	if err != nil {
		return object.Manifest{}, false
	}
	m, err := object.DecodeManifest(js)
	if err != nil || m.ObjectID != id {
		return object.Manifest{}, false
	}
	f, err := os.Open(objPath)
	if err != nil {
		return object.Manifest{}, false
	}
	defer f.Close()
	if err := object.Verify(f, m); err != nil {
		return object.Manifest{}, false
	}
	return m, true
}

// RemoveTemps removes the temporary files a crashed Pack may have left in
// stagingDir. Call it at start, before any Pack runs.
func RemoveTemps(stagingDir string) error {
	ents, err := os.ReadDir(stagingDir)
	if err != nil {
		return fmt.Errorf("compressor: read staging dir: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tempPrefix) && strings.HasSuffix(e.Name(), ".tmp") {
			if err := os.Remove(filepath.Join(stagingDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("compressor: remove %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// writeFileSync writes data to path through a fsynced temporary file in dir
// and renames it into place.
func writeFileSync(dir, path string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, tempPrefix+"*.tmp")
	if err != nil {
		return fmt.Errorf("compressor: create temp manifest: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("compressor: write manifest: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("compressor: fsync manifest: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("compressor: close manifest: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("compressor: stage manifest: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("compressor: open staging dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("compressor: fsync staging dir: %w", err)
	}
	return nil
}

// openNoATime opens path (inside root) read-only, beneath root, without
// following any symlink and
// without blocking on a FIFO, with O_NOATIME when permitted (only the owner
// or CAP_FOWNER may use it).
func openNoATime(root, path string) (*os.File, error) {
	flags := unix.O_RDONLY | unix.O_NONBLOCK
	fd, err := beneath.Open(root, path, flags|unix.O_NOATIME)
	if errors.Is(err, unix.EPERM) {
		fd, err = beneath.Open(root, path, flags)
	}
	if err != nil {
		return nil, fmt.Errorf("compressor: %w", err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// fsIocGetVersion is FS_IOC_GETVERSION: _IOR('v', 1, long).
const fsIocGetVersion = 0x80087601

// statFile returns what fstat and FS_IOC_GETVERSION say of f. A filesystem
// without inode generations (tmpfs, …) gives Generation 0.
func statFile(f *os.File) (events.FileStat, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return events.FileStat{}, fmt.Errorf("fstat: %w", err)
	}
	// The kernel stores an int (ext4, XFS, btrfs); a long-sized buffer is
	// safe whatever it writes.
	var gen uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocGetVersion, uintptr(unsafe.Pointer(&gen)))
	if errno != 0 {
		gen = 0
	}
	return events.FileStat{
		Size:       st.Size,
		Mode:       uint32(st.Mode),
		UID:        uint32(st.Uid),
		GID:        uint32(st.Gid),
		AtimeNS:    unix.TimespecToNsec(st.Atim),
		MtimeNS:    unix.TimespecToNsec(st.Mtim),
		CtimeNS:    unix.TimespecToNsec(st.Ctim),
		Dev:        uint64(st.Dev),
		Inode:      uint64(st.Ino),
		Generation: uint64(uint32(gen)),
	}, nil
}

type hookReader struct {
	r     io.Reader
	fn    func(int64)
	total int64
}

func (h *hookReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.total += int64(n)
	h.fn(h.total)
	return n, err
}
