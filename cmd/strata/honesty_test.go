package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// seen is an event as an external subscriber received it.
type seen struct {
	at  time.Time
	env events.Envelope
	ev  events.Event
}

// subscriber is a NATS client with the daemon's read-only credential,
// subscribed to subjects, as any program that follows Strata is.
type subscriber struct {
	mu  sync.Mutex
	got []seen
}

func subscribe(t *testing.T, data string, subjects ...string) *subscriber {
	t.Helper()
	creds, err := pipeline.LoadCredentials(data)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(creds.URL, nats.UserInfo(creds.Reader.Name, creds.Reader.Password),
		nats.CustomInboxPrefix(pipeline.ReaderInboxPrefix))
	if err != nil {
		t.Fatalf("connect as the reader: %v", err)
	}
	t.Cleanup(nc.Close)
	s := &subscriber{}
	for _, subj := range subjects {
		_, err := nc.Subscribe(subj, func(m *nats.Msg) {
			env, ev, err := events.Decode(m.Data)
			if err != nil {
				t.Errorf("%s: event that does not decode: %v", m.Subject, err)
				return
			}
			s.mu.Lock()
			s.got = append(s.got, seen{time.Now(), env, ev})
			s.mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// first waits up to limit for the first event of kind about fileID.
func (s *subscriber) first(t *testing.T, k events.Kind, fileID string, limit time.Duration) seen {
	t.Helper()
	var out seen
	waitFor(t, limit, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, e := range s.got {
			if e.ev.Kind() == k && e.ev.Entity() == fileID {
				out = e
				return nil
			}
		}
		return fmt.Errorf("no %s for %s", k.Type(), fileID)
	})
	return out
}

func (s *subscriber) count(k events.Kind, fileID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.got {
		if e.ev.Kind() == k && e.ev.Entity() == fileID {
			n++
		}
	}
	return n
}

// archiveAll archives paths through the daemon and checks that each one is
// a stub; it returns their file ids.
func archiveAll(t *testing.T, data string, paths ...string) map[string]string {
	t.Helper()
	var sum archiveSummary
	cliJSON(t, &sum, append([]string{"archive", "--wait", "--timeout", "2m", "--json", "--data", data}, paths...)...)
	if sum.Released != len(paths) {
		t.Fatalf("archive: %d of %d released: %+v", sum.Released, len(paths), sum)
	}
	ids := map[string]string{}
	for _, p := range paths {
		info, err := stub.ReadPath(p)
		if err != nil || info.State != stub.Released {
			t.Fatalf("%s after archive: %+v, %v: want a stub", p, info, err)
		}
		ids[p] = info.FileID
	}
	return ids
}

// TestMetadataHonesty, through the daemon on ext4 and XFS, as a program
// following the log with the read-only credential sees it:
//   - a write into an archived file is published as file.modified by the
//     modification watcher within a second of the write, with no scan, and
//     the catalog marks the file dirty: `echo >>` into a recalled file,
//     `dd conv=notrunc` into a stub, a write by dd into another recalled
//     file;
//   - recall.completed names the program whose read recalled the stub
//     (pid, comm and executable) and a duration no longer than the time
//     from that program's start to the event.
func TestMetadataHonesty(t *testing.T) {
	stratatest.NeedRoot(t)
	catPath, err := exec.LookPath("cat")
	if err != nil {
		stratatest.Skip(t, "needs cat")
	}
	if catPath, err = filepath.EvalSymlinks(catPath); err != nil {
		t.Fatal(err)
	}
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fs, 320<<20)
			hot, data := filepath.Join(mnt, "hot"), t.TempDir()
			if err := os.MkdirAll(hot, 0o755); err != nil {
				t.Fatal(err)
			}
			random, _ := contentGen(21, 1)
			files := map[string][]byte{}
			var paths []string
			for _, name := range []string{"recalled.bin", "stub.bin", "dd.bin"} {
				p := filepath.Join(hot, name)
				files[p] = random(2<<20 + 123)
				if err := os.WriteFile(p, files[p], 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
				Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: t.TempDir()}}})
			sub := subscribe(t, data, events.Subject(events.AnyHost, events.KindFileModified),
				events.Subject(events.AnyHost, events.KindRecallCompleted))
			ids := archiveAll(t, data, paths...)

			// Recall two of them with cat: recall.completed names cat.
			for _, p := range []string{paths[0], paths[2]} {
				t0 := time.Now()
				cmd := exec.Command("cat", p)
				var out bytes.Buffer
				cmd.Stdout = &out
				if err := cmd.Run(); err != nil || !bytes.Equal(out.Bytes(), files[p]) {
					t.Fatalf("cat %s: %d bytes, %v", p, out.Len(), err)
				}
				got := sub.first(t, events.KindRecallCompleted, ids[p], 30*time.Second)
				rc := got.ev.(*events.RecallCompleted)
				if rc.PID != int32(cmd.Process.Pid) || rc.Process != "cat" || rc.Exe != catPath {
					t.Errorf("recall.completed of %s names pid %d %q %q, want cat's: pid %d \"cat\" %q", p, rc.PID, rc.Process, rc.Exe,
						cmd.Process.Pid, catPath)
				}
				if max := got.at.Sub(t0); rc.DurationNS <= 0 || time.Duration(rc.DurationNS) > max {
					t.Errorf("recall.completed of %s: duration %v, want more than 0 and at most %v (cat's start to the event)",
						p, time.Duration(rc.DurationNS), max)
				}
				if rc.Bytes != int64(len(files[p])) {
					t.Errorf("recall.completed of %s: %d bytes, want %d", p, rc.Bytes, len(files[p]))
				}
				waitFor(t, 30*time.Second, func() error {
					f, err := d.cat.File(ids[p])
					if err == nil && f.State != catalog.StateArchived {
						err = fmt.Errorf("%s: state %s, want archived", p, f.State)
					}
					return err
				})
			}

			writes := []struct {
				path, line string
			}{
				{paths[0], `echo appended >> "$F"`},
				{paths[1], `printf 'XXXX' | dd of="$F" bs=1 seek=1000 conv=notrunc status=none`},
				{paths[2], `printf 'YYYY' | dd of="$F" bs=1 seek=5 conv=notrunc status=none`},
			}
			for _, w := range writes {
				fid := ids[w.path]
				// The watcher marks a file once its event is in the log;
				// the write must come after that to be seen at once.
				if err := d.cat.WaitSeq(context.Background(), d.cat.LastSeq()); err != nil {
					t.Fatal(err)
				}
				waitWatched(t, d, w.path)
				t0 := time.Now()
				if out, err := exec.Command("sh", "-c", "F="+w.path+"; "+w.line).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", w.line, err, out)
				}
				got := sub.first(t, events.KindFileModified, fid, 10*time.Second)
				delay := got.at.Sub(t0)
				t.Logf("%s: file.modified %v after the write started", filepath.Base(w.path), delay)
				if delay > time.Second {
					t.Errorf("%s: file.modified %v after the write, want within 1s", w.path, delay)
				}
				if src := events.Source(d.cfg.Host, "modwatch"); got.env.Source != src {
					t.Errorf("%s: file.modified from %s, want %s (at the write, not at a scan)", w.path, got.env.Source, src)
				}
				fm := got.ev.(*events.FileModified)
				if fm.Path != w.path || fm.ObjectID == "" {
					t.Errorf("file.modified %+v: want path %s and its object", fm, w.path)
				}
				waitFor(t, 10*time.Second, func() error {
					f, err := d.cat.File(fid)
					if err == nil && f.State != catalog.StateDirty {
						err = fmt.Errorf("%s: catalog state %s, want dirty", w.path, f.State)
					}
					return err
				})
				var ls scanner.LsReply
				cliJSON(t, &ls, "ls", "--json", "--data", data, w.path)
				if len(ls.Files) != 1 || ls.Files[0].State != catalog.StateDirty.String() {
					t.Errorf("strata ls %s: %+v, want it dirty", w.path, ls.Files)
				}
			}
			// strata status counts them.
			var st statusReply
			cliJSON(t, &st, "status", "--json", "--data", data)
			if st.WriteWatcher == nil || st.WriteWatcher.Reported < uint64(len(writes)) {
				t.Errorf("strata status: write watcher %+v, want %d writes reported", st.WriteWatcher, len(writes))
			}
			// The stub written into is recalled in full around the write.
			want := append([]byte(nil), files[paths[1]]...)
			copy(want[1000:], "XXXX")
			waitFor(t, 30*time.Second, func() error {
				got, err := exec.Command("cat", paths[1]).Output()
				if err != nil || !bytes.Equal(got, want) {
					return fmt.Errorf("cat of the written stub: %d bytes, %v, not the content with the write", len(got), err)
				}
				return nil
			})
		})
	}
}

