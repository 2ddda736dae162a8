//go:build linux

package kernelguard

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

//go:generate clang -O2 -g -Wall -target bpfel -I bpf -c testdata/facts.bpf.c -o testdata/facts_bpfel.o

// fact mirrors struct fact in testdata/facts.bpf.c.
type fact struct {
	Kind          uint32
	Flags         uint32
	Caller        uint64
	Offset        int64
	Length        uint64
	Type          uint32
	TGID          uint32
	IFsnotifyMask uint32
	SFsnotifyMask uint32
	StartTicks    uint64
}

const (
	factIter   = 1
	factDstmap = 2
	factRead   = 3
)

// factProbe attaches testdata/facts.bpf.c to one inode.
type factProbe struct {
	coll  *ebpf.Collection
	links []link.Link
	rd    *ringbuf.Reader
}

func newFactProbe(t *testing.T, path string) *factProbe {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	spec, err := ebpf.LoadCollectionSpec("testdata/facts_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables["target_ino"].Set(st.Ino); err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables["target_dev"].Set(kernelDev(st.Dev)); err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load fact probe: %v", err)
	}
	p := &factProbe{coll: coll}
	t.Cleanup(p.close)
	for _, name := range []string{"fact_iter", "fact_dstmap", "fact_read"} {
		l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs[name]})
		if err != nil {
			t.Fatalf("attach %s: %v", name, err)
		}
		p.links = append(p.links, l)
	}
	if p.rd, err = ringbuf.NewReader(coll.Maps["facts"]); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *factProbe) close() {
	if p.rd != nil {
		p.rd.Close()
	}
	for _, l := range p.links {
		l.Close()
	}
	p.coll.Close()
}

// during runs op and returns the facts it raised. It ends op with a
// one-byte read of page 0 of fd (kept in the page cache), whose read fact
// closes the batch: the ring buffer is filled synchronously, so every fact
// of op is in it by then. op must not read page 0.
func (p *factProbe) during(t *testing.T, fd int, op func()) []fact {
	t.Helper()
	var b [1]byte
	op()
	if _, err := unix.Pread(fd, b[:], 0); err != nil {
		t.Fatal(err)
	}
	p.rd.SetDeadline(time.Now().Add(5 * time.Second))
	var out []fact
	for {
		r, err := p.rd.Read()
		if err != nil {
			t.Fatalf("reading facts: %v", err)
		}
		var f fact
		if err := binary.Read(bytes.NewReader(r.RawSample), binary.NativeEndian, &f); err != nil {
			t.Fatal(err)
		}
		if f.Kind == factRead && f.Offset == 0 {
			return out
		}
		out = append(out, f)
	}
}

// kallsyms resolves kernel text addresses to function names.
type kallsyms struct {
	addr []uint64
	name []string
}

