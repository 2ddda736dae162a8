package catalog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// File returns the record of a file id, or ErrNotFound.
func (c *Catalog) File(fileID string) (File, error) {
	db, err := c.rlock()
	if err != nil {
		return File{}, err
	}
	defer c.mu.RUnlock()
	f, err := readFile(db, fileID)
	if err != nil {
		return File{}, err
	}
	return *f, nil
}

func readFile(db pebble.Reader, fileID string) (*File, error) {
	v, err := get(db, []byte(pfxFile+fileID))
	if err != nil {
		return nil, fmt.Errorf("file %s: %w", fileID, err)
	}
	return decodeFile(fileID, v)
}

// FileByPath returns the file at path p on the local host (Options.Host;
// with none, on any host), or ErrNotFound. Deleted files are not found by
// path.
func (c *Catalog) FileByPath(p string) (File, error) {
	return c.FileOn(c.opts.Host, p)
}

// FileOn returns the file at path p on host ("": any host), or
// ErrNotFound.
func (c *Catalog) FileOn(host, p string) (File, error) {
	db, err := c.rlock()
	if err != nil {
		return File{}, err
	}
	defer c.mu.RUnlock()
	id, err := lookupPath(db, host, p)
	if err != nil {
		return File{}, fmt.Errorf("path %s: %w", p, err)
	}
	f, err := readFile(db, id)
	if err != nil {
		return File{}, err
	}
	return *f, nil
}

