//go:build linux

package tape

import (
	"testing"
	"unsafe"
)

// The layouts and numbers of linux/mtio.h on 64-bit Linux. The ioctl
// numbers encode the struct sizes: _IOW('m',1,8), _IOR('m',2,48), _IOR('m',3,8).
func TestMtioABI(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("layouts pinned for 64-bit Linux")
	}
	sizes := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"mtop", unsafe.Sizeof(mtop{}), 8},
		{"mtop.count offset", unsafe.Offsetof(mtop{}.count), 4},
		{"mtget", unsafe.Sizeof(mtget{}), 48},
		{"mtget.gstat offset", unsafe.Offsetof(mtget{}.gstat), 24},
		{"mtget.fileno offset", unsafe.Offsetof(mtget{}.fileno), 40},
		{"mtget.blkno offset", unsafe.Offsetof(mtget{}.blkno), 44},
		{"mtpos", unsafe.Sizeof(mtpos{}), 8},
	}
	for _, s := range sizes {
		if s.got != s.want {
			t.Errorf("%s = %d, want %d", s.name, s.got, s.want)
		}
	}
	ioc := func(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | uintptr('m')<<8 | nr }
	const iocWrite, iocRead = 1, 2
	nums := []struct {
		name      string
		got, want uintptr
	}{
		{"MTIOCTOP", mtiocTop, 0x40086d01},
		{"MTIOCTOP from layout", mtiocTop, ioc(iocWrite, 1, unsafe.Sizeof(mtop{}))},
		{"MTIOCGET", mtiocGet, 0x80306d02},
		{"MTIOCGET from layout", mtiocGet, ioc(iocRead, 2, unsafe.Sizeof(mtget{}))},
		{"MTIOCPOS", mtiocPos, 0x80086d03},
		{"MTIOCPOS from layout", mtiocPos, ioc(iocRead, 3, unsafe.Sizeof(mtpos{}))},
	}
	for _, n := range nums {
		if n.got != n.want {
			t.Errorf("%s = %#x, want %#x", n.name, n.got, n.want)
		}
	}
	ops := map[string][2]int{
		"MTFSF": {mtFSF, 1}, "MTBSF": {mtBSF, 2}, "MTFSR": {mtFSR, 3}, "MTBSR": {mtBSR, 4},
		"MTWEOF": {mtWEOF, 5}, "MTREW": {mtREW, 6}, "MTOFFL": {mtOFFL, 7}, "MTNOP": {mtNOP, 8},
		"MTEOM": {mtEOM, 12}, "MTSETBLK": {mtSETBLK, 20}, "MTSEEK": {mtSEEK, 22}, "MTTELL": {mtTELL, 23},
		"MTLOAD": {mtLOAD, 30}, "MTUNLOAD": {mtUNLOAD, 31}, "MTCOMPRESSION": {mtCOMPRESSION, 32}, "MTWEOFI": {mtWEOFI, 35},
	}
	for name, v := range ops {
		if v[0] != v[1] {
			t.Errorf("%s = %d, want %d", name, v[0], v[1])
		}
	}
	bits := map[string][2]uint64{
		"GMT_EOF": {gmtEOF, 0x80000000}, "GMT_BOT": {gmtBOT, 0x40000000}, "GMT_EOT": {gmtEOT, 0x20000000},
		"GMT_EOD": {gmtEOD, 0x08000000}, "GMT_WR_PROT": {gmtWRPROT, 0x04000000},
		"GMT_ONLINE": {gmtONLINE, 0x01000000}, "GMT_DR_OPEN": {gmtDROPEN, 0x00040000},
	}
	for name, v := range bits {
		if v[0] != v[1] {
			t.Errorf("%s = %#x, want %#x", name, v[0], v[1])
		}
	}
	st := statusFromMtget(mtget{gstat: gmtBOT | gmtONLINE | gmtWRPROT, fileno: 3, blkno: 7, dsreg: 512 << 10})
	if !st.BOT || !st.Online || !st.WriteProtected || st.EOD || st.File != 3 || st.Block != 7 || st.BlockSize != 512<<10 {
		t.Errorf("status from mtget = %+v", st)
	}
}
