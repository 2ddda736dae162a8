//go:build linux && kernelguard_live

// The live tests load the guard into the running kernel. They need a kernel
// that accepts BPF trampolines (Supported() == nil), which this project's
// CI machines do not (README.md), so they are behind a build tag and are
// not part of `go tool task test`:
//
//	go test -count=1 -tags kernelguard_live ./workers/kernelguard/ -v
//	go test -count=1 -tags kernelguard_live -run '^$' -bench GuardHotPath ./workers/kernelguard/
package kernelguard

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

const helperEnv = "KERNELGUARD_LIVE_HELPER"

// TestMain runs the helper roles of the re-executed test binary:
// "load DIR" loads a guard and waits to be killed; "mmap PATH" opens PATH,
// says "open", waits for a line, then mmaps it and prints the errno.
func TestMain(m *testing.M) {
	args := strings.Fields(os.Getenv(helperEnv))
	if len(args) == 2 {
		os.Exit(helper(args[0], args[1]))
	}
	os.Exit(m.Run())
}

func helper(role, arg string) int {
	switch role {
	case "load":
		g, err := Load(Config{PinDir: arg})
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		_ = g // never closed: the process is killed with SIGKILL
		fmt.Println("loaded")
		select {}
	case "mmap":
		fd, err := unix.Open(arg, unix.O_RDONLY, 0)
		if err != nil {
			fmt.Println("open:", err)
			return 1
		}
		fmt.Println("open")
		bufio.NewReader(os.Stdin).ReadString('\n')
		_, err = unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
		fmt.Println("mmap:", err)
		return 0
	}
	return 2
}

func needGuard(t testing.TB) {
	t.Helper()
	stratatest.NeedRoot(t)
	if err := Supported(); err != nil {
		stratatest.Skip(t, "%v", err)
	}
}

