//go:build linux

package kernelguard

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestReadKillExperiment checks what the reader-kill experiment of
// testdata/bench.bpf.c (not part of the guard: README.md, "Readers of
// unguarded stubs") would give, on ext4 and XFS: a process reading a
// registered stub that no fanotify mark guards is killed inside its first
// read(2), which never returns (the reader prints nothing after it); with a
// live mark the read is filled and returns the right bytes; resident files
// are read as always. Its cost is in BenchmarkGuard.
func TestReadKillExperiment(t *testing.T) {
	needGuard(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			stub := filepath.Join(mnt, "stub")
			data := makeStub(t, stub, 8<<20)
			res := filepath.Join(mnt, "resident")
			rdata := makeResident(t, res, 1<<20)
			coll := loadBenchProgs(t, 0)
			defer coll.Close()
			fd := openRO(t, stub)
			k, gen, err := stubOf(fd)
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			if err := coll.Maps["rk_stubs"].Put(k, stubValue{Gen: gen}); err != nil {
				t.Fatal(err)
			}
			l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs["rk_read"]})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()

			read := func(path string) result {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), helperEnv+"=read "+path)
				var o, e bytes.Buffer
				cmd.Stdout, cmd.Stderr = &o, &e
				err := cmd.Run()
				return result{o.Bytes(), e.Bytes(), err, cmd.Process.Pid}
			}
			if r := read(stub); !r.killed() || len(r.stdout) != 0 {
				t.Errorf("reader of an unguarded stub: %v, printed %q; want SIGKILL inside read(2)", r, r.stdout)
			}
			if r := run(t, "cat", stub); !r.killed() || len(r.stdout) != 0 {
				t.Errorf("cat of an unguarded stub: %v, %d bytes out", r, len(r.stdout))
			}
			if r := read(res); r.err != nil || string(r.stdout) != fmt.Sprintf("returned %d %x\n", 64<<10, sha(rdata[:64<<10])) {
				t.Errorf("reader of a resident file: %v %q", r, r.stdout)
			}
			g := newFanGroup(t)
			g.Guard(stub, data)
			if r := read(stub); r.err != nil || string(r.stdout) != fmt.Sprintf("returned %d %x\n", 64<<10, sha(data[:64<<10])) {
				t.Errorf("reader of a guarded stub: %v %q; want the filled bytes", r, r.stdout)
			}
			var n uint64
			if err := coll.Maps["rk_kills"].Lookup(uint32(0), &n); err != nil || n != 2 {
				t.Errorf("kills counted: %d %v, want 2", n, err)
			}
		})
	}
}

func sha(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}