func readKallsyms(t *testing.T) *kallsyms {
	t.Helper()
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type sym struct {
		a uint64
		n string
	}
	var syms []sym
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 3 || (fs[1] != "t" && fs[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(fs[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		syms = append(syms, sym{a, fs[2]})
	}
	if len(syms) == 0 {
		stratatest.Skip(t, "/proc/kallsyms shows no addresses (kptr_restrict): cannot name iomap_iter's callers")
	}
	slices.SortFunc(syms, func(x, y sym) int { return cmpUint(x.a, y.a) })
	k := &kallsyms{}
	for _, s := range syms {
		k.addr, k.name = append(k.addr, s.a), append(k.name, s.n)
	}
	return k
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (k *kallsyms) symbol(a uint64) string {
	i, _ := slices.BinarySearch(k.addr, a+1)
	if i == 0 {
		return "?"
	}
	return strings.TrimSuffix(k.name[i-1], ".cold")
}

// TestKernelFacts checks, on loop-mounted ext4 and XFS, what the guard's
// design rests on (README.md, "Verified on Linux 6.18"):
//
//   - IOMAP_REPORT is 0x4, and exactly the extent queries raise it:
//     lseek SEEK_DATA (iomap_seek_data), SEEK_HOLE (iomap_seek_hole),
//     FIEMAP (iomap_fiemap) and FIBMAP (iomap_bmap);
//   - a stub's holes reach iomap_iter_dstmap as IOMAP_HOLE mappings, and the
//     iterator's flags read through container_of equal iomap_iter's own;
//   - buffered reads (cold: XFS only, flags 0; warm: no iomap call),
//     buffered writes (XFS, IOMAP_WRITE) and direct I/O (IOMAP_DIRECT) never
//     carry IOMAP_REPORT;
//   - the exemption clock: start_boottime / 10 ms is /proc/PID/stat field 22;
//   - XFS's GETBMAP ioctl does not go through iomap (not covered);
//   - the problem itself: with a live FAN_PRE_ACCESS mark, a hole probe
//     raises no event, so GNU cp copies a stub as zeros and exits 0, and
//     filefrag reports no extents.
func TestKernelFacts(t *testing.T) {
	stratatest.NeedRoot(t)
	syms := readKallsyms(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			data := makeStub(t, stub, 8<<20)
			res := filepath.Join(mnt, "resident")
			makeResident(t, res, 8<<20)

			sp := newFactProbe(t, stub)
			sfd := openRO(t, stub)
			defer unix.Close(sfd)
			sp.during(t, sfd, func() {}) // page 0 into the page cache

			callers := func(fs []fact) (flags []uint32, names []string) {
				for _, f := range fs {
					if f.Kind == factIter {
						flags = append(flags, f.Flags)
						names = append(names, syms.symbol(f.Caller))
					}
				}
				return flags, names
			}
			for _, q := range []struct {
				name   string
				caller string
				op     func() error
			}{
				{"SEEK_DATA", "iomap_seek_data", func() error {
					_, err := unix.Seek(sfd, 4096, unix.SEEK_DATA)
					if !errors.Is(err, unix.ENXIO) {
						return errors.New("SEEK_DATA on a stub did not say ENXIO (all hole): " + errString(err))
					}
					return nil
				}},
				{"SEEK_HOLE", "iomap_seek_hole", func() error {
					off, err := unix.Seek(sfd, 4096, unix.SEEK_HOLE)
					if err != nil || off != 4096 {
						return errors.New("SEEK_HOLE on a stub: " + strconv.FormatInt(off, 10) + " " + errString(err))
					}
					return nil
				}},
				{"FIEMAP", "iomap_fiemap", func() error {
					n, err := fiemapExtents(sfd)
					if err != nil || n != 0 {
						return errors.New("FIEMAP on a stub: " + strconv.Itoa(n) + " extents " + errString(err))
					}
					return nil
				}},
				{"FIBMAP", "iomap_bmap", func() error {
					blk := 1
					_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(sfd), fibmap, uintptr(unsafe.Pointer(&blk)))
					if e != 0 || blk != 0 {
						return errors.New("FIBMAP of a stub's block 1: " + strconv.Itoa(blk) + " " + e.Error())
					}
					return nil
				}},
			} {
				var opErr error
				fs := sp.during(t, sfd, func() { opErr = q.op() })
				if opErr != nil {
					t.Error(opErr)
				}
				flags, names := callers(fs)
				if len(flags) == 0 {
					t.Errorf("%s: no iomap_iter call", q.name)
				}
				for i := range flags {
					if flags[i] != iomapReport || names[i] != q.caller {
						t.Errorf("%s: iomap_iter flags %#x from %s, want IOMAP_REPORT (%#x) from %s", q.name, flags[i], names[i], iomapReport, q.caller)
					}
				}
				holes := 0
				for _, f := range fs {
					if f.Kind != factDstmap {
						continue
					}
					if f.Flags != iomapReport {
						t.Errorf("%s: the dstmap mapping's iterator flags (via container_of) are %#x, want %#x", q.name, f.Flags, iomapReport)
					}
					if f.Type == iomapHole && f.Offset < 8<<20 {
						holes++
					}
				}
				if holes == 0 {
					t.Errorf("%s: no IOMAP_HOLE mapping before EOF reached iomap_iter_dstmap", q.name)
				}
				t.Logf("%s: iomap_iter %d× from %v, flags %#x; %d hole mappings", q.name, len(flags), slices.Compact(names), flags, holes)
			}

			if fstype == "xfs" {
				// XFS_IOC_GETBMAPX (xfs_io bmap) walks XFS's own extent
				// tree: no iomap call, so the guard cannot see it.
				fs := sp.during(t, sfd, func() {
					if out, err := exec.Command(stratatest.NeedTool(t, "xfs_io"), "-r", "-c", "bmap", stub).CombinedOutput(); err != nil {
						t.Errorf("xfs_io bmap: %v %s", err, out)
					}
				})
				if flags, names := callers(fs); len(flags) != 0 {
					t.Errorf("XFS GETBMAP called iomap_iter (%v): the guard could cover it", names)
				}
			}

			rp := newFactProbe(t, res)
			rfd := openRO(t, res)
			defer unix.Close(rfd)
			rp.during(t, rfd, func() {})
			wfd, err := unix.Open(res, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(wfd)
			dfd, err := unix.Open(res, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dfd)
			abuf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(abuf)
			buf := make([]byte, 64<<10)
			if err := unix.Fsync(rfd); err != nil {
				t.Fatal(err)
			}
			for _, io := range []struct {
				name string
				// caller and flags of the iomap_iter calls expected on
				// XFS and ext4 ("" for none)
				xfs, ext4 string
				flags     uint32
				op        func()
			}{
				{"cold buffered read", "iomap_readahead", "", 0, func() {
					// Past page 0's folio (XFS uses large folios).
					unix.Fadvise(rfd, 4<<20, 0, unix.FADV_DONTNEED)
					unix.Pread(rfd, buf, 6<<20)
				}},
				{"warm buffered read", "", "", 0, func() { unix.Pread(rfd, buf, 1<<20) }},
				{"buffered write", "iomap_file_buffered_write", "", iomapWrite, func() { unix.Pwrite(wfd, buf[:4096], 2<<20) }},
				{"direct read", "__iomap_dio_rw", "__iomap_dio_rw", iomapDirect, func() { unix.Pread(dfd, abuf, 3<<20) }},
			} {
				fs := rp.during(t, rfd, io.op)
				flags, names := callers(fs)
				want := io.ext4
				if fstype == "xfs" {
					want = io.xfs
				}
				if want == "" && len(flags) != 0 {
					t.Errorf("%s: iomap_iter called (%v, flags %#x), want no call", io.name, names, flags)
				}
				if want != "" && len(flags) == 0 {
					t.Errorf("%s: no iomap_iter call, want one from %s", io.name, want)
				}
				for i := range flags {
					if flags[i]&iomapReport != 0 || flags[i] != io.flags || names[i] != want {
						t.Errorf("%s: iomap_iter flags %#x from %s, want %#x from %s", io.name, flags[i], names[i], io.flags, want)
					}
				}
				for _, f := range fs {
					if f.Kind == factDstmap && f.Flags&iomapReport != 0 {
						t.Errorf("%s: a mapping with IOMAP_REPORT", io.name)
					}
				}
				t.Logf("%s: iomap_iter %d× from %v, flags %#x", io.name, len(flags), slices.Compact(names), flags)
			}

			// The exemption clock, from a read fact of this process.
			var clock fact
			for _, f := range rp.during(t, rfd, func() { unix.Pread(rfd, buf[:1], 5<<20) }) {
				if f.Kind == factRead {
					clock = f
				}
			}
			if want, err := startTicks(os.Getpid()); err != nil || clock.StartTicks != want || clock.TGID != uint32(os.Getpid()) {
				t.Errorf("exemption clock: kernel says tgid %d start %d ticks, /proc says pid %d start %d (%v)", clock.TGID, clock.StartTicks, os.Getpid(), want, err)
			}

			// The problem: hole probes raise no fanotify event, so with the
			// mark live GNU cp (which probes SEEK_DATA because st_blocks <
			// st_size/512) copies the stub as zeros, and filefrag finds no
			// extent.
			g := newFanGroup(t)
			g.Guard(stub, data)
			cp := filepath.Join(t.TempDir(), "copy")
			if out, err := exec.Command(stratatest.NeedTool(t, "cp"), stub, cp).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			if b, _ := os.ReadFile(cp); len(b) != len(data) || !isZero(b) {
				t.Errorf("cp of a marked stub: %d bytes, zeros %v; expected the kernel's zero copy", len(b), isZero(b))
			}
			if out, err := exec.Command(stratatest.NeedTool(t, "filefrag"), stub).CombinedOutput(); err != nil || !bytes.Contains(out, []byte(": 0 extents found")) {
				t.Errorf("filefrag of a marked stub: %v %s", err, out)
			}
			mfd := openRO(t, stub) // opened after the mark: its reads raise events
			defer unix.Close(mfd)
			if _, err := unix.Pread(mfd, buf[:4096], 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:4096], data[4096:8192]) {
				t.Errorf("a read of the marked stub got the wrong bytes: the fanotify group did not fill it")
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// fiemapExtents asks FS_IOC_FIEMAP for the extents of fd (up to 32) and
// returns how many it found.
func fiemapExtents(fd int) (int, error) {
	return fiemapInto(fd, make([]byte, 32+56*32))
}

// fiemapInto asks FS_IOC_FIEMAP for as many extents of fd as buf holds
// (struct fiemap, 32 bytes, then 56 per struct fiemap_extent).
func fiemapInto(fd int, buf []byte) (int, error) {
	clear(buf[:32])
	binary.NativeEndian.PutUint64(buf[8:], ^uint64(0))                // fm_length
	binary.NativeEndian.PutUint32(buf[24:], uint32((len(buf)-32)/56)) // fm_extent_count
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return 0, e
	}
	return int(binary.NativeEndian.Uint32(buf[20:])), nil // fm_mapped_extents
}

func openRO(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestCloneFacts: on XFS (reflink), cp within one filesystem clones
// (FICLONE) before it would probe. A clone of a marked stub raises
// FAN_PRE_ACCESS, so the daemon fills it and the clone has the bytes; a
// clone of an unmarked stub shares its holes: zeros, exit 0, and no extent
// query the guard could see (README.md, "What stays uncovered").
func TestCloneFacts(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "xfs", 512<<20)
	stub := filepath.Join(mnt, "stub")
	data := makeStub(t, stub, 8<<20)
	cp := stratatest.NeedTool(t, "cp")
	g := newFanGroup(t)
	g.Guard(stub, data)
	dst := filepath.Join(mnt, "clone")
	if out, err := exec.Command(cp, "--reflink=always", stub, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp --reflink=always of a marked stub: %v %s", err, out)
	}
	if b, err := os.ReadFile(dst); err != nil || !bytes.Equal(b, data) {
		t.Errorf("clone of a marked stub: %v, right bytes %v", err, bytes.Equal(b, data))
	}
	g.Close()
	punch(t, stub)
	dst = filepath.Join(mnt, "clone2")
	if out, err := exec.Command(cp, stub, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp of an unmarked stub: %v %s", err, out)
	}
	if b, _ := os.ReadFile(dst); len(b) != len(data) || !isZero(b) {
		t.Errorf("clone of an unmarked stub: %d bytes, zeros %v; expected the kernel's shared holes", len(b), isZero(b))
	}
}
