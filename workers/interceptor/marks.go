//go:build linux

package interceptor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// stubLister lists the catalog's stubs.
type stubLister interface {
	Stubs(fn func(catalog.File) error) error
}

// MarkCatalogStubs puts a mark on every stub the catalog knows, before the
// daemon reports ready. A stub whose xattrs already say archived finished
// its recall just before a crash, before recall.completed was published:
// that completion is published now (FinishedBeforeCrash), so the catalog
// converges. It returns how many stubs it marked and how many the catalog
// names at a path that holds no file (moved or deleted while the daemon
// was down: the walk of the hot trees finds the moved ones, MarkFound).
func (i *Interceptor) MarkCatalogStubs(cat stubLister) (marked, missing int, err error) {
	err = cat.Stubs(func(f catalog.File) error {
		if info, err := stub.ReadPath(f.Path); err == nil && info.FileID == f.ID && info.ObjectID == f.ObjectID && info.State == stub.Archived {
			i.log.Info("recall finished before a crash; recording it", "path", f.Path, "file_id", f.ID)
			i.FinishedBeforeCrash(info, f.Path)
			return nil
		}
		if err := i.Mark(f.Path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				missing++
				i.log.Warn("stub in the catalog is missing on disk (moved or deleted while the daemon was down?)", "path", f.Path)
				return nil
			}
			return fmt.Errorf("mark stub %s: %w", f.Path, err)
		}
		marked++
		return nil
	})
	return marked, missing, err
}

// MarkFound marks every stub of found (file id → path, as a walk of the
// hot trees found them), wherever it is now: a stub renamed while the
// daemon was down is not where the catalog says, and must be guarded all
// the same. Only a file with holes needs the guard: one whose xattrs say
// released but that still holds its data is a release cut short — its
// bytes are all there, and the redelivered release marks it (marking it
// here would make the release's verification reads look like a recall).
func (i *Interceptor) MarkFound(found map[string]string) error {
	for id, path := range found {
		if holes, err := hasHole(path); err != nil || !holes {
			continue
		}
		if err := i.Mark(path); err != nil {
			return fmt.Errorf("mark stub %s (file %s): %w", path, id, err)
		}
	}
	return nil
}

// hasHole reports whether the regular file at path has a hole below its
// size. Not its block count: a stub of a few bytes can own more blocks
// than its size (those holding its xattrs) and still be all hole.
func hasHole(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, err
	}
	h, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
	if err != nil {
		return false, err
	}
	return h < st.Size, nil
}

// MarkCount returns the number of inode marks of this interceptor's
// fanotify group, as the kernel reports them (/proc/self/fdinfo of the
// group fd: one "fanotify ino:" line per mark). It counts only this
// group's marks: the modification watcher's group, with its marks on
// clean recalled files, is another fd. Marks a predecessor made on a
// group taken over from the holder are counted too (they guard stubs).
func (i *Interceptor) MarkCount() (int, error) {
	f, err := os.Open("/proc/self/fdinfo/" + strconv.Itoa(i.g.fd))
	if err != nil {
		return 0, fmt.Errorf("count fanotify marks: %w", err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if bytes.HasPrefix(sc.Bytes(), []byte("fanotify ino:")) {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("count fanotify marks: %w", err)
	}
	return n, nil
}