// lookupPath returns the file id at path p on host; with host "" the
// first host that has one.
func lookupPath(db pebble.Reader, host, p string) (string, error) {
	if host != "" {
		id, err := get(db, []byte(pathKey(host, p)))
		return string(id), err
	}
	id := ""
	err := scan(db, pfxPath+p+hostSep, func(_, v []byte) error {
		id = string(v)
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return "", err
	}
	if id == "" {
		return "", ErrNotFound
	}
	return id, nil
}

// errStop ends a scan early.
var errStop = errors.New("stop")

// Versions returns the versions of a file, oldest first, or ErrNotFound if
// the file is unknown.
func (c *Catalog) Versions(fileID string) ([]Version, error) {
	db, err := c.rlock()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	if _, err := get(db, []byte(pfxFile+fileID)); err != nil {
		return nil, fmt.Errorf("file %s: %w", fileID, err)
	}
	return collect(db, pfxVersion+fileID+"/", parseVersion)
}

// parseVersion decodes a version/<file id>/<number> key and its value.
func parseVersion(k, v []byte) (Version, error) {
	rest := string(k[len(pfxVersion):])
	id, num, ok := strings.Cut(rest, "/")
	n, err := strconv.ParseUint(num, 10, 32)
	if !ok || err != nil {
		return Version{}, fmt.Errorf("%w: key %q", errCorrupt, k)
	}
	return decodeVersion(id, uint32(n), v)
}

// FilesByObject returns the files that have a version with objectID, in
// file id order (an object is shared by files with identical content).
func (c *Catalog) FilesByObject(objectID string) ([]File, error) {
	db, err := c.rlock()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	snap := db.NewSnapshot() // one consistent view for the walk and the lookups
	defer snap.Close()
	pfx := pfxObjFile + objectID + "/"
	return collect(snap, pfx, func(k, _ []byte) (File, error) {
		f, err := readFile(snap, string(k[len(pfx):]))
		if err != nil {
			return File{}, err
		}
		return *f, nil
	})
}

// Object returns an object, or ErrNotFound.
func (c *Catalog) Object(objectID string) (Object, error) {
	db, err := c.rlock()
	if err != nil {
		return Object{}, err
	}
	defer c.mu.RUnlock()
	v, err := get(db, []byte(pfxObject+objectID))
	if err != nil {
		return Object{}, fmt.Errorf("object %s: %w", objectID, err)
	}
	o, err := decodeObject(objectID, v)
	if err != nil {
		return Object{}, err
	}
	return *o, nil
}

// Copies returns every copy of an object (good and corrupt), in tier name
// order. An object without copies gives an empty slice, not an error.
func (c *Catalog) Copies(objectID string) ([]Copy, error) {
	db, err := c.rlock()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	pfx := pfxCopy + objectID + "/"
	return collect(db, pfx, func(k, v []byte) (Copy, error) {
		cp, err := decodeCopy(objectID, string(k[len(pfx):]), v)
		if err != nil {
			return Copy{}, err
		}
		return *cp, nil
	})
}

// StoreFailures returns why tiers have no copy of an object yet (the last
// object.store_failed of each tier since its last copy), in tier order.
func (c *Catalog) StoreFailures(objectID string) ([]StoreFailure, error) {
	db, err := c.rlock()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	pfx := pfxFail + objectID + "/"
	return collect(db, pfx, func(k, v []byte) (StoreFailure, error) {
		f, err := decodeStoreFailure(objectID, string(k[len(pfx):]), v)
		if err != nil {
			return StoreFailure{}, err
		}
		return *f, nil
	})
}

// EachStoreFailure calls fn for every object a tier failed to store and
// has not stored since, in object and tier order.
func (c *Catalog) EachStoreFailure(fn func(StoreFailure) error) error {
	db, err := c.rlock()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	return scan(db, pfxFail, func(k, v []byte) error {
		obj, tier, ok := strings.Cut(string(k[len(pfxFail):]), "/")
		if !ok {
			return fmt.Errorf("%w: key %q", errCorrupt, k)
		}
		f, err := decodeStoreFailure(obj, tier, v)
		if err != nil {
			return err
		}
		return fn(*f)
	})
}

// Files calls fn for every file (not deleted) of the local host
// (Options.Host; with none, of every host) at or under the directory
// prefix (e.g. "/data" matches /data and /data/x but not /data2), in path
// order. "/" or "" means every file. An error from fn stops the walk and is
// returned.
func (c *Catalog) Files(prefix string, fn func(File) error) error {
	return c.FilesOn(c.opts.Host, prefix, fn)
}

// FilesOn is Files for the files of host; host "" means every host (in
// path order, then host order for one path).
func (c *Catalog) FilesOn(host, prefix string, fn func(File) error) error {
	db, err := c.rlock()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	snap := db.NewSnapshot() // one consistent view for the walk and the lookups
	defer snap.Close()
	visit := func(k, v []byte) error {
		if host != "" {
			if _, h := splitHost(string(k[len(pfxPath):])); h != host {
				return nil
			}
		}
		f, err := readFile(snap, string(v))
		if err != nil {
			return err
		}
		return fn(*f)
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		return scan(snap, pfxPath, visit)
	}
	// The file at prefix itself, then everything under prefix/ (paths
	// like "prefix.txt" sort between them and are not wanted).
	if err := scan(snap, pfxPath+prefix+hostSep, visit); err != nil {
		return err
	}
	return scan(snap, pfxPath+prefix+"/", visit)
}

// Stubs calls fn for every released file of the local host (Options.Host;
// with none, of every host), in file id order (the daemon re-marks them
// at start).
func (c *Catalog) Stubs(fn func(File) error) error {
	db, err := c.rlock()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	snap := db.NewSnapshot() // one consistent view for the walk and the lookups
	defer snap.Close()
	return scan(snap, pfxStub, func(k, _ []byte) error {
		f, err := readFile(snap, string(k[len(pfxStub):]))
		if err != nil {
			return err
		}
		if c.opts.Host != "" && f.Host != c.opts.Host {
			return nil
		}
		return fn(*f)
	})
}

// Pinned reports whether p or one of its ancestors is pinned on the local
// host (Options.Host; with none, on any host).
func (c *Catalog) Pinned(p string) (bool, error) {
	db, err := c.rlock()
	if err != nil {
		return false, err
	}
	defer c.mu.RUnlock()
	for p = path.Clean(p); ; p = path.Dir(p) {
		var err error
		if c.opts.Host != "" {
			_, err = get(db, []byte(pinKey(c.opts.Host, p)))
		} else {
			err = ErrNotFound
			if serr := scan(db, pfxPin+p+hostSep, func(_, _ []byte) error { return errStop }); errors.Is(serr, errStop) {
				err = nil
			} else if serr != nil {
				err = serr
			}
		}
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return false, err
		}
		if p == "/" || p == "." {
			return false, nil
		}
	}
}

// Pins calls fn for every path pinned on the local host (Options.Host;
// with none, on any host), in order.
func (c *Catalog) Pins(fn func(path string) error) error {
	db, err := c.rlock()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	return scan(db, pfxPin, func(k, _ []byte) error {
		p, host := splitHost(string(k[len(pfxPin):]))
		if c.opts.Host != "" && host != c.opts.Host {
			return nil
		}
		return fn(p)
	})
}

// Stats returns the counters as of the last applied batch.
func (c *Catalog) Stats() (Stats, error) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	if _, err := c.rlock(); err != nil {
		return Stats{}, err
	}
	defer c.mu.RUnlock()
	return c.st.public(c.seq.Load()), nil
}

