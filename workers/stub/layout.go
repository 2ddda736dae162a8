package stub

// Layout is what a release of a file keeps resident and what it punches.
//
// A release punches [PunchLo, PunchHi) and keeps the rest: the resident
// head [0, PunchLo) — the first head bytes rounded up to whole blocks, so
// that `file`, thumbnailers and media probes, which read a file's first
// bytes, are answered without a recall — and the resident tail
// [PunchHi, Size): the last tail bytes rounded out to whole blocks (`file`
// reads as many bytes at the end as at the start; some formats keep their
// index there) and, whenever a head or a tail is kept, at least the block
// that holds EOF when the size is not a multiple of the block size. That
// block must be resident for any access to be answered without a recall:
// an append (which fanotify reports at the fd's position, not at EOF)
// writes into it, and a fill would later take it for data. Without a head
// or tail nothing is kept: PunchLo is 0 and PunchHi is Size rounded up to
// a block (a punch that ends inside the last block would only zero its
// tail and keep it as data).
//
// Bytes kept are the object's bytes: a release punches only after it
// proved the file equal to its object. PunchLo >= PunchHi means there is
// nothing to punch (the file fits in its head and last block).
type Layout struct {
	Size, Block      int64
	PunchLo, PunchHi int64
}

// LayoutOf returns the layout of a release of a file of size bytes on a
// filesystem with blocks of blk bytes (st_blksize; at least 4096 is
// assumed), keeping a head of head bytes and a tail of tail bytes (0:
// none).
func LayoutOf(size, head, tail, blk int64) Layout {
	blk = max(blk, 4096)
	l := Layout{Size: size, Block: blk}
	if size <= 0 {
		return l
	}
	up := func(x int64) int64 { return (x + blk - 1) / blk * blk }
	l.PunchHi = up(size)
	if head <= 0 && tail <= 0 {
		return l
	}
	l.PunchLo = min(up(max(head, 0)), l.PunchHi)
	l.PunchHi = max(size-max(tail, 0), 0) / blk * blk
	if l.PunchLo > l.PunchHi {
		l.PunchLo = l.PunchHi
	}
	return l
}

// Empty reports whether the release punches nothing.
func (l Layout) Empty() bool { return l.PunchLo >= l.PunchHi }

// Kept returns the bytes a release of this layout leaves resident.
func (l Layout) Kept() int64 {
	return min(l.PunchLo, l.Size) + max(l.Size-max(l.PunchHi, l.PunchLo), 0)
}
