//go:build linux

package tape

// Linux magnetic tape ioctls and structures (linux/mtio.h). x/sys/unix
// does not define them; their sizes and numbers are pinned by a test.
const (
	mtiocTop = 0x40086d01 // _IOW('m', 1, struct mtop)
	mtiocGet = 0x80306d02 // _IOR('m', 2, struct mtget)
	mtiocPos = 0x80086d03 // _IOR('m', 3, struct mtpos)
)

// mt_op codes.
const (
	mtFSF         = 1
	mtBSF         = 2
	mtFSR         = 3
	mtBSR         = 4
	mtWEOF        = 5
	mtREW         = 6
	mtOFFL        = 7
	mtNOP         = 8
	mtEOM         = 12
	mtSETBLK      = 20
	mtSEEK        = 22
	mtTELL        = 23
	mtLOAD        = 30
	mtUNLOAD      = 31
	mtCOMPRESSION = 32
	mtWEOFI       = 35
)

// mt_gstat bits (GMT_* in linux/mtio.h).
const (
	gmtEOF    = 0x80000000
	gmtBOT    = 0x40000000
	gmtEOT    = 0x20000000
	gmtEOD    = 0x08000000
	gmtWRPROT = 0x04000000
	gmtONLINE = 0x01000000
	gmtDROPEN = 0x00040000
)

// mtop is struct mtop: short mt_op; int mt_count (8 bytes with padding).
type mtop struct {
	op    int16
	_     int16
	count int32
}

// mtget is struct mtget on 64-bit Linux: five longs and two
// __kernel_daddr_t (int) = 48 bytes.
type mtget struct {
	typ    int64 // mt_type
	resid  int64 // mt_resid
	dsreg  int64 // mt_dsreg: block size and density
	gstat  int64 // mt_gstat: GMT_* bits
	erreg  int64 // mt_erreg
	fileno int32 // mt_fileno
	blkno  int32 // mt_blkno
}

// mtpos is struct mtpos: long mt_blkno.
type mtpos struct {
	blkno int64
}