// waitWatched waits until the daemon's modification watcher has the file
// at path marked (it follows the log).
func waitWatched(t *testing.T, d *daemon, path string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		if d.stages.modwatch == nil {
			return fmt.Errorf("no modification watcher")
		}
		if !d.stages.modwatch.Watching(path) {
			return fmt.Errorf("%s is not watched", path)
		}
		return nil
	})
}

// TestGitTrustCtime: archiving changes a file's ctime (its xattrs are
// set, its blocks punched), and git, by default, re-reads every file
// whose ctime moved: `git status` in an archived work tree recalls every
// file. With core.trustctime = false it compares mtime, size and inode
// only, which archiving keeps: `git status` recalls nothing, and every
// file stays a stub (docs: README, "git work trees"). Asserted on the
// recall events, through the daemon.
func TestGitTrustCtime(t *testing.T) {
	stratatest.NeedRoot(t)
	git := stratatest.NeedTool(t, "git")
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	hot, data := filepath.Join(mnt, "hot"), t.TempDir()
	repo := filepath.Join(hot, "repo")
	if err := os.MkdirAll(filepath.Join(repo, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	gitRun := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(git, append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	gitRun("init", "-q")
	random, text := contentGen(31, 1)
	var paths []string
	old := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC) // not racily clean: older than the index
	for i := range 4 {
		for _, dir := range []string{repo, filepath.Join(repo, "src")} {
			p := filepath.Join(dir, fmt.Sprintf("f%d.dat", i))
			b := random(256<<10 + i)
			if i%2 == 1 {
				b = text(256<<10 + i)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
	}
	sentinel := filepath.Join(hot, "sentinel.bin")
	if err := os.WriteFile(sentinel, random(300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	gitRun("add", ".")
	gitRun("commit", "-q", "-m", "files")
	if out := gitRun("status", "--porcelain"); out != "" {
		t.Fatalf("git status before archiving: %q", out)
	}
	// git compares ctime to the second (unless built with USE_NSEC, which
	// Debian's is not): an archive within the second of `git add` would
	// look unchanged to it. Archive in a later second.
	var newest int64
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		newest = max(newest, st.Ctim.Sec)
	}
	for time.Now().Add(-50*time.Millisecond).Unix() <= newest {
		time.Sleep(10 * time.Millisecond)
	}

	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: t.TempDir()}}})
	sub := subscribe(t, data, events.Subject(events.AnyHost, events.KindRecallRequested))
	ids := archiveAll(t, data, append(append([]string(nil), paths...), sentinel)...)
	_ = d

	// trustctime = false: nothing is read. Then a read of the sentinel:
	// its recall.requested comes after any that git's status raised.
	if out := gitRun("-c", "core.trustctime=false", "status", "--porcelain"); out != "" {
		t.Fatalf("git status (trustctime=false) in the archived tree: %q", out)
	}
	if err := exec.Command("cat", sentinel).Run(); err != nil {
		t.Fatal(err)
	}
	sub.first(t, events.KindRecallRequested, ids[sentinel], 30*time.Second)
	for _, p := range paths {
		if n := sub.count(events.KindRecallRequested, ids[p]); n != 0 {
			t.Errorf("git status with core.trustctime=false recalled %s (%d recall.requested)", p, n)
		}
		if info, err := stub.ReadPath(p); err != nil || info.State != stub.Released {
			t.Errorf("%s after git status with core.trustctime=false: %+v, %v: want still a stub", p, info, err)
		}
	}

	// The default: git re-reads every file whose ctime changed.
	if out := gitRun("status", "--porcelain"); out != "" {
		t.Fatalf("git status in the archived tree: %q", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range paths {
		for sub.count(events.KindRecallRequested, ids[p]) == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if sub.count(events.KindRecallRequested, ids[p]) == 0 {
			info, err := stub.ReadPath(p)
			t.Errorf("git status (default) raised no recall.requested for %s (now %+v, %v)", p, info, err)
			continue
		}
		got := sub.first(t, events.KindRecallRequested, ids[p], time.Second)
		if rr := got.ev.(*events.RecallRequested); rr.Process != "git" || !strings.HasSuffix(rr.Exe, "/git") || rr.PID <= 0 {
			t.Errorf("recall.requested of %s by pid %d %q %q, want git", p, rr.PID, rr.Process, rr.Exe)
		}
	}
}

// TestRcloneCopiesLargeStub: rclone stats its source before and after it
// reads and gives up when the mtime moved ("source file is being
// updated"); a recall is not a modification, so `rclone copyto` of a
// stub larger than rclone's multi-thread cutoff (256 MiB) succeeds through
// the daemon with its default configuration, on ext4 and XFS: the copy
// has every byte, the stub's mtime is the original's, recall.completed
// names rclone and no file.modified is published for the file.
func TestRcloneCopiesLargeStub(t *testing.T) {
	stratatest.NeedRoot(t)
	rclone := stratatest.NeedTool(t, "rclone")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fs, 700<<20)
			hot, data := filepath.Join(mnt, "hot"), t.TempDir()
			if err := os.MkdirAll(hot, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(hot, "large.bin")
			random, _ := contentGen(41, 1)
			content := random(272<<20 + 4321)
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
			mtime := time.Date(2021, 7, 8, 9, 10, 11, 121314151, time.UTC)
			if err := os.Chtimes(path, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			sum := blake3Hex(content)
			content = nil
			d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
				Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: t.TempDir()}}})
			sub := subscribe(t, data, events.Subject(events.AnyHost, events.KindFileModified),
				events.Subject(events.AnyHost, events.KindRecallCompleted))
			fid := archiveAll(t, data, path)[path]
			waitWatched(t, d, path)

			dst := filepath.Join(t.TempDir(), "copy.bin")
			cmd := exec.Command(rclone, "copyto", path, dst)
			cmd.Env = append(os.Environ(), "RCLONE_CONFIG=/dev/null")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("rclone copyto of a %d MiB stub: %v\n%s", 272, err, out)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if blake3Hex(got) != sum || len(got) != 272<<20+4321 {
				t.Fatalf("rclone's copy of the stub (%d bytes) is not the original", len(got))
			}
			got = nil
			rc := sub.first(t, events.KindRecallCompleted, fid, time.Minute).ev.(*events.RecallCompleted)
			if rc.Process != "rclone" {
				t.Errorf("recall.completed names %q, want rclone", rc.Process)
			}
			var st os.FileInfo
			if st, err = os.Stat(path); err != nil || !st.ModTime().Equal(mtime) {
				t.Errorf("mtime after the recall: %v (%v), want %v", st.ModTime(), err, mtime)
			}
			// A modification published after the recall would be in the
			// log by now (the watcher reports within milliseconds); the
			// catalog says archived, not dirty.
			waitFor(t, 30*time.Second, func() error {
				f, err := d.cat.File(fid)
				if err == nil && f.State != catalog.StateArchived {
					err = fmt.Errorf("catalog state %s, want archived", f.State)
				}
				return err
			})
			if n := sub.count(events.KindFileModified, fid); n != 0 {
				t.Errorf("%d file.modified for a stub that was only read", n)
			}
		})
	}
}
