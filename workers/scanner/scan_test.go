//go:build linux

package scanner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

var (
	testNow = time.Now()
	longAgo = testNow.Add(-400 * 24 * time.Hour)
)

const objA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// mkfile creates path (and its parents) with size bytes and the given
// atime and mtime.
func mkfile(t testing.TB, path string, size int, atime, mtime time.Time) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, atime, mtime); err != nil {
		t.Fatal(err)
	}
}

func setInfo(t *testing.T, path string, in stub.Info) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := stub.Write(fd, in); err != nil {
		t.Fatal(err)
	}
}

func collect(t *testing.T, p Policy) ([]Candidate, Summary) {
	t.Helper()
	var mu sync.Mutex
	var cs []Candidate
	sum, err := Scan(context.Background(), p, testNow, func(c Candidate) error {
		mu.Lock()
		cs = append(cs, c)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Path < cs[j].Path })
	return cs, sum
}

func rels(root string, cs []Candidate) []string {
	var out []string
	for _, c := range cs {
		r, _ := filepath.Rel(root, c.Path)
		out = append(out, r)
	}
	return out
}

func TestScan(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) { testScan(t, fs) })
	}
}

func testScan(t *testing.T, fstype string) {
	mnt := stratatest.LoopMount(t, fstype, 300<<20)
	root := filepath.Join(mnt, "hot")
	outside := filepath.Join(mnt, "outside")
	const big = 64 << 10
	mkfile(t, filepath.Join(root, "old.bin"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "young.bin"), big, testNow, testNow)
	mkfile(t, filepath.Join(root, "read-recently.bin"), big, testNow, longAgo)
	mkfile(t, filepath.Join(root, "small.bin"), 100, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "sparse.bin"), 0, longAgo, longAgo)
	if err := os.Truncate(filepath.Join(root, "sparse.bin"), 1<<20); err != nil {
		t.Fatal(err)
	}
	mkfile(t, filepath.Join(root, "logs", "a.log"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "logs", "keep.bin"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "cache", "x", "y.bin"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "a", "b", "c", "deep.bin"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "pinned", "p.bin"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, "pinfunc.bin"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(root, ".strata", "objects", "o.zst"), big, longAgo, longAgo)
	mkfile(t, filepath.Join(outside, "o.bin"), big, longAgo, longAgo)
	if err := os.Symlink(outside, filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "o.bin"), filepath.Join(root, "filelink")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	// Two names of one inode: one candidate.
	mkfile(t, filepath.Join(root, "hl1.bin"), big, longAgo, longAgo)
	if err := os.Link(filepath.Join(root, "hl1.bin"), filepath.Join(root, "hl2.bin")); err != nil {
		t.Fatal(err)
	}
	// Managed files: a stub (skipped), archived-clean, dirty.
	mkfile(t, filepath.Join(root, "stub.bin"), big, longAgo, longAgo)
	setInfo(t, filepath.Join(root, "stub.bin"), stub.Info{FileID: strings.Repeat("1", 32), ObjectID: objA, State: stub.Released, Size: big, MtimeNS: longAgo.UnixNano()})
	mkfile(t, filepath.Join(root, "clean.bin"), big, longAgo, longAgo)
	setInfo(t, filepath.Join(root, "clean.bin"), stub.Info{FileID: strings.Repeat("2", 32), ObjectID: objA, State: stub.Archived, Size: big, MtimeNS: longAgo.UnixNano()})
	mkfile(t, filepath.Join(root, "dirty.bin"), big, longAgo, longAgo)
	setInfo(t, filepath.Join(root, "dirty.bin"), stub.Info{FileID: strings.Repeat("3", 32), ObjectID: objA, State: stub.Archived, Size: big, MtimeNS: longAgo.Add(-time.Hour).UnixNano()})
	// Another filesystem mounted inside the root.
	other := stratatest.LoopMount(t, "ext4", 16<<20)
	mkfile(t, filepath.Join(other, "elsewhere.bin"), big, longAgo, longAgo)
	nested := filepath.Join(root, "nested")
	if err := os.Mkdir(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", other, nested).CombinedOutput(); err != nil {
		t.Fatalf("bind mount: %v: %s", err, out)
	}
	t.Cleanup(func() { stratatest.Unmount(t, nested) })

	p := NewPolicy(root)
	p.MinSize = 4096
	p.DataDir = filepath.Join(root, ".strata")
	p.Exclude = []string{"*.log", "cache/**"}
	p.PinnedPaths = []string{filepath.Join(root, "pinned")}
	p.Pinned = func(path string) bool { return strings.HasSuffix(path, "/pinfunc.bin") }
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	cs, sum := collect(t, p)
	want := []string{"a/b/c/deep.bin", "clean.bin", "dirty.bin", "hl1.bin", "logs/keep.bin", "old.bin"}
	got := rels(root, cs)
	// hl1 or hl2, whichever the walk met first.
	for i, g := range got {
		if g == "hl2.bin" {
			got[i] = "hl1.bin"
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Fatalf("selected %v, want %v\nsummary %+v", got, want, sum)
	}
	for _, c := range cs {
		rel, _ := filepath.Rel(root, c.Path)
		var st unix.Stat_t
		if err := unix.Lstat(c.Path, &st); err != nil {
			t.Fatal(err)
		}
		gen := generationOf(t, c.Path)
		wantStat := events.FileStat{Size: st.Size, Mode: st.Mode, UID: st.Uid, GID: st.Gid,
			AtimeNS: st.Atim.Nano(), MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano(), Dev: st.Dev, Inode: st.Ino, Generation: gen}
		if c.Stat != wantStat || c.Root != root || c.Reason != events.ReasonPolicy || c.Freed != st.Blocks*512 {
			t.Errorf("%s: candidate %+v, want stat %+v", rel, c, wantStat)
		}
		wantState, wantID := StateNew, ""
		switch rel {
		case "clean.bin":
			wantState, wantID = StateArchivedClean, strings.Repeat("2", 32)
		case "dirty.bin":
			wantState, wantID = StateDirty, strings.Repeat("3", 32)
		}
		if c.State != wantState || wantID != "" && c.FileID != wantID {
			t.Errorf("%s: state %s id %s, want %s %s", rel, c.State, c.FileID, wantState, wantID)
		}
		if wantID == "" && (len(c.FileID) != 32 || c.ObjectID != "") {
			t.Errorf("%s: derived file id %q, object %q", rel, c.FileID, c.ObjectID)
		}
	}
	if sum.Symlinks != 2 || sum.Special != 2 || sum.OtherFS != 1 || sum.Released != 1 || sum.Pinned != 2 ||
		sum.Excluded != 2 || sum.Errors != 0 || sum.Selected != int64(len(want)) {
		t.Errorf("summary %+v", sum)
	}
	// The derived ids are stable across scans.
	cs2, _ := collect(t, p)
	for i := range cs {
		if cs[i].FileID != cs2[i].FileID {
			t.Errorf("%s: file id %s then %s", cs[i].Path, cs[i].FileID, cs2[i].FileID)
		}
	}

	t.Run("age any", func(t *testing.T) {
		q := p
		q.AgeMatch = AgeAny
		cs, _ := collect(t, q)
		if !slices.Contains(rels(root, cs), "read-recently.bin") || slices.Contains(rels(root, cs), "young.bin") {
			t.Fatalf("age any: %v", rels(root, cs))
		}
	})
	t.Run("include", func(t *testing.T) {
		q := p
		q.Include = []string{"a/**/*.bin", "old.*"}
		cs, _ := collect(t, q)
		if got := rels(root, cs); !slices.Equal(got, []string{"a/b/c/deep.bin", "old.bin"}) {
			t.Fatalf("include: %v", got)
		}
	})
	t.Run("cross filesystems", func(t *testing.T) {
		q := p
		q.CrossFilesystems = true
		cs, sum := collect(t, q)
		if !slices.Contains(rels(root, cs), "nested/elsewhere.bin") || sum.OtherFS != 0 {
			t.Fatalf("cross: %v %+v", rels(root, cs), sum)
		}
	})
	t.Run("preview", func(t *testing.T) {
		r, err := Preview(context.Background(), p, testNow, 2)
		if err != nil {
			t.Fatal(err)
		}
		if r.Files != int64(len(want)) || !r.Truncated || len(r.Candidates) != 2 || rels(root, r.Candidates)[0] != "a/b/c/deep.bin" {
			t.Fatalf("preview %+v", r)
		}
		var freed int64
		for _, c := range cs {
			freed += c.Freed
		}
		if r.Freed != freed || freed < int64(len(want))*big {
			t.Fatalf("preview frees %d, want %d", r.Freed, freed)
		}
	})
	t.Run("fn error stops the scan", func(t *testing.T) {
		boom := errors.New("boom")
		n := 0
		_, err := Scan(context.Background(), p, testNow, func(Candidate) error { n++; return boom })
		if !errors.Is(err, boom) || n != 1 {
			t.Fatalf("err %v after %d calls", err, n)
		}
	})
	t.Run("missing root", func(t *testing.T) {
		q := p
		q.Roots = []string{filepath.Join(mnt, "nope")}
		if _, err := Scan(context.Background(), q, testNow, func(Candidate) error { return nil }); err == nil {
			t.Fatal("scan of a missing root succeeded")
		}
	})
}

func generationOf(t *testing.T, path string) uint64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	g, err := unix.IoctlGetUint32(fd, fsIOCGetVersion)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(g)
}

