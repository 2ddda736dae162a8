package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// contentGen returns deterministic makers of random (incompressible) and
// text-like (compressible) content.
func contentGen(seed, stream uint64) (random, text func(n int) []byte) {
	r := rand.New(rand.NewPCG(seed, stream))
	random = func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	text = func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			fmt.Fprintf(&b, "line %d: the quick brown fox %d jumps over the lazy dog\n", b.Len(), r.IntN(1000))
		}
		return b.Bytes()[:n]
	}
	return random, text
}

// testFiles writes a mix of files under dir and returns their contents by
// path.
func testFiles(t *testing.T, dir string, seed uint64) map[string][]byte {
	t.Helper()
	random, text := contentGen(seed, 7)
	files := map[string][]byte{
		"random.bin":        random(9<<20 + 12345),
		"text.txt":          text(5 << 20),
		"small.dat":         random(100 << 10),
		"sub/deeper/a.log":  text(300<<10 + 1),
		"sub/deeper/b.bin":  random(4 << 20), // exactly one frame
		"sub/same-as-small": nil,             // identical content: one object
	}
	files["sub/same-as-small"] = files["small.dat"]
	out := map[string][]byte{}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
		out[p] = b
	}
	return out
}

func cliJSON(t *testing.T, out any, args ...string) {
	t.Helper()
	stdout, stderr, code := cli(t, args...)
	if code != 0 {
		t.Fatalf("strata %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("strata %s: %v\n%s", strings.Join(args, " "), err, stdout)
	}
}

// TestArchiveAndRecall is the whole loop on real filesystems: archive a
// tree with strata archive --wait, check the stubs (blocks freed, metadata
// unchanged, xattrs), read them back with real programs (bytes equal the
// originals), release a recalled clean file again without a new object,
// restore a version to a new path, and verify the catalog against the log.
func TestArchiveAndRecall(t *testing.T) {
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			hot := stratatest.LoopMount(t, fstype, 400<<20)
			data, cold := t.TempDir(), t.TempDir()
			files := testFiles(t, hot, 1)
			pinnedDir := filepath.Join(hot, "keep")
			os.Mkdir(pinnedDir, 0o755)
			os.WriteFile(filepath.Join(pinnedDir, "never"), []byte("pinned content"), 0o644)
			before := map[string]unix.Stat_t{}
			for p := range files {
				var st unix.Stat_t
				unix.Stat(p, &st)
				before[p] = st
			}
			d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
				Tiers: []TierConfig{{Name: "hdd", Kind: "directory", Path: cold}}})

			if _, errs, code := cli(t, "pin", "--data", data, pinnedDir); code != 0 {
				t.Fatalf("pin: %s", errs)
			}
			var sum archiveSummary
			cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
			if sum.Released != len(files) || sum.Selected != len(files) {
				t.Fatalf("archive: %+v", sum)
			}
			// The pinned directory lies inside the archived tree: its files
			// are simply not selected.

			for p, want := range files {
				var st unix.Stat_t
				if err := unix.Stat(p, &st); err != nil {
					t.Fatal(err)
				}
				b := before[p]
				if st.Size != b.Size || st.Mode != b.Mode || st.Uid != b.Uid || st.Gid != b.Gid || st.Mtim != b.Mtim || st.Ino != b.Ino {
					t.Errorf("%s: stat changed by release: before %+v after %+v", p, b, st)
				}
				if st.Blocks*512 > 64<<10 {
					t.Errorf("%s: %d bytes still allocated after release", p, st.Blocks*512)
				}
				info, err := stub.ReadPath(p)
				if err != nil || info.State != stub.Released || info.Size != int64(len(want)) {
					t.Errorf("%s: xattrs %+v %v", p, info, err)
				}
			}
			if _, err := os.Stat(filepath.Join(pinnedDir, "never")); err != nil {
				t.Fatal(err)
			}
			if info, err := stub.ReadPath(filepath.Join(pinnedDir, "never")); err == nil {
				t.Fatalf("pinned file was archived: %+v", info)
			}
			du, err := exec.Command("du", "-s", "-B1", hot).Output()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("du after release: %s", strings.TrimSpace(string(du)))

			var ls scanner.LsReply
			cliJSON(t, &ls, "ls", "--json", "--data", data, hot)
			for _, f := range ls.Files {
				if _, ok := files[f.Path]; !ok {
					continue
				}
				if f.State != "released" || len(f.Copies) != 1 || f.Copies[0] != "hdd" {
					t.Errorf("ls %s: %+v", f.Path, f)
				}
			}
			objects := countObjects(t, cold)
			if objects != len(files)-1 { // two files share one object
				t.Errorf("cold tier holds %d objects, want %d", objects, len(files)-1)
			}

			// Real programs read the stubs: every byte must be the original.
			for p, want := range files {
				got, err := exec.Command("cat", p).Output()
				if err != nil {
					t.Fatalf("cat %s: %v", p, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("cat %s: %d bytes, differ from the original %d bytes", p, len(got), len(want))
				}
			}
			// A recall is not a modification: mtime is what it was.
			for p := range files {
				var st unix.Stat_t
				if err := unix.Stat(p, &st); err != nil {
					t.Fatal(err)
				}
				if st.Mtim != before[p].Mtim || st.Size != before[p].Size {
					t.Errorf("%s: mtime/size after recall %v/%d, before %v/%d", p, st.Mtim, st.Size, before[p].Mtim, before[p].Size)
				}
			}
			big := filepath.Join(hot, "random.bin")
			out, err := exec.Command("sha256sum", big).Output()
			if err != nil || !strings.HasPrefix(string(out), fmt.Sprintf("%x", sha256.Sum256(files[big]))) {
				t.Fatalf("sha256sum: %s %v", out, err)
			}

			// Recalled and unmodified: archived-clean, in the catalog too.
			waitFor(t, time.Minute, func() error {
				f, err := d.cat.FileByPath(big)
				if err != nil {
					return err
				}
				if f.State != catalog.StateArchived {
					return fmt.Errorf("state %s", f.State)
				}
				return nil
			})

			// Releasing it again needs no new object.
			var sum2 archiveSummary
			cliJSON(t, &sum2, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, big)
			if sum2.Released != 1 {
				t.Fatalf("re-archive: %+v", sum2)
			}
			if n := countObjects(t, cold); n != objects {
				t.Fatalf("re-archive of a clean file wrote objects: %d, was %d", n, objects)
			}
			got, err := exec.Command("cat", big).Output()
			if err != nil || !bytes.Equal(got, files[big]) {
				t.Fatalf("cat after second release: %v", err)
			}

			// Restore a version to a new path.
			dest := filepath.Join(t.TempDir(), "restored.txt")
			var rr recall.RestoreReply
			txt := filepath.Join(hot, "text.txt")
			cliJSON(t, &rr, "restore", "--json", "--version", "1", "--to", dest, "--data", data, txt)
			restored, err := os.ReadFile(dest)
			if err != nil || !bytes.Equal(restored, files[txt]) || rr.Version != 1 {
				t.Fatalf("restore: %+v %v", rr, err)
			}

			// A write to a recalled (archived-clean) file makes it dirty;
			// archived again, it is a new version, and the old one is
			// still there.
			f, err := os.OpenFile(txt, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("one more line\n")
			f.Close()
			newText := append(append([]byte{}, files[txt]...), "one more line\n"...)
			if _, err := d.stages.scanner.ScanOnce(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 30*time.Second, func() error {
				f, err := d.cat.FileByPath(txt)
				if err == nil && f.State != catalog.StateDirty {
					err = fmt.Errorf("state %s", f.State)
				}
				return err
			})
			var sum3 archiveSummary
			cliJSON(t, &sum3, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, txt)
			if sum3.Released != 1 {
				t.Fatalf("archive of a dirty file: %+v", sum3)
			}
			tf, _ := d.cat.FileByPath(txt)
			vs, err := d.cat.Versions(tf.ID)
			if err != nil || len(vs) != 2 || tf.Version != 2 {
				t.Fatalf("versions after a modification: %+v %v", vs, err)
			}
			old := filepath.Join(t.TempDir(), "v1.txt")
			cliJSON(t, &rr, "restore", "--json", "--version", "1", "--to", old, "--data", data, txt)
			if b, err := os.ReadFile(old); err != nil || !bytes.Equal(b, files[txt]) {
				t.Fatalf("restore of version 1 after a modification: %v", err)
			}
			if got, err := exec.Command("cat", txt).Output(); err != nil || !bytes.Equal(got, newText) {
				t.Fatalf("cat of version 2: %v", err)
			}

			if out, errs, code := cli(t, "replay", "--verify", "--data", data); code != 0 {
				t.Fatalf("replay --verify: %d %s %s", code, out, errs)
			}
			var st statusReply
			cliJSON(t, &st, "status", "--json", "--data", data)
			if st.Stream.DeadLetters != 0 {
				t.Fatalf("dead letters: %+v", st.Stream)
			}
		})
	}
}

