//go:build linux

package kernelguard

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

//go:generate clang -O2 -g -Wall -target bpfel -I bpf -c testdata/facts.bpf.c -o testdata/facts_bpfel.o

type fact struct {
	Kind                     uint32
	FMode                    uint32
	IBlocks                  uint64
	ISize                    int64
	IFsnotifyMask, SFsnotify uint32
	Allocated                uint64
	TGID, _                  uint32
	StartTicks               uint64
}

// factProbe attaches testdata/facts.bpf.c (raw BTF tracepoints, which this
// kernel allows) to one inode and returns what it reports.
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
	for _, name := range []string{"fact_flock", "fact_read"} {
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

// next returns the next fact of kind, skipping others.
func (p *factProbe) next(t *testing.T, kind uint32) fact {
	t.Helper()
	p.rd.SetDeadline(time.Now().Add(5 * time.Second))
	for {
		r, err := p.rd.Read()
		if err != nil {
			t.Fatalf("reading facts: %v", err)
		}
		var f fact
		if err := binary.Read(bytes.NewReader(r.RawSample), binary.NativeEndian, &f); err != nil {
			t.Fatal(err)
		}
		if f.Kind == kind {
			return f
		}
	}
}

// flockFact takes and drops a flock on fd, which makes the probe report the
// struct file behind fd.
func (p *factProbe) flockFact(t *testing.T, fd int) fact {
	t.Helper()
	if err := unix.Flock(fd, unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	f := p.next(t, 1)
	unix.Flock(fd, unix.LOCK_UN) // reported too
	p.next(t, 1)
	return f
}

// TestKernelFacts checks, on loop-mounted ext4 and XFS with a real fanotify
// group, the kernel behaviour the guard's design rests on (see README.md,
// "Verified on Linux 6.18"): the f_mode bits of a file opened with and
// without a pre-content watch, the inode's fsnotify mask while the group
// lives and after it is closed, i_blocks of stubs and resident files, and
// that an unguarded stub reads as zeros with no error.
func TestKernelFacts(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			data := makeStub(t, stub, 1<<20)
			res := filepath.Join(mnt, "resident")
			makeResident(t, res, 1<<20)
			sp, rp := newFactProbe(t, stub), newFactProbe(t, res)

			sfd := openRO(t, stub)
			unwatched := sp.flockFact(t, sfd)
			unix.Close(sfd)
			if unwatched.IBlocks != 0 || unwatched.ISize != 1<<20 {
				t.Errorf("stub: i_blocks=%d i_size=%d, want 0 and %d", unwatched.IBlocks, unwatched.ISize, 1<<20)
			}
			if got := unwatched.FMode & fmodeFsnotifyMask; got != fmodeNonotifyPerm {
				t.Errorf("unwatched stub: f_mode notify bits %#x, want FMODE_NONOTIFY_PERM %#x", got, fmodeNonotifyPerm)
			}
			if unwatched.IFsnotifyMask != 0 {
				t.Errorf("unwatched stub: i_fsnotify_mask %#x, want 0", unwatched.IFsnotifyMask)
			}
			rfd := openRO(t, res)
			delalloc := rp.flockFact(t, rfd)
			if err := unix.Fsync(rfd); err != nil {
				t.Fatal(err)
			}
			resident := rp.flockFact(t, rfd)
			unix.Close(rfd)
			t.Logf("resident before writeback (delalloc): i_blocks=%d, allocated_bytes=%d; after fsync: i_blocks=%d, allocated_bytes=%d; i_size=%d", delalloc.IBlocks, delalloc.Allocated, resident.IBlocks, resident.Allocated, resident.ISize)
			for _, f := range []fact{delalloc, resident} {
				if f.Allocated < uint64(f.ISize) {
					t.Errorf("resident file looks sparse to the guard's pre-filter: allocated_bytes=%d < i_size=%d", f.Allocated, f.ISize)
				}
			}
			if want, err := startTicks(os.Getpid()); err != nil || unwatched.StartTicks != want || unwatched.TGID != uint32(os.Getpid()) {
				t.Errorf("exemption clock: kernel says tgid %d start %d ticks, /proc says pid %d start %d (%v)", unwatched.TGID, unwatched.StartTicks, os.Getpid(), want, err)
			}
			if unwatched.Allocated != 0 {
				t.Errorf("stub: allocated_bytes=%d, want 0", unwatched.Allocated)
			}

			g := newFanGroup(t)
			g.Guard(stub, data)
			sfd = openRO(t, stub)
			defer unix.Close(sfd)
			watched := sp.flockFact(t, sfd)
			if got := watched.FMode & fmodeFsnotifyMask; got != fmodeFsnotifyMask {
				t.Errorf("watched stub: f_mode notify bits %#x, want both (%#x): pre-content events on", got, fmodeFsnotifyMask)
			}
			if watched.IFsnotifyMask&fsPreAccess == 0 {
				t.Errorf("watched stub: i_fsnotify_mask %#x lacks FS_PRE_ACCESS", watched.IFsnotifyMask)
			}
			rfd = openRO(t, res)
			residentWatchedSB := rp.flockFact(t, rfd)
			unix.Close(rfd)
			if got := residentWatchedSB.FMode & fmodeFsnotifyMask; got != fmodeNonotifyPerm {
				t.Errorf("resident file beside a watched stub: f_mode notify bits %#x, want FMODE_NONOTIFY_PERM", got)
			}
			// Hole probes raise no event: with the mark live, GNU cp
			// (which probes SEEK_DATA since st_blocks < st_size/512) copies
			// zeros and exits 0, and filefrag reports no extents.
			cp := filepath.Join(t.TempDir(), "copy")
			if out, err := exec.Command(stratatest.NeedTool(t, "cp"), stub, cp).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			if b, _ := os.ReadFile(cp); len(b) != len(data) || !isZero(b) {
				t.Errorf("cp of a guarded stub: %d bytes, zeros %v; expected the kernel's zero copy", len(b), isZero(b))
			}
			if out, err := exec.Command(stratatest.NeedTool(t, "filefrag"), stub).CombinedOutput(); err != nil || !bytes.Contains(out, []byte(": 0 extents found")) {
				t.Errorf("filefrag of a guarded stub: %v %s", err, out)
			}
			buf := make([]byte, 4096)
			if _, err := unix.Pread(sfd, buf, 0); err != nil || !bytes.Equal(buf, data[:4096]) {
				t.Fatalf("guarded read: %v, right bytes %v", err, bytes.Equal(buf, data[:4096]))
			}

			g.Close()
			after := sp.flockFact(t, sfd)
			if after.FMode != watched.FMode {
				t.Errorf("f_mode changed after the group closed: %#x -> %#x", watched.FMode, after.FMode)
			}
			if after.IFsnotifyMask&(fsPreAccess|fsOpenPerm) != 0 {
				t.Errorf("group closed: i_fsnotify_mask %#x still has permission bits", after.IFsnotifyMask)
			}
			t.Logf("f_mode unwatched %#x, watched %#x; i_fsnotify_mask watched %#x, after close %#x", unwatched.FMode, watched.FMode, watched.IFsnotifyMask, after.IFsnotifyMask)

			// Without a guard: the stub (re-punched, the fill made it data)
			// reads as zeros with no error once the group is gone.
			punch(t, stub)
			n, err := unix.Pread(sfd, buf, 0)
			if err != nil || n != len(buf) || !isZero(buf) {
				t.Errorf("unguarded stub read: n=%d err=%v zeros=%v; want the kernel's silent zeros", n, err, isZero(buf))
			}
		})
	}
}

func openRO(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}