// TestScanWatermark fills a small filesystem above the high watermark with
// files too young for the age policy: the oldest are selected, oldest
// first, until the projected usage is below the low watermark.
func TestScanWatermark(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fs, 300<<20)
			root := filepath.Join(mnt, "hot")
			const n, size = 16, 12 << 20
			type file struct {
				path  string
				key   int64
				freed int64
			}
			var files []file
			for i := range n {
				// Ages in a shuffled order so that path order is not age order.
				age := time.Duration((i*7)%n+1) * time.Hour
				path := filepath.Join(root, fmt.Sprintf("d%d", i%3), fmt.Sprintf("f%02d", i))
				mkfile(t, path, size, testNow.Add(-age), testNow.Add(-age-time.Minute))
				files = append(files, file{path: path, key: testNow.Add(-age).UnixNano()})
			}
			// One old file that the age policy selects anyway.
			mkfile(t, filepath.Join(root, "ancient"), size, longAgo, longAgo)
			unix.Sync()
			var sfs unix.Statfs_t
			if err := unix.Statfs(root, &sfs); err != nil {
				t.Fatal(err)
			}
			used := (int64(sfs.Blocks) - int64(sfs.Bfree)) * int64(sfs.Bsize)
			total := used + int64(sfs.Bavail)*int64(sfs.Bsize)
			pct := 100 * float64(used) / float64(total)
			p := NewPolicy(root)
			p.MinMtimeAge, p.MinAtimeAge = 30*24*time.Hour, 30*24*time.Hour
			p.HighWatermark = pct - 2
			p.LowWatermark = pct - 25
			for i := range files {
				var st unix.Stat_t
				if err := unix.Stat(files[i].path, &st); err != nil {
					t.Fatal(err)
				}
				files[i].freed = st.Blocks * 512
			}
			var ancient unix.Stat_t
			unix.Stat(filepath.Join(root, "ancient"), &ancient)
			// Expected: oldest first until used - freed <= low.
			sort.Slice(files, func(i, j int) bool { return files[i].key < files[j].key })
			need := used - int64(p.LowWatermark/100*float64(total)) - ancient.Blocks*512
			var want []string
			for _, f := range files {
				if need <= 0 {
					break
				}
				want = append(want, f.path)
				need -= f.freed
			}
			if len(want) < 2 || len(want) >= n {
				t.Fatalf("setup: %d of %d files expected (usage %.1f%%)", len(want), n, pct)
			}
			var got []string
			var reasons []string
			sum, err := Scan(context.Background(), p, testNow, func(c Candidate) error {
				got = append(got, c.Path)
				reasons = append(reasons, c.Reason)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			wantAll := append([]string{filepath.Join(root, "ancient")}, want...)
			if !slices.Equal(got, wantAll) {
				t.Fatalf("selected\n %v\nwant\n %v\nsummary %+v", got, wantAll, sum)
			}
			if reasons[0] != events.ReasonPolicy || reasons[1] != events.ReasonWatermark {
				t.Fatalf("reasons %v", reasons)
			}
			if fsu := sum.Filesystems[0]; !fsu.AboveHigh || fsu.Need <= 0 {
				t.Fatalf("usage %+v", fsu)
			}
			// Below the high watermark nothing but the policy is selected.
			p.HighWatermark, p.LowWatermark = 99.5, 99
			cs, _ := collect(t, p)
			if len(cs) != 1 {
				t.Fatalf("below high watermark: %v", rels(root, cs))
			}
		})
	}
}

// TestScanTree walks a tree of a few thousand files in nested directories
// and checks that each is seen exactly once.
func TestScanTree(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 128<<20)
	root := filepath.Join(mnt, "hot")
	const dirs, per = 60, 50
	want := map[string]bool{}
	for d := range dirs {
		dir := filepath.Join(root, fmt.Sprintf("l%d", d%4), fmt.Sprintf("m%d", d%7), fmt.Sprintf("d%d", d))
		for f := range per {
			path := filepath.Join(dir, fmt.Sprintf("f%d", f))
			mkfile(t, path, 10, longAgo, longAgo)
			want[path] = true
		}
	}
	p := NewPolicy(root)
	p.MinSize = 1
	p.Workers = 8
	cs, sum := collect(t, p)
	if len(cs) != len(want) || sum.Files != int64(len(want)) {
		t.Fatalf("%d candidates, %d files, want %d", len(cs), sum.Files, len(want))
	}
	for i, c := range cs {
		if !want[c.Path] || i > 0 && cs[i-1].Path == c.Path {
			t.Fatalf("unexpected or duplicate %s", c.Path)
		}
	}
}