func countObjects(t *testing.T, root string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(root, "objects", "*", "*.zst"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// TestDeletedStub: removing a stub is noticed by the scanner (two scans in
// a row must miss it), recorded as file.deleted, and its object stays in the
// tier; a renamed stub is not taken for a deleted one.
func TestDeletedStub(t *testing.T) {
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	data, cold := t.TempDir(), t.TempDir()
	gone, moved := filepath.Join(hot, "gone.bin"), filepath.Join(hot, "moved.bin")
	downMoved := filepath.Join(hot, "down.bin")
	os.WriteFile(gone, bytes.Repeat([]byte("gone "), 50000), 0o644)
	os.WriteFile(moved, bytes.Repeat([]byte("moved "), 50000), 0o644)
	os.WriteFile(downMoved, bytes.Repeat([]byte("renamed while down "), 50000), 0o644)
	// A stub this small may own more blocks than its size (its record in
	// an xattr block where the inode has no room): the scanner must not
	// tell stubs from resident files by their blocks.
	tiny, tinyData := filepath.Join(hot, "tiny.bin"), []byte("a tiny file, renamed while the daemon is down\n")
	os.WriteFile(tiny, tinyData, 0o644)
	cfg := Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "hdd", Kind: "directory", Path: cold}}}
	d, stop := testDaemon(t, cfg)
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "1m", "--json", "--data", data, hot)
	if sum.Released != 4 {
		t.Fatalf("archive: %+v", sum)
	}
	gf, err := d.cat.FileByPath(gone)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(gone)
	os.Mkdir(filepath.Join(hot, "elsewhere"), 0o755)
	if err := os.Rename(moved, filepath.Join(hot, "elsewhere", "moved.bin")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := d.stages.scanner.ScanOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, func() error {
		f, err := d.cat.File(gf.ID)
		if err != nil {
			return err
		}
		if f.State != catalog.StateDeleted {
			return fmt.Errorf("state %s", f.State)
		}
		return nil
	})
	// The renamed stub is recorded at its new path (file.moved).
	var mf catalog.File
	waitFor(t, 30*time.Second, func() error {
		if _, err := d.cat.FileByPath(moved); !errors.Is(err, catalog.ErrNotFound) {
			return fmt.Errorf("renamed stub still recorded at its old path: %v", err)
		}
		return nil
	})
	mf, err = d.cat.FileByPath(filepath.Join(hot, "elsewhere", "moved.bin"))
	if err != nil || mf.State != catalog.StateReleased {
		t.Fatalf("renamed stub: %+v %v", mf, err)
	}
	if countObjects(t, cold) != 4 {
		t.Fatalf("objects of a deleted file must stay for retention")
	}
	// ls knows a file by its id, not its path: the renamed stub is still
	// released, and a new file at its old path is resident.
	os.WriteFile(moved, []byte("a new file at an archived file's old path\n"), 0o644)
	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", "--json", "--data", data, filepath.Join(hot, "elsewhere", "moved.bin"), moved)
	if len(ls.Files) != 2 || ls.Files[0].State != "released" || ls.Files[0].FileID != mf.ID || ls.Files[1].State != "resident" {
		t.Fatalf("ls of a renamed stub and of a new file at its old path: %+v", ls.Files)
	}
	got, err := exec.Command("cat", filepath.Join(hot, "elsewhere", "moved.bin")).Output()
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte("moved "), 50000)) {
		t.Fatalf("renamed stub reads wrong: %v", err)
	}

	// A stub renamed while the daemon is down is found and guarded at
	// start, before the daemon answers.
	stop()
	renamed := filepath.Join(hot, "elsewhere", "down-renamed.bin")
	if err := os.Rename(downMoved, renamed); err != nil {
		t.Fatal(err)
	}
	tinyRenamed := filepath.Join(hot, "elsewhere", "tiny-renamed.bin")
	if err := os.Rename(tiny, tinyRenamed); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(tinyRenamed, &st); err != nil || st.Blocks == 0 {
		t.Logf("tiny stub owns no block (%v): this run does not cover a stub with more blocks than bytes", err)
	}
	testDaemon(t, cfg)
	got, err = exec.Command("cat", renamed).Output()
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte("renamed while down "), 50000)) {
		t.Fatalf("stub renamed while the daemon was down reads wrong (zeros?): %v", err)
	}
	got, err = exec.Command("cat", tinyRenamed).Output()
	if err != nil || !bytes.Equal(got, tinyData) {
		t.Fatalf("tiny stub renamed while the daemon was down reads %q, %v; want %q", got, err, tinyData)
	}
}

// TestTapeTierFromConfig: a daemon whose only cold tier is an emulated tape
// library, configured like a user would: files are released once their
// bundle is on tape behind a flushing filemark, and stubs read back from
// tape with every byte right.
func TestTapeTierFromConfig(t *testing.T) {
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	data, lib := t.TempDir(), t.TempDir()
	for _, v := range []string{"T00001", "T00002"} {
		if out, errs, code := cli(t, "tape", "label", "emulator:"+lib, "--volume", v, "--pool", "main", "--capacity", "1GB"); code != 0 {
			t.Fatalf("tape label: %s %s", out, errs)
		}
	}
	files := testFiles(t, hot, 3)
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "lto", Kind: "tape", Device: "emulator:" + lib, Pool: "main", BundleAge: duration(time.Second)}}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive to tape: %+v", sum)
	}
	for p, want := range files {
		f, err := d.cat.FileByPath(p)
		if err != nil {
			t.Fatal(err)
		}
		cps, err := d.cat.Copies(f.ObjectID)
		if err != nil || len(cps) != 1 || cps[0].Tape == nil || cps[0].Tape.Volume == "" {
			t.Fatalf("%s: copies %+v %v", p, cps, err)
		}
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat %s from tape: %v", p, err)
		}
	}
}
