package stub

import (
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
)

// FileStat is st as events record it, with the inode generation gen (0
// where the filesystem has none or it is not needed).
func FileStat(st *unix.Stat_t, gen uint64) events.FileStat {
	return events.FileStat{Size: st.Size, Mode: st.Mode, UID: st.Uid, GID: st.Gid,
		AtimeNS: st.Atim.Nano(), MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano(),
		Dev: st.Dev, Inode: st.Ino, Generation: gen}
}

// Lstat is FileStat of path, without following a symlink and with
// generation 0 (enough to describe a modification).
func Lstat(path string) (events.FileStat, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return events.FileStat{}, err
	}
	return FileStat(&st, 0), nil
}

// Modified is the file.modified event of the managed file fileID (archived
// as objectID) whose content changed, as Strata observed it (st, at path),
// with its message id parts. Every stage that finds a modification builds
// the event here — the modification watcher at the write, the interceptor
// when a program wrote a stub during its recall, the reconciler after a
// scan — so that the same observation, reported by two of them, is
// recorded once (the ids name the file, the object and the observed size,
// mtime and ctime).
func Modified(fileID, objectID, path string, st events.FileStat) (*events.FileModified, []string) {
	return &events.FileModified{FileID: fileID, Path: path, ObjectID: objectID, Stat: st},
		[]string{fileID, objectID, strconv.FormatInt(st.Size, 10), strconv.FormatInt(st.MtimeNS, 10), strconv.FormatInt(st.CtimeNS, 10)}
}