// ScanFuncs are the callbacks of Scan; either may be nil.
type ScanFuncs struct {
	// File is called for every file record, in file id order, with its
	// versions (oldest first). f and versions are reused between calls:
	// copy what you keep.
	File func(f *File, versions []Version) error
	// Copy is called for every copy of every object, in object id and tier
	// order. cp is reused between calls.
	Copy func(cp *Copy) error
}

// Scan walks files (with their versions) and copies, concurrently (File and
// Copy are called from two goroutines, each sequentially), from one
// consistent snapshot, and returns the last applied sequence of that
// snapshot. An error from a callback stops the walk and is returned. Used by
// the export.
func (c *Catalog) Scan(fns ScanFuncs) (seq uint64, err error) {
	db, err := c.rlock()
	if err != nil {
		return 0, err
	}
	defer c.mu.RUnlock()
	snap := db.NewSnapshot()
	defer snap.Close()
	switch v, err := get(snap, keySeq); {
	case err == nil && len(v) == 8:
		seq = binary.BigEndian.Uint64(v)
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return 0, err
	default:
		return 0, fmt.Errorf("%w: meta/seq is %d bytes", errCorrupt, len(v))
	}
	// The two walks run concurrently: the export spends most of its time
	// in the callbacks, and they feed two independent tables.
	var wg sync.WaitGroup
	var ferr, cerr error
	if fns.File != nil {
		wg.Go(func() { ferr = scanFiles(snap, fns.File) })
	}
	if fns.Copy != nil {
		wg.Go(func() {
			cerr = scan(snap, pfxCopy, func(k, v []byte) error {
				obj, tier, ok := strings.Cut(string(k[len(pfxCopy):]), "/")
				if !ok {
					return fmt.Errorf("%w: key %q", errCorrupt, k)
				}
				cp, err := decodeCopy(obj, tier, v)
				if err != nil {
					return err
				}
				return fns.Copy(cp)
			})
		})
	}
	wg.Wait()
	if err := errors.Join(ferr, cerr); err != nil {
		return 0, err
	}
	return seq, nil
}

// scanFiles merges the file and version key ranges.
func scanFiles(snap *pebble.Snapshot, fn func(f *File, versions []Version) error) error {
	fit, err := snap.NewIter(prefixBounds(pfxFile))
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	defer fit.Close()
	vit, err := snap.NewIter(prefixBounds(pfxVersion))
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	defer vit.Close()
	var versions []Version
	vpfx := []byte(pfxVersion)
	vok := vit.First()
	for ok := fit.First(); ok; ok = fit.Next() {
		id := string(fit.Key()[len(pfxFile):])
		f, err := decodeFile(id, fit.Value())
		if err != nil {
			return err
		}
		vpfx = append(append(vpfx[:len(pfxVersion)], id...), '/')
		// Versions sorting before this file have no file record (only in
		// a corrupt database): skip them.
		for vok && bytes.Compare(vit.Key(), vpfx) < 0 {
			vok = vit.Next()
		}
		versions = versions[:0]
		for vok && bytes.HasPrefix(vit.Key(), vpfx) {
			v, err := parseVersion(vit.Key(), vit.Value())
			if err != nil {
				return err
			}
			versions = append(versions, v)
			vok = vit.Next()
		}
		if err := fn(f, versions); err != nil {
			return err
		}
	}
	if err := errors.Join(fit.Error(), vit.Error()); err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	return nil
}

// prefixBounds returns iterator bounds covering every key with prefix pfx.
func prefixBounds(pfx string) *pebble.IterOptions {
	upper := []byte(pfx)
	upper[len(upper)-1]++ // prefixes end in '/', never 0xff
	return &pebble.IterOptions{LowerBound: []byte(pfx), UpperBound: upper}
}

// collect returns decode of every key with prefix pfx and its value, in
// key order; the first error stops it.
func collect[T any](db pebble.Reader, pfx string, decode func(k, v []byte) (T, error)) ([]T, error) {
	var out []T
	err := scan(db, pfx, func(k, v []byte) error {
		x, err := decode(k, v)
		if err == nil {
			out = append(out, x)
		}
		return err
	})
	return out, err
}

// scan calls fn for every key with prefix pfx, in order. k and v are valid
// only during the call.
func scan(db pebble.Reader, pfx string, fn func(k, v []byte) error) error {
	it, err := db.NewIter(prefixBounds(pfx))
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Error(); err != nil {
		it.Close()
		return fmt.Errorf("catalog: %w", err)
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	return nil
}
