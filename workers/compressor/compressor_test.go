package compressor

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/object/objecttest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

var testOpts = object.Options{FrameSize: 256 << 10}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

// stagingEntries lists the staging directory, ignoring lost+found.
func stagingEntries(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Name() != "lost+found" {
			names = append(names, e.Name())
		}
	}
	return names
}

func newCompressor(t testing.TB, staging string) *Compressor {
	t.Helper()
	c, err := New(Config{StagingDir: staging, Object: testOpts})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPackFile(t *testing.T) {
	zstdBin := stratatest.NeedTool(t, "zstd")
	dir, staging := t.TempDir(), t.TempDir()
	for name, data := range map[string][]byte{
		"empty": nil,
		"small": []byte("hello, strata\n"),
		"mixed": objecttest.Mixed(3<<20+17, 1),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			writeFile(t, path, data)
			// An old atime: a plain read would update it (relatime), O_NOATIME must not.
			old := time.Now().Add(-72 * time.Hour).Truncate(time.Second)
			if err := os.Chtimes(path, old, old.Add(-time.Hour)); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil {
				t.Fatal(err)
			}
			res, err := packOnce(context.Background(), path, staging, testOpts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Deduped || res.ObjectID != res.Manifest.ObjectID || res.ObjectPath != filepath.Join(staging, res.ObjectID+".zst") {
				t.Fatalf("result %+v", res)
			}
			s := res.Stat
			if s.Size != int64(len(data)) || s.Inode != st.Ino || s.Dev != st.Dev || s.Mode != st.Mode ||
				s.MtimeNS != unix.TimespecToNsec(st.Mtim) || s.CtimeNS != unix.TimespecToNsec(st.Ctim) || s.AtimeNS != old.UnixNano() {
				t.Fatalf("stat %+v does not match the file", s)
			}
			// The staged manifest is valid, carries the file section, and
			// the object verifies against it.
			js, err := os.ReadFile(res.ManifestPath)
			if err != nil {
				t.Fatal(err)
			}
			m, err := object.DecodeManifest(js)
			if err != nil {
				t.Fatal(err)
			}
			if m.File == nil || m.File.Path != path || m.File.Size != int64(len(data)) || m.File.Mode != st.Mode || m.File.MtimeNS != s.MtimeNS {
				t.Fatalf("manifest file section %+v", m.File)
			}
			f, err := os.Open(res.ObjectPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := object.Verify(f, m); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(zstdBin, "-dc", res.ObjectPath).Output()
			if err != nil || !bytes.Equal(out, data) {
				t.Fatalf("zstd -dc of the staged object: %v", err)
			}
			// atime untouched by the read.
			var after unix.Stat_t
			if err := unix.Stat(path, &after); err != nil {
				t.Fatal(err)
			}
			if unix.TimespecToNsec(after.Atim) != old.UnixNano() {
				t.Fatalf("atime changed by the read")
			}
			ev := res.ObjectPacked(strings.Repeat("ab", 16))
			if err := ev.Validate(); err != nil {
				t.Fatalf("object.packed event from the result: %v", err)
			}
			for _, n := range stagingEntries(t, staging) {
				if strings.HasPrefix(n, tempPrefix) {
					t.Fatalf("temp file %s left in staging", n)
				}
			}
		})
	}
}

func TestChangedDuringRead(t *testing.T) {
	data := objecttest.Mixed(4<<20, 2)
	cases := map[string]func(t *testing.T, path string){
		"write": func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("changed"), 3<<20); err != nil {
				t.Fatal(err)
			}
		},
		"write-restore-mtime": func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("sneaky"), 100); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil { // ctime still moves
				t.Fatal(err)
			}
		},
		"truncate": func(t *testing.T, path string) {
			if err := os.Truncate(path, 1<<20); err != nil {
				t.Fatal(err)
			}
		},
		"append": func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write([]byte("more")); err != nil {
				t.Fatal(err)
			}
		},
		"replace": func(t *testing.T, path string) {
			tmp := path + ".new"
			writeFile(t, tmp, data)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		},
		"delete": func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, change := range cases {
		t.Run(name, func(t *testing.T) {
			dir, staging := t.TempDir(), t.TempDir()
			path := filepath.Join(dir, "f")
			writeFile(t, path, data)
			c := newCompressor(t, staging)
			changed := false
			c.hooks.onRead = func(total int64) {
				if !changed && total >= 1<<20 {
					changed = true
					change(t, path)
				}
			}
			_, err := c.Pack(context.Background(), filepath.Dir(path), path)
			if !changed {
				t.Fatal("the hook never ran")
			}
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("Pack = %v, want ErrChanged", err)
			}
			if ents := stagingEntries(t, staging); len(ents) != 0 {
				t.Fatalf("staging holds %v after a refused pack", ents)
			}
		})
	}
}