// loadTestGuard loads a guard into its own pin directory, removed in
// t.Cleanup even when the test fails.
func loadTestGuard(t testing.TB, cfg Config) *Guard {
	t.Helper()
	cfg.PinDir = filepath.Join("/sys/fs/bpf", "strata-test-"+randomSuffix(t))
	g, err := Load(cfg)
	t.Cleanup(func() {
		if g != nil {
			g.Close()
		}
		if err := Remove(cfg.PinDir); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := g.Exempt(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	return g
}

type result struct {
	stdout, stderr []byte
	err            error
}

func run(name string, args ...string) result {
	var o, e bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return result{o.Bytes(), e.Bytes(), err}
}

func signaled(err error) (syscall.Signal, bool) {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, false
	}
	ws := ee.Sys().(syscall.WaitStatus)
	return ws.Signal(), ws.Signaled()
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestLiveGuard(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			g := loadTestGuard(t, Config{})
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			data := makeStub(t, stub, 8<<20)
			resident := filepath.Join(mnt, "resident")
			rdata := makeResident(t, resident, 1<<20)
			sparse := filepath.Join(mnt, "sparse")
			if err := os.WriteFile(sparse, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(sparse, 8<<20); err != nil {
				t.Fatal(err)
			}
			mycopy := filepath.Join(t.TempDir(), "mycopy")
			if b, err := os.ReadFile(stratatest.NeedTool(t, "cp")); err != nil || os.WriteFile(mycopy, b, 0o755) != nil {
				t.Fatalf("copy cp: %v", err)
			}
			residentOK := func(when string) {
				t.Helper()
				if r := run("cat", resident); r.err != nil || !bytes.Equal(r.stdout, rdata) {
					t.Errorf("%s: cat resident: %v", when, r.err)
				}
				if r := run("cat", sparse); r.err != nil || len(r.stdout) != 8<<20 {
					t.Errorf("%s: cat sparse resident: %v", when, r.err)
				}
				dst := filepath.Join(t.TempDir(), "c")
				if r := run(mycopy, sparse, dst); r.err != nil {
					t.Errorf("%s: renamed cp of a sparse resident file: %v %s", when, r.err, r.stderr)
				}
				if r := run("filefrag", "-v", sparse); r.err != nil {
					t.Errorf("%s: filefrag sparse resident: %v %s", when, r.err, r.stderr)
				}
			}
			residentOK("guard loaded, no group")

			// (a) guarded: right bytes.
			grp := newFanGroup(t)
			grp.Guard(stub, data)
			if r := run("cat", stub); r.err != nil || !bytes.Equal(r.stdout, data) {
				t.Fatalf("(a) guarded cat: %v, right bytes %v", r.err, bytes.Equal(r.stdout, data))
			}
			punch(t, stub)
			if r := run("sha256sum", stub); r.err != nil || !strings.HasPrefix(string(r.stdout), sha(data)) {
				t.Fatalf("(a) guarded sha256sum: %v %s", r.err, r.stdout)
			}
			punch(t, stub)
			// (e) extent maps refused even while guarded.
			if r := run("filefrag", "-v", stub); r.err == nil && !bytes.Contains(append(r.stdout, r.stderr...), []byte("not supported")) {
				t.Errorf("(e) filefrag on a stub: %s%s", r.stdout, r.stderr)
			}
			// (f) a renamed cp probes holes and is killed; no zero copy.
			dst := filepath.Join(t.TempDir(), "copy")
			r := run(mycopy, stub, dst)
			if sig, ok := signaled(r.err); !ok || sig != syscall.SIGKILL {
				if b, _ := os.ReadFile(dst); r.err == nil && !bytes.Equal(b, data) {
					t.Fatalf("(f) renamed cp exited 0 with wrong bytes (zeros %v)", isZero(b))
				}
				t.Logf("(f) renamed cp: %v (on %s it may not probe)", r.err, fstype)
			}
			punch(t, stub)

			// (c) an fd opened while guarded, read after the group closed.
			sh := exec.Command("sh", "-c", "exec 3<\"$1\"; echo open; read line; cat <&3", "sh", stub)
			stdin, _ := sh.StdinPipe()
			out, _ := sh.StdoutPipe()
			var shErr bytes.Buffer
			sh.Stderr = &shErr
			if err := sh.Start(); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(out)
			if l, _ := br.ReadString('\n'); l != "open\n" {
				t.Fatalf("(c) helper: %q", l)
			}
			mm := exec.Command(os.Args[0], "-test.run=^$")
			mm.Env = append(os.Environ(), helperEnv+"=mmap "+stub)
			mmIn, _ := mm.StdinPipe()
			mmOut, _ := mm.StdoutPipe()
			if err := mm.Start(); err != nil {
				t.Fatal(err)
			}
			mbr := bufio.NewReader(mmOut)
			if l, _ := mbr.ReadString('\n'); l != "open\n" {
				t.Fatalf("(d) helper: %q", l)
			}

			grp.Close() // the daemon is gone

			io.WriteString(stdin, "go\n")
			rest, _ := io.ReadAll(br)
			werr := sh.Wait()
			if werr == nil || len(rest) != 0 {
				t.Errorf("(c) read on an fd opened while guarded: %v, %d bytes (zeros %v)", werr, len(rest), isZero(rest))
			}
			io.WriteString(mmIn, "go\n")
			ml, _ := mbr.ReadString('\n')
			mm.Wait()
			if !strings.Contains(ml, "input/output error") {
				t.Errorf("(d) mmap of an unguarded stub: %q", ml)
			}

			// (b) unguarded: errors, never zeros.
			if r := run("cat", stub); r.err == nil || len(r.stdout) != 0 || !bytes.Contains(r.stderr, []byte("Input/output error")) {
				t.Errorf("(b) unguarded cat: %v, %d bytes, %s", r.err, len(r.stdout), r.stderr)
			}
			if r := run("sha256sum", stub); r.err == nil {
				t.Errorf("(b) unguarded sha256sum succeeded: %s", r.stdout)
			}
			if r := run("dd", "if=/dev/zero", "of="+stub, "bs=4096", "count=1", "conv=notrunc"); r.err == nil {
				t.Errorf("(b) write into an unguarded stub succeeded")
			}
			var st unix.Stat_t
			if unix.Stat(stub, &st) != nil || st.Blocks != 0 {
				t.Errorf("(b) the stub changed: %d blocks", st.Blocks)
			}
			residentOK("guard loaded, group closed")

			// (j) the exempt test process may open it; Unexempt, and not.
			if f, err := os.Open(stub); err != nil {
				t.Errorf("(j) exempt open: %v", err)
			} else {
				f.Close()
			}
			if err := g.Unexempt(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Open(stub); !errors.Is(err, syscall.EIO) {
				t.Errorf("(j) open after Unexempt: %v, want EIO", err)
			}
			// The marker is protected now that the test is not exempt.
			if fd, err := unix.Open(resident, unix.O_RDONLY, 0); err == nil {
				if err := SetMarker(fd); !errors.Is(err, syscall.EPERM) {
					t.Errorf("SetMarker by a non-exempt process: %v, want EPERM", err)
				}
				unix.Close(fd)
			}
			st2, err := g.Status()
			if err != nil || st2.Counters.DeniedOpens == 0 {
				t.Errorf("Status: %+v, %v", st2, err)
			}
			t.Logf("status: %+v", st2)
		})
	}
}

// TestLiveSurvivesLoader: a guard loaded by a process killed with SIGKILL
// stays in force, and Remove really takes it out (the stub reads as zeros
// again: the kernel's own behaviour).
func TestLiveSurvivesLoader(t *testing.T) {
	needGuard(t)
	mnt := stratatest.LoopMount(t, "ext4", 512<<20)
	stub := filepath.Join(mnt, "stub")
	makeStub(t, stub, 1<<20)
	dir := filepath.Join("/sys/fs/bpf", "strata-test-"+randomSuffix(t))
	t.Cleanup(func() { Remove(dir) })
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=load "+dir)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if l, _ := bufio.NewReader(out).ReadString('\n'); l != "loaded\n" {
		cmd.Process.Kill()
		t.Fatalf("loader: %q", l)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if r := run("cat", stub); r.err == nil || len(r.stdout) != 0 {
		t.Fatalf("after the loader's SIGKILL: cat %v, %d bytes", r.err, len(r.stdout))
	}
	if st, err := ReadStatus(dir); err != nil || !st.Loaded {
		t.Fatalf("ReadStatus: %+v %v", st, err)
	}
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := run("cat", stub)
		if r.err == nil && len(r.stdout) == 1<<20 && isZero(r.stdout) {
			break // the kernel's behaviour without the guard: zeros, exit 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Remove: cat %v, %d bytes", r.err, len(r.stdout))
		}
	}
}

// BenchmarkGuardHotPath measures resident-file costs with the guard loaded
// and not, in alternating rounds, and reports the median ratios (1.0 = no
// cost). See docs/BENCHMARKS-guard.md.
func BenchmarkGuardHotPath(b *testing.B) {
	needGuard(b)
	for _, fstype := range stratatest.FSTypes {
		b.Run(fstype, func(b *testing.B) {
			mnt := stratatest.LoopMount(b, fstype, 2<<30)
			small := filepath.Join(mnt, "small")
			os.Mkdir(small, 0o755)
			for i := range 20000 {
				makeResidentQuiet(b, filepath.Join(small, fmt.Sprint(i)), 4096)
			}
			big := filepath.Join(mnt, "big")
			makeResidentQuiet(b, big, 1<<30)
			sparse := filepath.Join(mnt, "sparse")
			os.WriteFile(sparse, []byte("x"), 0o644)
			os.Truncate(sparse, 1<<30)
			work := map[string]func(){
				"open-read-close 20k x 4KiB": func() { openReadAll(b, small, 20000) },
				"pread 4KiB random x 100k":   func() { preadRandom(b, big, 100000) },
				"sequential read 1GiB":       func() { seqRead(b, big) },
				"open+close sparse x 100k":   func() { openClose(b, sparse, 100000) },
			}
			for _, f := range work {
				f() // warm the caches
			}
			times := map[string][2][]time.Duration{}
			pin := filepath.Join("/sys/fs/bpf", "strata-bench-"+randomSuffix(b))
			defer Remove(pin)
			for round := range 7 {
				for _, loaded := range []bool{round%2 == 0, round%2 != 0} {
					var g *Guard
					if loaded {
						var err error
						if g, err = Load(Config{PinDir: pin}); err != nil {
							b.Fatal(err)
						}
					}
					for name, f := range work {
						t0 := time.Now()
						f()
						ts := times[name]
						i := 0
						if loaded {
							i = 1
						}
						ts[i] = append(ts[i], time.Since(t0))
						times[name] = ts
					}
					if g != nil {
						g.Close()
						Remove(pin)
					}
				}
			}
			for name, ts := range times {
				off, on := median(ts[0]), median(ts[1])
				b.ReportMetric(float64(off)/float64(on), "ratio:"+strings.ReplaceAll(name, " ", "_"))
				b.Logf("%s %s: without %v, with %v, ratio %.3f", fstype, name, off, on, float64(off)/float64(on))
			}
		})
	}
}
