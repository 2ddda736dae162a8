//go:build linux

package kernelguard

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// helperEnv makes the re-executed test binary a helper instead of running
// tests: "load PINDIR STUB" loads a guard, registers STUB, prints "ready"
// and waits to be killed; "lseek PATH data|hole OFFSET" prints what
// lseek(2) answers (a prober that is not exempt: another process); "read
// PATH" reads the first 64 KiB of PATH once and prints "returned N SHA256".
const helperEnv = "KERNELGUARD_TEST_HELPER"

func TestMain(m *testing.M) {
	if role := os.Getenv(helperEnv); role != "" {
		os.Exit(helper(strings.Fields(role)))
	}
	os.Exit(m.Run())
}

func helper(args []string) int {
	if len(args) == 4 && args[0] == "lseek" {
		fd, err := unix.Open(args[1], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		whence := map[string]int{"data": unix.SEEK_DATA, "hole": unix.SEEK_HOLE}[args[2]]
		off, _ := strconv.ParseInt(args[3], 10, 64)
		got, err := unix.Seek(fd, off, whence)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println(got)
		return 0
	}
	if len(args) == 2 && args[0] == "read" {
		fd, err := unix.Open(args[1], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		buf := make([]byte, 64<<10)
		n, err := unix.Read(fd, buf)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Printf("returned %d %x\n", n, sha256.Sum256(buf[:n]))
		return 0
	}
	if len(args) != 3 || args[0] != "load" {
		fmt.Println("bad helper role", args)
		return 2
	}
	g, err := Load(Config{PinDir: args[1]})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fd, err := unix.Open(args[2], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = g.AddStub(fd)
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	select {} // never closed: the test kills this process with SIGKILL
}

func needGuard(t testing.TB) {
	t.Helper()
	stratatest.NeedRoot(t)
	if err := Supported(); err != nil {
		stratatest.Skip(t, "%v", err)
	}
}

// testPinDir returns a fresh pin directory, removed in t.Cleanup even when
// the test fails.
func testPinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", "strata-test-"+randomSuffix(t))
	t.Cleanup(func() {
		if err := Remove(dir); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	return dir
}

// loadTestGuard loads a guard into its own pin directory (removed in
// t.Cleanup) and exempts the test process, so that nothing the test does
// itself can kill it.
func loadTestGuard(t testing.TB, cfg Config) *Guard {
	t.Helper()
	if cfg.PinDir == "" {
		cfg.PinDir = testPinDir(t)
	}
	g, err := Load(cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	if err := g.Exempt(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	return g
}

func addStub(t testing.TB, g *Guard, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := g.AddStub(fd); err != nil {
		t.Fatal(err)
	}
}

func removeStub(t testing.TB, g *Guard, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := g.RemoveStub(fd); err != nil {
		t.Fatal(err)
	}
}

// renamedCp copies the system's GNU cp to a new name: the daemon's list of
// programs recalled whole at open does not know it.
func renamedCp(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(stratatest.NeedTool(t, "cp"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "mycopy")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

type result struct {
	stdout, stderr []byte
	err            error
	pid            int
}

func (r result) String() string {
	return fmt.Sprintf("pid %d: %v; stderr %q", r.pid, r.err, bytes.TrimSpace(r.stderr))
}

// killed reports whether the program died of SIGKILL.
func (r result) killed() bool {
	var ee *exec.ExitError
	if !errors.As(r.err, &ee) {
		return false
	}
	ws := ee.Sys().(syscall.WaitStatus)
	return ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func run(t testing.TB, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	pid := 0
	if cmd.Process != nil {
		pid = cmd.Process.Pid
	}
	return result{o.Bytes(), e.Bytes(), err, pid}
}

// lseekProber runs lseek(path, off, whence) in a child process (not
// exempt) and returns what it printed.
func lseekProber(t testing.TB, path, whence string, off int64) result {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=lseek %s %s %d", helperEnv, path, whence, off))
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return result{o.Bytes(), e.Bytes(), err, cmd.Process.Pid}
}

// runQuiet is run with the program's stdout thrown away (readers of big
// files).
func runQuiet(t testing.TB, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var e bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &e
	err := cmd.Run()
	return result{nil, e.Bytes(), err, cmd.Process.Pid}
}

func fileSHA(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// prober is a real program that asks where a file's data is.
type prober struct {
	name string
	op   Op
	comm string
	args func(path string) (string, []string)
}

func probers(t testing.TB, mycopy string) []prober {
	t.Helper()
	xfsIO, filefrag := stratatest.NeedTool(t, "xfs_io"), stratatest.NeedTool(t, "filefrag")
	dst := t.TempDir()
	n := 0
	fresh := func() string { n++; return filepath.Join(dst, fmt.Sprint(n)) }
	return []prober{
		{"renamed cp", OpSeekData, "mycopy", func(p string) (string, []string) { return mycopy, []string{p, fresh()} }},
		{"filefrag -v", OpFiemap, "filefrag", func(p string) (string, []string) { return filefrag, []string{"-v", p} }},
		{"filefrag -B (FIBMAP)", OpFibmap, "filefrag", func(p string) (string, []string) { return filefrag, []string{"-B", "-v", p} }},
		{"xfs_io seek -d", OpSeekData, "xfs_io", func(p string) (string, []string) { return xfsIO, []string{"-r", "-c", "seek -d 0", p} }},
		{"xfs_io seek -h", OpSeekHole, "xfs_io", func(p string) (string, []string) { return xfsIO, []string{"-r", "-c", "seek -h 0", p} }},
	}
}

// readers read a file whole (they do not probe): the guard never kills them.
func readers(t testing.TB) [][]string {
	t.Helper()
	return [][]string{
		{stratatest.NeedTool(t, "cat")},
		{stratatest.NeedTool(t, "dd"), "of=/dev/null", "bs=1M", "status=none", "if="},
		{stratatest.NeedTool(t, "sha256sum")},
	}
}

func readCmd(r []string, path string) (string, []string) {
	args := append([]string(nil), r[1:]...)
	if n := len(args); n > 0 && strings.HasSuffix(args[n-1], "=") {
		args[n-1] += path
	} else {
		args = append(args, path)
	}
	return r[0], args
}

// waitRecord reads records until one of process tgid arrives.
func waitRecord(t testing.TB, rd *RecordReader, tgid int) Record {
	t.Helper()
	rd.SetDeadline(time.Now().Add(5 * time.Second))
	for {
		r, err := rd.Read()
		if err != nil {
			t.Fatalf("no record of pid %d: %v", tgid, err)
		}
		if r.TGID == tgid {
			return r
		}
	}
}

func statOf(t testing.TB, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func status(t testing.TB, g *Guard) Status {
	t.Helper()
	st, err := g.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestGuardKillsProbers (a, b, c, i): on ext4 and XFS, a renamed GNU cp,
// filefrag (FIEMAP and FIBMAP) and xfs_io's SEEK_DATA and SEEK_HOLE are killed by SIGKILL when they probe a registered stub; each
// kill leaves a record naming the process and the stub; cat, dd and
// sha256sum, which just read, are not killed. Without the guard the same
// renamed cp exits 0 with a zero-filled copy, which is what makes the test
// able to fail.
func TestGuardKillsProbers(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			const size = 96 << 20 // above the daemon's 64 MiB whole-recall threshold
			makeStub(t, stub, size)
			mycopy := renamedCp(t)

			// Without the guard: exit 0, zeros.
			zero := filepath.Join(t.TempDir(), "zero-copy")
			if r := run(t, mycopy, stub, zero); r.err != nil {
				t.Fatalf("renamed cp without the guard: %v", r)
			}
			if b, _ := os.ReadFile(zero); len(b) != size || !isZero(b) {
				t.Fatalf("renamed cp without the guard: %d bytes, all zero %v; the test rests on a zero copy", len(b), isZero(b))
			}

			g := loadTestGuard(t, Config{})
			addStub(t, g, stub)
			rd, err := g.Records()
			if err != nil {
				t.Fatal(err)
			}
			defer rd.Close()
			st := statOf(t, stub)
			ps := probers(t, mycopy)
			for _, p := range ps {
				name, args := p.args(stub)
				r := run(t, name, args...)
				if !r.killed() {
					t.Errorf("%s of a stub: not killed: %v", p.name, r)
					continue
				}
				if p.name == "renamed cp" {
					if fi, err := os.Stat(args[1]); err == nil && fi.Size() == size {
						t.Errorf("renamed cp was killed but left a full-size copy")
					}
				}
				rec := waitRecord(t, rd, r.pid)
				if !rec.Killed || rec.Op != p.op || rec.Comm != p.comm || rec.Ino != st.Ino || rec.Dev != st.Dev || rec.PID == 0 ||
					rec.IomapFlags&iomapReport == 0 || rec.Offset < 0 || rec.Offset >= size {
					t.Errorf("%s: record %+v; want killed, op %v, comm %q, dev %d ino %d, a hole inside the file", p.name, rec, p.op, p.comm, st.Dev, st.Ino)
				}
				t.Logf("%s: %v; record: %v", p.name, r, rec)
			}
			for _, rdr := range readers(t) {
				name, args := readCmd(rdr, stub)
				if r := runQuiet(t, name, args...); r.err != nil {
					t.Errorf("%s of a stub: %v (a reader must not be killed)", filepath.Base(name), r)
				}
			}
			if r := run(t, "cat", stub); r.err != nil || len(r.stdout) != size || !isZero(r.stdout) {
				t.Errorf("cat of a stub with no fanotify group: %v, %d bytes; want the kernel's zeros (the daemon's job)", r.err, len(r.stdout))
			}
			s := status(t, g)
			if !s.Loaded || s.Action != ActionKill || s.Stubs != 1 || s.Counters.ProbesKilled < uint64(len(ps)) || s.Counters.SignalFailed != 0 {
				t.Errorf("status %+v", s)
			}
		})
	}
}

// TestGuardSparesResident (d): resident files, dense or sparse with real
// holes, are never killed, whatever probes them, with a stub registered on
// the same filesystem; copies are exact.
func TestGuardSparesResident(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			makeStub(t, stub, 8<<20)
			dense := filepath.Join(mnt, "dense")
			makeResident(t, dense, 8<<20)
			sparse := filepath.Join(mnt, "sparse")
			if r := run(t, stratatest.NeedTool(t, "truncate"), "-s", "1G", sparse); r.err != nil {
				t.Fatal(r)
			}
			if r := run(t, "dd", "if=/dev/urandom", "of="+sparse, "bs=64k", "count=4", "seek=4096", "conv=notrunc", "status=none"); r.err != nil {
				t.Fatal(r)
			}
			small := filepath.Join(mnt, "small-sparse")
			if r := run(t, "truncate", "-s", "64M", small); r.err != nil {
				t.Fatal(r)
			}
			if r := run(t, "dd", "if=/dev/urandom", "of="+small, "bs=4k", "count=1", "seek=100", "conv=notrunc", "status=none"); r.err != nil {
				t.Fatal(r)
			}
			empty := filepath.Join(mnt, "empty-sparse")
			if r := run(t, "truncate", "-s", "100M", empty); r.err != nil {
				t.Fatal(r)
			}
			g := loadTestGuard(t, Config{})
			addStub(t, g, stub)
			mycopy := renamedCp(t)
			for _, f := range []struct {
				path string
				read bool // also read it whole and compare copies (not the 1 GiB one: slow)
			}{{dense, true}, {small, true}, {empty, true}, {sparse, false}} {
				name := filepath.Base(f.path)
				for _, p := range probers(t, mycopy) {
					prog, args := p.args(f.path)
					if r := run(t, prog, args...); r.err != nil {
						t.Errorf("%s of resident %s: %v", p.name, name, r)
					}
				}
				for _, dst := range []string{filepath.Join(t.TempDir(), "c"), filepath.Join(mnt, "copy-of-"+name)} {
					r := run(t, mycopy, f.path, dst)
					switch {
					case r.err != nil:
						t.Errorf("renamed cp %s %s: %v", f.path, dst, r)
					case f.read && fileSHA(t, f.path) != fileSHA(t, dst):
						t.Errorf("renamed cp %s %s: the copy differs", f.path, dst)
					}
				}
				if r := run(t, stratatest.NeedTool(t, "tar"), "--sparse", "-cf", filepath.Join(t.TempDir(), "t.tar"), f.path); r.err != nil {
					t.Errorf("tar --sparse of resident %s: %v", name, r)
				}
				if !f.read {
					continue
				}
				for _, rdr := range readers(t) {
					prog, args := readCmd(rdr, f.path)
					if r := runQuiet(t, prog, args...); r.err != nil {
						t.Errorf("%s of resident %s: %v", filepath.Base(prog), name, r)
					}
				}
			}
			if s := status(t, g); s.Counters.ProbesKilled != 0 || s.Counters.ProbesLogged != 0 {
				t.Errorf("a resident file counted as a probe: %+v", s.Counters)
			}
		})
	}
}

// TestGuardWholeStub (e): only a hole kills. A registered stub whose probed
// range is already filled answers without a kill; once it is whole it is
// never killed, registered or not (RemoveStub), and its copy is exact.
func TestGuardWholeStub(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			const size = 16 << 20
			data := makeStub(t, stub, size)
			g := loadTestGuard(t, Config{})
			addStub(t, g, stub)
			mycopy := renamedCp(t)

			fill := func(n int) {
				t.Helper()
				fd, err := unix.Open(stub, unix.O_WRONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				if _, err := unix.Pwrite(fd, data[:n], 0); err != nil {
					t.Fatal(err)
				}
			}
			fill(size / 2) // the first half filled, as a range-first recall does
			for _, off := range []int64{0, size / 4} {
				if r := lseekProber(t, stub, "data", off); r.err != nil || string(r.stdout) != fmt.Sprintln(off) {
					t.Errorf("SEEK_DATA at %d, filled, of a half-filled stub: %v %q; want %d and no kill (the answer is right)", off, r, r.stdout, off)
				}
			}
			for _, q := range []struct {
				whence string
				off    int64
			}{{"hole", 0}, {"hole", size / 4}, {"data", size * 3 / 4}} {
				if r := lseekProber(t, stub, q.whence, q.off); !r.killed() {
					t.Errorf("SEEK_%s at %d of a half-filled stub (the answer would show the unfilled half): %v %q", strings.ToUpper(q.whence), q.off, r, r.stdout)
				}
			}
			if r := run(t, mycopy, stub, filepath.Join(t.TempDir(), "half")); !r.killed() {
				t.Errorf("renamed cp of a half-filled stub: %v", r)
			}

			fill(size) // whole, still registered (the daemon removes it next)
			check := func(when string) {
				t.Helper()
				dst := filepath.Join(t.TempDir(), "whole")
				if r := run(t, mycopy, stub, dst); r.err != nil {
					t.Errorf("%s: renamed cp of a whole stub: %v", when, r)
				} else if fileSHA(t, dst) != sha256.Sum256(data) {
					t.Errorf("%s: renamed cp of a whole stub: wrong bytes", when)
				}
				for _, p := range probers(t, mycopy) {
					name, args := p.args(stub)
					if r := run(t, name, args...); r.err != nil {
						t.Errorf("%s: %s of a whole stub: %v", when, p.name, r)
					}
				}
			}
			check("whole, registered")
			removeStub(t, g, stub)
			check("whole, removed")
			if s := status(t, g); s.Stubs != 0 {
				t.Errorf("after RemoveStub: %d stubs registered", s.Stubs)
			}
		})
	}
}

// TestGuardReusedInode (f): a file that gets the inode number of a deleted,
// still registered stub is not killed: its generation differs. Shown with a
// real reuse (files are created until one gets the number back) and with a
// table entry whose generation is off by one.
func TestGuardReusedInode(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			dir := filepath.Join(mnt, "d")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			stub := filepath.Join(dir, "stub")
			makeStub(t, stub, 8<<20)
			g := loadTestGuard(t, Config{})
			addStub(t, g, stub)
			mycopy := renamedCp(t)
			old := statOf(t, stub)
			if err := os.Remove(stub); err != nil {
				t.Fatal(err)
			}
			syncfs(t, mnt) // XFS frees inodes in the background (inodegc): flush it

			var reused string
			for i := 0; i < 2000 && reused == ""; i++ {
				p := filepath.Join(dir, fmt.Sprint("new", i))
				if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
				if statOf(t, p).Ino == old.Ino {
					reused = p
				}
			}
			if reused == "" {
				t.Fatalf("no new file got inode %d back in 2000 creates", old.Ino)
			}
			if err := os.Truncate(reused, 8<<20); err != nil { // holes, as a stub has
				t.Fatal(err)
			}
			if r := run(t, mycopy, reused, filepath.Join(t.TempDir(), "c")); r.err != nil {
				t.Errorf("renamed cp of a new file with a deleted stub's inode number: %v", r)
			}
			stale := status(t, g).Counters.Stale
			if stale == 0 {
				t.Errorf("the reused inode number was not counted as stale")
			}
			t.Logf("inode %d reused by %s; stale counter %d", old.Ino, filepath.Base(reused), stale)

			// A generation mismatch without a reuse.
			other := filepath.Join(dir, "other")
			makeStub(t, other, 8<<20)
			fd, err := unix.Open(other, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			k, gen, err := stubOf(fd)
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.coll.Maps[guardMapSgStubs].Put(k, stubValue{Gen: gen + 1}); err != nil {
				t.Fatal(err)
			}
			if r := run(t, mycopy, other, filepath.Join(t.TempDir(), "o")); r.err != nil {
				t.Errorf("renamed cp of a file whose table entry has another generation: %v", r)
			}
			if s := status(t, g).Counters.Stale; s <= stale {
				t.Errorf("stale counter %d, want > %d", s, stale)
			}
			addStub(t, g, other) // the right generation: killed
			if r := run(t, mycopy, other, filepath.Join(t.TempDir(), "o2")); !r.killed() {
				t.Errorf("renamed cp of a stub re-added with its generation: %v", r)
			}
		})
	}
}

func syncfs(t testing.TB, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// TestGuardExempt (g): an exempt process (here the test itself) gets the
// kernel's answers about a stub and lives; another process asking the same
// is killed; registrations of processes gone are pruned.
func TestGuardExempt(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			makeStub(t, stub, 8<<20)
			g := loadTestGuard(t, Config{}) // exempts this process
			addStub(t, g, stub)
			fd := openRO(t, stub)
			defer unix.Close(fd)
			if _, err := unix.Seek(fd, 0, unix.SEEK_DATA); !errors.Is(err, unix.ENXIO) {
				t.Errorf("exempt SEEK_DATA: %v, want ENXIO (all hole)", err)
			}
			if off, err := unix.Seek(fd, 0, unix.SEEK_HOLE); err != nil || off != 0 {
				t.Errorf("exempt SEEK_HOLE: %d %v", off, err)
			}
			if n, err := fiemapExtents(fd); err != nil || n != 0 {
				t.Errorf("exempt FIEMAP: %d extents, %v", n, err)
			}
			if s := status(t, g).Counters; s.Exempt < 3 || s.ProbesKilled != 0 {
				t.Errorf("counters after exempt probes: %+v", s)
			}
			if r := run(t, stratatest.NeedTool(t, "xfs_io"), "-r", "-c", "seek -d 0", stub); !r.killed() {
				t.Errorf("a child of the exempt process probing: %v (exemption is per process)", r)
			}

			child := exec.Command(stratatest.NeedTool(t, "true"))
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			if err := g.Exempt(child.Process.Pid); err != nil {
				t.Fatal(err)
			}
			child.Wait()
			if err := g.Exempt(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			if ex := status(t, g).Exempt; len(ex) != 1 || ex[0] != os.Getpid() {
				t.Errorf("exempt after the child exited: %v, want only %d", ex, os.Getpid())
			}
		})
	}
}

// TestGuardSurvivesLoader (h): a guard loaded by a process killed with
// SIGKILL stays in force with its stub table; a restarted daemon's Load
// takes it over; Remove takes it out, and then the probe succeeds again
// (with zeros: the kernel's behaviour without the guard).
func TestGuardSurvivesLoader(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			makeStub(t, stub, 8<<20)
			mycopy := renamedCp(t)
			dir := testPinDir(t)

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"=load "+dir+" "+stub)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			if l, _ := bufio.NewReader(out).ReadString('\n'); l != "ready\n" {
				t.Fatalf("loader: %q", l)
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()

			if r := run(t, mycopy, stub, filepath.Join(t.TempDir(), "a")); !r.killed() {
				t.Errorf("after the loader's SIGKILL: renamed cp %v", r)
			}
			st, err := ReadStatus(dir)
			if err != nil || !st.Loaded || st.Stubs != 1 || st.Counters.ProbesKilled != 1 {
				t.Errorf("ReadStatus after the loader died: %+v %v", st, err)
			}

			// The daemon restarts: Load takes the pinned guard over, keeping
			// the attached link (the same program) and the stub table.
			before := pinnedLinkID(t, dir)
			g, err := Load(Config{PinDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if s := status(t, g); s.Stubs != 1 {
				t.Errorf("after a second Load: %d stubs, want the 1 the first loader added", s.Stubs)
			}
			if after := pinnedLinkID(t, dir); after != before {
				t.Errorf("a second Load replaced the link (%d -> %d) of an unchanged program", before, after)
			}
			g.Close()
			if r := run(t, mycopy, stub, filepath.Join(t.TempDir(), "b")); !r.killed() {
				t.Errorf("after Load and Close: renamed cp %v", r)
			}

			if err := Remove(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Remove left %s: %v", dir, err)
			}
			if _, err := ReadStatus(dir); !errors.Is(err, ErrNotLoaded) {
				t.Errorf("ReadStatus after Remove: %v, want ErrNotLoaded", err)
			}
			dst := filepath.Join(t.TempDir(), "c")
			if r := run(t, mycopy, stub, dst); r.err != nil {
				t.Errorf("after Remove: renamed cp %v, want exit 0 (no guard)", r)
			}
		})
	}
}

