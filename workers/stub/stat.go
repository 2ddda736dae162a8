package stub

import (
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