func TestDedup(t *testing.T) {
	dir, staging := t.TempDir(), t.TempDir()
	data := objecttest.Mixed(2<<20, 3)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, data)
	writeFile(t, b, data)
	c := newCompressor(t, staging)
	ra, err := c.Pack(context.Background(), filepath.Dir(a), a)
	if err != nil {
		t.Fatal(err)
	}
	objInfo, err := os.Stat(ra.ObjectPath)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := c.Pack(context.Background(), filepath.Dir(b), b)
	if err != nil {
		t.Fatal(err)
	}
	if !rb.Deduped || rb.ObjectID != ra.ObjectID || rb.Manifest.File.Path != b || rb.Stat.Inode == ra.Stat.Inode {
		t.Fatalf("second pack: deduped=%v id equal=%v file=%+v", rb.Deduped, rb.ObjectID == ra.ObjectID, rb.Manifest.File)
	}
	if ents := stagingEntries(t, staging); len(ents) != 2 {
		t.Fatalf("staging holds %v, want one object and its manifest", ents)
	}
	if fi, err := os.Stat(ra.ObjectPath); err != nil || !os.SameFile(fi, objInfo) {
		t.Fatalf("the staged object was replaced on dedup: %v", err)
	}
	// A damaged staged object is not trusted: the next pack replaces it.
	obj, err := os.ReadFile(ra.ObjectPath)
	if err != nil {
		t.Fatal(err)
	}
	obj[len(obj)/2] ^= 0xFF
	writeFile(t, ra.ObjectPath, obj)
	rc, err := c.Pack(context.Background(), filepath.Dir(b), b)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Deduped {
		t.Fatal("a corrupt staged object was kept")
	}
	f, err := os.Open(rc.ObjectPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := object.Verify(f, rc.Manifest); err != nil {
		t.Fatalf("replaced object: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	dir, staging := t.TempDir(), t.TempDir()
	c := newCompressor(t, staging)
	ctx := context.Background()
	reg := filepath.Join(dir, "reg")
	writeFile(t, reg, []byte("x"))
	link := filepath.Join(dir, "link")
	if err := os.Symlink(reg, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		path string
		want error
	}{
		"missing":   {filepath.Join(dir, "nope"), fs.ErrNotExist},
		"directory": {dir, ErrNotRegular},
		"symlink":   {link, beneath.ErrOutside}, // never followed, not even as the last component
		"fifo":      {fifo, ErrNotRegular},      // must not block waiting for a writer
		"device":    {"/dev/null", ErrNotRegular},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := c.Pack(ctx, filepath.Dir(tc.path), tc.path); !errors.Is(err, tc.want) {
				t.Fatalf("Pack(%s) = %v, want %v", tc.path, err, tc.want)
			}
		})
	}
	t.Run("read-error", func(t *testing.T) {
		// /proc/self/mem is a regular file whose read at offset 0 fails (EIO).
		if _, err := c.Pack(ctx, "/proc/self", "/proc/self/mem"); !errors.Is(err, syscall.EIO) {
			t.Fatalf("Pack(/proc/self/mem) = %v, want EIO", err)
		}
	})
	t.Run("staging-missing", func(t *testing.T) {
		if _, err := packOnce(ctx, reg, filepath.Join(dir, "no-staging"), testOpts); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("missing staging dir: %v", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		big := filepath.Join(dir, "big")
		writeFile(t, big, objecttest.Random(2<<20, 4))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := c.Pack(cctx, filepath.Dir(big), big); !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled: %v", err)
		}
	})
	if ents := stagingEntries(t, staging); len(ents) != 0 {
		t.Fatalf("staging holds %v after failed packs", ents)
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("empty staging dir accepted")
	}
}

