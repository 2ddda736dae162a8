//go:build linux

package modwatch_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// BenchmarkWritesBesideWatchedFiles: what the modification watcher costs
// the writes of ordinary hot files (issue 12 item 7). On one loop-mounted
// filesystem holding 10,000 watched archived files, it times writes of
// files Strata has not archived — 20,000 open+pwrite 4 KiB+close of
// resident files ("small") and 512 MiB written in 128 KiB writes to one
// resident file ("seq") — and reads of the watched files themselves
// (10,000 × open + pread 4 KiB + close, "read-watched"), in three setups, in alternating order
// (STRATA_BENCH_ROUNDS rounds, default 9), and reports the medians'
// ratios to no watcher, of wall time and of the writing thread's CPU time
// (user+system: what the kernel's hooks cost the writer, less sensitive
// than wall time to other load on the machine):
//
//	none       no watcher
//	watched    the watcher, with its inode marks on the 10,000 archived files
//	fsmark     the alternative it avoids: one FAN_MODIFY filesystem mark
//	           (a notification group reading and closing every event)
//
// Run: go test -run '^$' -bench BenchmarkWritesBesideWatchedFiles -benchtime 1x ./workers/modwatch
func BenchmarkWritesBesideWatchedFiles(b *testing.B) {
	stratatest.NeedRoot(b)
	rounds := 9
	if v, err := strconv.Atoi(os.Getenv("STRATA_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	const watchedFiles, smallFiles, seqBytes, seqWrite = 10000, 20000, 512 << 20, 128 << 10
	for _, fs := range stratatest.FSTypes {
		b.Run(fs, func(b *testing.B) {
			e := newEnv(b, fs, 2<<30)
			e.archivedMany(watchedFiles)
			plain := filepath.Join(e.hot, "plain")
			if err := os.MkdirAll(plain, 0o755); err != nil {
				b.Fatal(err)
			}
			for i := range smallFiles {
				if err := os.WriteFile(filepath.Join(plain, strconv.Itoa(i)), make([]byte, 4096), 0o644); err != nil {
					b.Fatal(err)
				}
			}
			big := filepath.Join(plain, "big")
			buf := make([]byte, seqWrite)
			// Reads of the watched files themselves: their marks are
			// notification marks for writes, and a read checks them in
			// the kernel (no event).
			archRead := func() (time.Duration, time.Duration) {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				t0, c0 := time.Now(), threadCPU(b)
				for i := range watchedFiles {
					fd, err := unix.Open(filepath.Join(e.hot, "archived", strconv.Itoa(i)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := unix.Pread(fd, buf[:4096], 0); err != nil {
						b.Fatal(err)
					}
					unix.Close(fd)
				}
				return time.Since(t0), threadCPU(b) - c0
			}
			small := func() (time.Duration, time.Duration) {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				t0, c0 := time.Now(), threadCPU(b)
				for i := range smallFiles {
					fd, err := unix.Open(filepath.Join(plain, strconv.Itoa(i)), unix.O_WRONLY|unix.O_CLOEXEC, 0)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := unix.Pwrite(fd, buf[:4096], 0); err != nil {
						b.Fatal(err)
					}
					unix.Close(fd)
				}
				return time.Since(t0), threadCPU(b) - c0
			}
			seq := func() (time.Duration, time.Duration) {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				fd, err := unix.Open(big, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
				if err != nil {
					b.Fatal(err)
				}
				defer unix.Close(fd)
				t0, c0 := time.Now(), threadCPU(b)
				for off := 0; off < seqBytes; off += seqWrite {
					if _, err := unix.Write(fd, buf); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(t0), threadCPU(b) - c0
			}

			// The watcher, started once; "none" and "fsmark" stop it.
			type setup struct {
				name       string
				start, end func()
			}
			var stopWatcher func()
			startWatcher := func() {
				stopWatcher = e.startStoppable()
				e.waitWatched(watchedFiles)
			}
			var fsm *fsMark
			setups := []setup{
				{"none", func() {}, func() {}},
				{"watched", startWatcher, func() { stopWatcher(); e.w = nil }},
				{"fsmark", func() { fsm = openFSMark(b, e.hot) }, func() { fsm.close() }},
			}
			times := map[string][]time.Duration{}
			for r := range rounds {
				order := slices.Clone(setups)
				if r%2 == 1 {
					slices.Reverse(order)
				}
				for _, s := range order {
					s.start()
					wall, cpu := small()
					times[s.name+"/small"] = append(times[s.name+"/small"], wall)
					times[s.name+"/small-cpu"] = append(times[s.name+"/small-cpu"], cpu)
					wall, cpu = seq()
					times[s.name+"/seq"] = append(times[s.name+"/seq"], wall)
					times[s.name+"/seq-cpu"] = append(times[s.name+"/seq-cpu"], cpu)
					wall, cpu = archRead()
					times[s.name+"/read-watched"] = append(times[s.name+"/read-watched"], wall)
					times[s.name+"/read-watched-cpu"] = append(times[s.name+"/read-watched-cpu"], cpu)
					s.end()
				}
			}
			median := func(k string) time.Duration {
				d := slices.Clone(times[k])
				slices.Sort(d)
				return d[len(d)/2]
			}
			for _, w := range []string{"small", "small-cpu", "seq", "seq-cpu", "read-watched", "read-watched-cpu"} {
				base := median("none/" + w)
				b.ReportMetric(float64(base.Microseconds())/1000, w+"-none-ms")
				for _, s := range []string{"watched", "fsmark"} {
					ratio := float64(median(s+"/"+w)) / float64(base)
					b.ReportMetric(ratio, w+"-"+s+"-ratio")
					b.Logf("%s %s: %v (none %v): ×%.3f", fs, w+"/"+s, median(s+"/"+w), base, ratio)
				}
			}
			if fsm != nil {
				b.Logf("%s: the filesystem mark queued %d events for these writes", fs, fsm.events)
			}
		})
	}
}

// archivedMany makes n archived files and records them in the log at once.
func (e *env) archivedMany(n int) {
	dir := filepath.Join(e.hot, "archived")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var last uint64
	for i := range n {
		path := filepath.Join(dir, strconv.Itoa(i))
		if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
			e.t.Fatal(err)
		}
		fd, err := unix.Open(path, unix.O_RDONLY, 0)
		if err != nil {
			e.t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			e.t.Fatal(err)
		}
		fid, oid := fmt.Sprintf("%032x", 0x100000+i), fmt.Sprintf("%064x", 0x100000+i)
		if err := stub.Write(fd, stub.Info{FileID: fid, ObjectID: oid, State: stub.Archived, Size: st.Size, MtimeNS: st.Mtim.Nano()}); err != nil {
			e.t.Fatal(err)
		}
		unix.Close(fd)
		if _, err := e.em.Emit(ctx, &events.FileReleased{FileID: fid, Path: path, ObjectID: oid, Stat: stub.FileStat(&st, 0), Copies: 1}, fid, "r"); err != nil {
			e.t.Fatal(err)
		}
		seq, err := e.em.Emit(ctx, &events.RecallCompleted{FileID: fid, Path: path, ObjectID: oid, Bytes: st.Size, SourceTier: "hdd"}, fid)
		if err != nil {
			e.t.Fatal(err)
		}
		last = max(last, seq)
	}
	if err := e.cat.WaitSeq(ctx, last); err != nil {
		e.t.Fatal(err)
	}
}

// fsMark is a notification group with one FAN_MODIFY filesystem mark and
// a reader that closes every event's fd.
type fsMark struct {
	f      *os.File
	done   chan struct{}
	events int
}

func openFSMark(t testing.TB, path string) *fsMark {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_UNLIMITED_QUEUE, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_MODIFY, unix.AT_FDCWD, path); err != nil {
		t.Fatal(err)
	}
	m := &fsMark{f: os.NewFile(uintptr(fd), "fsmark"), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := m.f.Read(buf)
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
					continue
				}
				return
			}
			for off := 0; off+unix.FAN_EVENT_METADATA_LEN <= n; {
				l := int(binary.NativeEndian.Uint32(buf[off:]))
				evfd := int(int32(binary.NativeEndian.Uint32(buf[off+16:])))
				if evfd >= 0 {
					unix.Close(evfd)
				}
				m.events++
				if l <= 0 {
					break
				}
				off += l
			}
		}
	}()
	return m
}

func (m *fsMark) close() {
	_ = m.f.SetReadDeadline(time.Now()) // the blocked read returns
	<-m.done
	m.f.Close()
}

// threadCPU is the calling thread's user+system CPU time.
func threadCPU(t testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