func pinnedLinkID(t testing.TB, dir string) link.ID {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(dir, linkPin), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// TestGuardLogOnly: with ActionLog the prober lives (and copies zeros) and
// the probe is recorded; a later Load with ActionKill kills again at once.
func TestGuardLogOnly(t *testing.T) {
	needGuard(t)
	mnt := stratatest.LoopMount(t, "ext4", 512<<20)
	stub := filepath.Join(mnt, "stub")
	makeStub(t, stub, 8<<20)
	mycopy := renamedCp(t)
	dir := testPinDir(t)
	g := loadTestGuard(t, Config{PinDir: dir, Action: ActionLog})
	addStub(t, g, stub)
	rd, err := g.Records()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	r := run(t, mycopy, stub, filepath.Join(t.TempDir(), "a"))
	if r.err != nil {
		t.Fatalf("log only: renamed cp %v", r)
	}
	if rec := waitRecord(t, rd, r.pid); rec.Killed || rec.Op != OpSeekData || rec.Comm != "mycopy" {
		t.Errorf("log only: record %+v", rec)
	}
	if s := status(t, g); s.Action != ActionLog || s.Counters.ProbesLogged == 0 || s.Counters.ProbesKilled != 0 {
		t.Errorf("log only: status %+v", s)
	}
	g2 := loadTestGuard(t, Config{PinDir: dir})
	if r := run(t, mycopy, stub, filepath.Join(t.TempDir(), "b")); !r.killed() {
		t.Errorf("after Load with ActionKill: %v", r)
	}
	if s := status(t, g2); s.Action != ActionKill {
		t.Errorf("status %+v", s)
	}
}

// TestGuardAPI covers the table's edges: only regular files, idempotent
// removal, ForgetStub by st_dev/st_ino, a full table, and a pinned table
// keeping its capacity.
func TestGuardAPI(t *testing.T) {
	needGuard(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	dir := testPinDir(t)
	g := loadTestGuard(t, Config{PinDir: dir, MaxStubs: 2})
	dfd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	if err := g.AddStub(dfd); !errors.Is(err, ErrNotRegular) {
		t.Errorf("AddStub(directory) = %v, want ErrNotRegular", err)
	}
	var paths []string
	for i := range 3 {
		p := filepath.Join(mnt, fmt.Sprint("f", i))
		makeStub(t, p, 1<<20)
		paths = append(paths, p)
	}
	addStub(t, g, paths[0])
	addStub(t, g, paths[0]) // twice: harmless
	addStub(t, g, paths[1])
	fd, err := unix.Open(paths[2], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := g.AddStub(fd); !errors.Is(err, ErrTableFull) {
		t.Errorf("AddStub into a full table = %v, want ErrTableFull", err)
	}
	removeStub(t, g, paths[2]) // not registered: fine
	st := statOf(t, paths[1])
	if err := g.ForgetStub(st.Dev, st.Ino); err != nil {
		t.Fatal(err)
	}
	if err := g.ForgetStub(st.Dev, st.Ino); err != nil {
		t.Errorf("ForgetStub twice: %v", err)
	}
	if s := status(t, g); s.Stubs != 1 || s.MaxStubs != 2 {
		t.Errorf("status %+v, want 1 stub of 2", s)
	}
	g2 := loadTestGuard(t, Config{PinDir: dir, MaxStubs: 100})
	if s := status(t, g2); s.Stubs != 1 || s.MaxStubs != 2 {
		t.Errorf("after Load with another MaxStubs: %+v, want the pinned table (1 stub of 2)", s)
	}
	if err := Remove(filepath.Join(t.TempDir(), "no-guard-here")); err != nil {
		t.Errorf("Remove of nothing: %v", err)
	}
	if _, err := ReadStatus("/sys/fs/bpf/strata-test-none"); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("ReadStatus of nothing = %v, want ErrNotLoaded", err)
	}
}

// TestGuardZeroBlocks documents a limit and its cure. GNU tar --sparse
// takes a file with st_blocks == 0 for all hole without asking the kernel
// (no lseek, no ioctl: nothing the guard sees), so a fully punched stub is
// archived as zeros and tar exits 0. A stub that keeps one block allocated
// (st_blocks > 0) makes tar probe, and the probe is killed.
func TestGuardZeroBlocks(t *testing.T) {
	needGuard(t)
	tar := stratatest.NeedTool(t, "tar")
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			whole := filepath.Join(mnt, "whole")
			makeStub(t, whole, 16<<20)
			kept := filepath.Join(mnt, "kept")
			makeResident(t, kept, 16<<20)
			fd, err := unix.Open(kept, unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Fsync(fd)
			if err == nil {
				err = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 16<<20)
			}
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			g := loadTestGuard(t, Config{})
			addStub(t, g, whole)
			addStub(t, g, kept)
			if st := statOf(t, kept); st.Blocks == 0 {
				t.Fatalf("the stub that keeps its first block has st_blocks 0")
			}
			if r := run(t, tar, "--sparse", "-cf", filepath.Join(t.TempDir(), "w.tar"), whole); r.err != nil || r.killed() {
				t.Errorf("tar --sparse of a stub with st_blocks 0: %v; expected exit 0 (the limit this test documents)", r)
			}
			if r := run(t, tar, "--sparse", "-cf", filepath.Join(t.TempDir(), "k.tar"), kept); !r.killed() {
				t.Errorf("tar --sparse of a stub that keeps one block: %v, want SIGKILL", r)
			}
		})
	}
}