func TestRemoveTemps(t *testing.T) {
	staging := t.TempDir()
	writeFile(t, filepath.Join(staging, tempPrefix+"123.tmp"), []byte("partial"))
	keep := filepath.Join(staging, strings.Repeat("a", 64)+".zst")
	writeFile(t, keep, []byte("x"))
	if err := RemoveTemps(staging); err != nil {
		t.Fatal(err)
	}
	if ents := stagingEntries(t, staging); len(ents) != 1 || ents[0] != filepath.Base(keep) {
		t.Fatalf("staging holds %v", ents)
	}
}

// TestLoopMounted runs on a real ext4 image: inode generations are read,
// and a full staging filesystem (ENOSPC) fails cleanly.
func TestLoopMounted(t *testing.T) {
	stratatest.NeedRoot(t)
	lsattr := stratatest.NeedTool(t, "lsattr")
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	staging := stratatest.LoopMount(t, "ext4", 16<<20)
	c := newCompressor(t, staging)

	t.Run("generation", func(t *testing.T) {
		path := filepath.Join(hot, "gen")
		writeFile(t, path, []byte("generation"))
		res, err := c.Pack(context.Background(), filepath.Dir(path), path)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(lsattr, "-v", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		gen, err := strconv.ParseUint(strings.Fields(string(out))[0], 10, 32)
		if err != nil {
			t.Fatalf("lsattr -v output %q: %v", out, err)
		}
		if res.Stat.Generation != gen {
			t.Fatalf("generation %d, lsattr says %d", res.Stat.Generation, gen)
		}
	})
	t.Run("enospc", func(t *testing.T) {
		path := filepath.Join(hot, "big")
		writeFile(t, path, objecttest.Random(32<<20, 5)) // incompressible, twice the staging fs
		before := stagingEntries(t, staging)
		_, err := c.Pack(context.Background(), filepath.Dir(path), path)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Pack onto a full filesystem = %v, want ENOSPC", err)
		}
		if got := stagingEntries(t, staging); len(got) != len(before) {
			t.Fatalf("staging holds %v after ENOSPC, had %v", got, before)
		}
		// Space is back: a small file still packs.
		small := filepath.Join(hot, "small")
		writeFile(t, small, []byte("fits"))
		if _, err := c.Pack(context.Background(), filepath.Dir(small), small); err != nil {
			t.Fatalf("pack after ENOSPC: %v", err)
		}
	})
}

// packOnce packs the file at path (its directory as the hot tree) into
// stagingDir with opts.
func packOnce(ctx context.Context, path, stagingDir string, opts object.Options) (Result, error) {
	c, err := New(Config{StagingDir: stagingDir, Object: opts})
	if err != nil {
		return Result{}, err
	}
	return c.Pack(ctx, filepath.Dir(path), path)
}

// TestPackNeverLeavesTheTree: a file reached through a directory symlink
// that points out of the hot tree (say to /etc) is never read, whoever
// swapped the directory in: the root daemon must not copy it to the cold
// tiers. Nothing is staged.
func TestPackNeverLeavesTheTree(t *testing.T) {
	root, outside, staging := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "shadow"), []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "etc")); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{StagingDir: staging, Object: testOpts})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pack(context.Background(), root, filepath.Join(root, "etc", "shadow")); !errors.Is(err, beneath.ErrOutside) {
		t.Fatalf("pack through a symlink out of the tree: %v; want beneath.ErrOutside", err)
	}
	if ents, _ := os.ReadDir(staging); len(ents) != 0 {
		t.Fatalf("staging holds %d entries: something outside the tree was read", len(ents))
	}
}
