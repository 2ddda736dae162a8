//go:build linux

package interceptor_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

var modes = []interceptor.Mode{interceptor.ModePreAccess, interceptor.ModeOpenPerm}

func forEach(t *testing.T, fn func(t *testing.T, fs string, mode interceptor.Mode)) {
	for _, fs := range stratatest.FSTypes {
		for _, mode := range modes {
			t.Run(fs+"/"+string(mode), func(t *testing.T) { fn(t, fs, mode) })
		}
	}
}

// TestPrograms runs real programs on stubs and compares every byte they
// see with the original.
func TestPrograms(t *testing.T) {
	helper := buildHelper(t)
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		e := newEnv(t, fs, mode, fillWhole)
		p := func(name string) string { return filepath.Join(e.mnt, name) }

		t.Run("cat", func(t *testing.T) {
			data := content(1, 10<<20+123)
			makeStub(t, e.it, e.src, p("cat.bin"), data, 0o644)
			sameBytes(t, "cat", mustRun(t, "cat", p("cat.bin")), data)
			c := e.comp.waitComplete(t, p("cat.bin"))
			if c.Bytes != int64(len(data)) || c.Size != int64(len(data)) || c.Truncated || c.Process != "cat" || c.PID <= 0 || c.Tier != "test" {
				t.Fatalf("completion %+v", c)
			}
		})

		t.Run("dd-middle", func(t *testing.T) {
			data := content(2, 64<<20)
			id := makeStub(t, e.it, e.src, p("dd.bin"), data, 0o644)
			// Only the chunk holding bytes 37-39 MiB may be served until
			// dd is done: the access must not wait for the whole file.
			gate := make(chan struct{})
			if mode == interceptor.ModePreAccess {
				e.src.mu.Lock()
				e.src.gate, e.src.allow = gate, func(off int64) bool { return off == 36<<20 }
				e.src.mu.Unlock()
			}
			out, err := run(t, "dd", "if="+p("dd.bin"), "bs=1M", "skip=37", "count=2", "status=none")
			e.src.mu.Lock()
			e.src.gate, e.src.allow = nil, nil
			e.src.mu.Unlock()
			close(gate)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "dd at 37 MiB", out, data[37<<20:39<<20])
			e.comp.waitComplete(t, p("dd.bin"))
			sameBytes(t, "whole file after background fill", mustRun(t, "cat", p("dd.bin")), data)
			if got := e.src.objectBytes(id); got != int64(len(data)) {
				t.Fatalf("source served %d bytes for a %d-byte stub", got, len(data))
			}
		})

		t.Run("cp", func(t *testing.T) {
			// Under WholeFileBelow: cp (coreutils 9) looks for data with
			// SEEK_DATA, which raises no event (see README.md).
			data := content(3, 900<<10+7)
			makeStub(t, e.it, e.src, p("cp.bin"), data, 0o644)
			mustRun(t, "cp", p("cp.bin"), p("cp.copy"))
			got, err := os.ReadFile(p("cp.copy"))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "cp copy", got, data)
		})

		t.Run("sha256sum", func(t *testing.T) {
			data := content(4, 5<<20+1)
			makeStub(t, e.it, e.src, p("sum.bin"), data, 0o644)
			out := mustRun(t, "sha256sum", p("sum.bin"))
			sum := sha256.Sum256(data)
			if got := strings.Fields(string(out))[0]; got != hex.EncodeToString(sum[:]) {
				t.Fatalf("sha256sum %s, want %x", got, sum)
			}
		})

		t.Run("tar", func(t *testing.T) {
			dir := p("tree")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{}
			for j := range 3 {
				name := fmt.Sprintf("f%d", j)
				want[name] = content(uint64(50+j), (j+1)<<20+j)
				makeStub(t, e.it, e.src, filepath.Join(dir, name), want[name], 0o644)
			}
			out, err := run(t, "tar", "cf", "-", "-C", dir, ".")
			tarWarnedOnly(t, err)
			tr := tar.NewReader(bytes.NewReader(out))
			seen := 0
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.Typeflag != tar.TypeReg {
					continue
				}
				got, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				sameBytes(t, "tar member "+h.Name, got, want[filepath.Base(h.Name)])
				seen++
			}
			if seen != len(want) {
				t.Fatalf("tar held %d files, want %d", seen, len(want))
			}
		})

		t.Run("mmap", func(t *testing.T) {
			data := content(6, 12<<20+4097)
			makeStub(t, e.it, e.src, p("mmap.bin"), data, 0o644)
			out := mustRun(t, helper, "mmap", p("mmap.bin"))
			sum := sha256.Sum256(data)
			if got := strings.TrimSpace(string(out)); got != hex.EncodeToString(sum[:]) {
				t.Fatalf("sha256 of the mapping %s, want %x", got, sum)
			}
		})

		t.Run("exec", func(t *testing.T) {
			bin, err := os.ReadFile(helper)
			if err != nil {
				t.Fatal(err)
			}
			makeStub(t, e.it, e.src, p("prog"), bin, 0o755)
			// Exec through sh, never straight from this process: os/exec
			// forks with CLONE_VFORK, and a Go process whose vfork child is
			// held on this process's own fanotify event can deadlock its
			// runtime (the parent thread cannot be stopped for GC).
			out := mustRun(t, "sh", "-c", `"$0" hello`, p("prog"))
			if string(out) != "hello from a stub\n" {
				t.Fatalf("stubbed program printed %q", out)
			}
			e.comp.waitComplete(t, p("prog"))
			got, err := os.ReadFile(p("prog"))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "recalled executable", got, bin)
		})

		t.Run("append", func(t *testing.T) {
			data := content(7, 6<<20+5)
			makeStub(t, e.it, e.src, p("append.bin"), data, 0o644)
			mustRun(t, "sh", "-c", "printf APPENDED >> "+p("append.bin"))
			e.comp.waitComplete(t, p("append.bin"))
			got, err := os.ReadFile(p("append.bin"))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "appended stub", got, append(append([]byte(nil), data...), "APPENDED"...))
		})

		t.Run("overwrite-middle", func(t *testing.T) {
			data := content(8, 9<<20)
			makeStub(t, e.it, e.src, p("write.bin"), data, 0o644)
			patch := bytes.Repeat([]byte("W"), 10000)
			mustRun(t, "dd", "of="+p("write.bin"), "bs=10000", "seek=500", "count=1", "conv=notrunc", "status=none", "if="+writeTemp(t, patch))
			e.comp.waitComplete(t, p("write.bin"))
			want := append([]byte(nil), data...)
			copy(want[5000000:], patch)
			got, err := os.ReadFile(p("write.bin"))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "stub written in the middle", got, want)
		})

		t.Run("truncate-to-zero", func(t *testing.T) {
			data := content(9, 8<<20)
			id := makeStub(t, e.it, e.src, p("trunc0.bin"), data, 0o644)
			mustRun(t, "sh", "-c", "printf new > "+p("trunc0.bin"))
			c := e.comp.waitComplete(t, p("trunc0.bin"))
			got, err := os.ReadFile(p("trunc0.bin"))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "replaced stub", got, []byte("new"))
			if mode == interceptor.ModePreAccess {
				if n := e.src.objectBytes(id); n != 0 || !c.Truncated || c.Size != 0 {
					t.Fatalf("truncate to 0 recalled %d bytes; completion %+v", n, c)
				}
			}
		})

		t.Run("truncate-middle", func(t *testing.T) {
			data := content(10, 10<<20)
			makeStub(t, e.it, e.src, p("trunc.bin"), data, 0o644)
			mustRun(t, "truncate", "-s", "5555555", p("trunc.bin"))
			// The recall may complete before or after the truncate runs
			// (both are correct); the bytes must be the original's prefix.
			e.comp.waitComplete(t, p("trunc.bin"))
			got, err := os.ReadFile(p("trunc.bin"))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "truncated stub", got, data[:5555555])
		})

		t.Run("complete-unmarks-and-resident-untouched", func(t *testing.T) {
			data := content(11, 4<<20+1)
			makeStub(t, e.it, e.src, p("done.bin"), data, 0o644)
			resident := content(12, 3<<20)
			if err := os.WriteFile(p("resident.bin"), resident, 0o644); err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "first read", mustRun(t, "cat", p("done.bin")), data)
			e.comp.waitComplete(t, p("done.bin"))
			info, err := stub.ReadPath(p("done.bin"))
			if err != nil || info.State != stub.Archived {
				t.Fatalf("stub after recall: %+v, %v", info, err)
			}
			before := e.it.Stats().Events
			sameBytes(t, "read after recall", mustRun(t, "cat", p("done.bin")), data)
			sameBytes(t, "resident file", mustRun(t, "cat", p("resident.bin")), resident)
			mustRun(t, "sh", "-c", "printf more >> "+p("resident.bin"))
			if after := e.it.Stats().Events; after != before {
				t.Fatalf("%d events for a recalled and a resident file, want 0", after-before)
			}
		})
	})
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "patch")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConcurrentReaders: 200 readers of 20 stubs; each stub is recalled
// once (the source serves each byte once) and every reader sees the
// original.
func TestConcurrentReaders(t *testing.T) {
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		e := newEnv(t, fs, mode, nil)
		type file struct {
			path, id string
			data     []byte
		}
		var files []file
		for j := range 20 {
			f := file{path: filepath.Join(e.mnt, fmt.Sprintf("c%02d", j)), data: content(uint64(100+j), 6<<20+j*4099)}
			f.id = makeStub(t, e.it, e.src, f.path, f.data, 0o644)
			files = append(files, f)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for r := range 200 {
			f := files[r%20]
			wg.Go(func() {
				out, err := run(t, "cat", f.path)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(out, f.data) {
					errs <- fmt.Errorf("reader %d of %s: wrong bytes", r, f.path)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for _, f := range files {
			e.comp.waitComplete(t, f.path)
			if got := e.src.objectBytes(f.id); got != int64(len(f.data)) {
				t.Errorf("%s: source served %d bytes, want %d (one recall)", f.path, got, len(f.data))
			}
		}
	})
}

// TestSourceFailure: while the tier is down a read gets EIO (never zeros);
// once it is back the same read gets the original bytes.
func TestSourceFailure(t *testing.T) {
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		e := newEnv(t, fs, mode, nil)
		path := filepath.Join(e.mnt, "fail.bin")
		data := content(200, 7<<20)
		makeStub(t, e.it, e.src, path, data, 0o644)
		e.src.fail.Store(true)
		out, err := run(t, "cat", path)
		if err == nil {
			t.Fatalf("cat of a stub with its tier down succeeded with %d bytes", len(out))
		}
		if !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), "Input/output error") {
			t.Fatalf("cat: %v, want exit 1 with EIO", err)
		}
		if len(out) != 0 {
			t.Fatalf("cat printed %d bytes before EIO", len(out))
		}
		fails := e.comp.failures()
		if len(fails) == 0 || fails[0].Path != path || fails[0].Background {
			t.Fatalf("failures %+v", fails)
		}
		e.src.fail.Store(false)
		sameBytes(t, "cat after the tier is back", mustRun(t, "cat", path), data)
		e.comp.waitComplete(t, path)
	})
}

// TestSupported checks the doctor probe on ext4, XFS and tmpfs.
func TestSupported(t *testing.T) {
	for _, fs := range stratatest.FSTypes {
		mnt := stratatest.LoopMount(t, fs, 320<<20)
		if ok, why := interceptor.Supported(mnt); !ok {
			t.Errorf("%s: not supported: %s", fs, why)
		}
	}
	if ok, why := interceptor.Supported("/dev/shm"); ok {
		t.Errorf("tmpfs reported as supported: %s", why)
	} else if !strings.Contains(why, "tmpfs") {
		t.Errorf("reason %q does not name tmpfs", why)
	}
}
