package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// logBuffer collects a daemon's log lines; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits until the log holds a line containing every one of parts.
func (l *logBuffer) waitLog(t *testing.T, d time.Duration, parts ...string) string {
	t.Helper()
	var found string
	waitFor(t, d, func() error {
		for _, line := range strings.Split(l.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				found = line
				return nil
			}
		}
		return fmt.Errorf("no log line with %q yet", parts)
	})
	return found
}

// loggedDaemon is testDaemon with the daemon's log kept (and shown when the
// test fails).
func loggedDaemon(t *testing.T, cfg Config) (*daemon, *logBuffer) {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.Host = "badhost"
	cfg.NATS.Port = pipeline.RandomPort
	cfg.Metrics.Listen = cmp.Or(cfg.Metrics.Listen, "127.0.0.1:0")
	noMountNeeded(&cfg)
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := startDaemon(ctx, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon run: %v", err)
		}
		d.close()
		stopHolderOf(t, cfg.DataDir)
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	waitFor(t, 10*time.Second, func() error {
		return request(context.Background(), cfg.DataDir, "status", struct{}{}, nil, time.Second)
	})
	return d, logs
}

// archiveAsync runs `strata archive --wait --json` in the background.
func archiveAsync(t *testing.T, data string, paths ...string) func() archiveSummary {
	t.Helper()
	type result struct {
		out, errs string
		code      int
	}
	ch := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		args := append([]string{"archive", "--wait", "--timeout", "2m", "--json", "--data", data}, paths...)
		code := exitCode(run(context.Background(), args, &out, &errb), &errb)
		ch <- result{out.String(), errb.String(), code}
	}()
	return func() archiveSummary {
		t.Helper()
		var r result
		select {
		case r = <-ch:
		case <-time.After(150 * time.Second):
			t.Fatal("strata archive --wait did not return")
		}
		var sum archiveSummary
		if r.code != 0 || json.Unmarshal([]byte(r.out), &sum) != nil {
			t.Fatalf("strata archive --wait: exit %d\n%s%s", r.code, r.out, r.errs)
		}
		// Every selected file has an outcome (--wait also returns, with
		// exit 0, when its timeout ends first).
		if len(sum.Files) != sum.Selected {
			t.Fatalf("strata archive --wait returned with %d of %d files decided: %+v", len(sum.Files), sum.Selected, sum)
		}
		return sum
	}
}

func skipReasonOf(sum archiveSummary, path string) string {
	for _, s := range sum.Skipped {
		if s.Path == path {
			return s.Reason
		}
	}
	return ""
}

// assertHot fails unless path is an ordinary file (no Strata xattrs) with
// exactly want as content.
func assertHot(t *testing.T, path string, want []byte) {
	t.Helper()
	if info, err := stub.ReadPath(path); !errors.Is(err, stub.ErrNotManaged) && !errors.Is(err, stub.ErrNoXattr) {
		t.Errorf("%s should carry no Strata xattrs: %+v %v", path, info, err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s: content changed (%d bytes, want %d): %v", path, len(got), len(want), err)
	}
}

func assertNoDeadLetters(t *testing.T, data string) {
	t.Helper()
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	if st.Stream.DeadLetters != 0 {
		t.Errorf("dead letters: %d", st.Stream.DeadLetters)
	}
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// TestBadInputChangedDuringArchive: files deleted, truncated, replaced by
// a rename, or replaced by a directory after the compressor read them and
// before their release. The store stage is held back deterministically by
// an unavailable tier (its objects directory is missing: a disk not
// mounted), which it retries with a log line; the files are changed; the
// tier comes back. Each changed file gets file.release_skipped with the
// reason and stays as the user left it; the unchanged one is released.
func TestBadInputChangedDuringArchive(t *testing.T) {
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	cold := t.TempDir()
	data := t.TempDir()
	c := crashFiles(t, t.TempDir(), 42) // reuse the generator for contents
	var big, text []byte
	for p, b := range c {
		switch filepath.Base(p) {
		case "big.bin":
			big = b
		case "c.txt":
			text = b
		}
	}
	orig := writeFiles(t, hot, map[string][]byte{
		"deleted.bin":   big[:3<<20],
		"truncated.txt": text,
		"replaced.bin":  big[1<<20:],
		"now-a-dir":     text[:100<<10],
		"kept.txt":      text[:700<<10],
	})
	d, logs := loggedDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: cold}}})
	if err := os.Remove(filepath.Join(cold, "objects")); err != nil {
		t.Fatal(err)
	}
	wait := archiveAsync(t, data, hot)

	// Every file read and packed, none stored: the store stage says why it
	// retries.
	waitFor(t, 30*time.Second, func() error {
		for name := range orig {
			f, err := d.cat.FileByPath(filepath.Join(hot, name))
			if err != nil || f.Version == 0 {
				return fmt.Errorf("%s not packed yet: %+v %v", name, f, err)
			}
		}
		return nil
	})
	logs.waitLog(t, 10*time.Second, "will retry", "stage=store-cold", "unavailable")

	p := func(name string) string { return filepath.Join(hot, name) }
	if err := os.Remove(p("deleted.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p("truncated.txt"), 1000); err != nil {
		t.Fatal(err)
	}
	newContent := []byte("a new version, written to a temporary name and renamed over the old one\n")
	if err := os.WriteFile(p(".replaced.tmp"), newContent, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p(".replaced.tmp"), p("replaced.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p("now-a-dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("now-a-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(cold, "objects"), 0o755); err != nil { // the disk is back
		t.Fatal(err)
	}

	sum := wait()
	if sum.Selected != 5 || sum.Released != 1 || len(sum.Skipped) != 4 {
		t.Errorf("archive: %d selected, %d released, skipped %+v; want 5, 1 and 4", sum.Selected, sum.Released, sum.Skipped)
	}
	for name, want := range map[string][]string{
		"deleted.bin":   {"no longer exists"},
		"truncated.txt": {"changed since it was read", "size"},
		"replaced.bin":  {"changed since it was read", "inode"},
		"now-a-dir":     {"not a regular file"},
	} {
		reason := skipReasonOf(sum, p(name))
		for _, w := range want {
			if !strings.Contains(reason, w) {
				t.Errorf("%s: skip reason %q does not say %q", name, reason, w)
			}
		}
		if reason != "" {
			logs.waitLog(t, 5*time.Second, "release skipped", p(name))
		}
	}
	assertHot(t, p("truncated.txt"), orig["truncated.txt"][:1000])
	assertHot(t, p("replaced.bin"), newContent)
	if fi, err := os.Stat(p("now-a-dir")); err != nil || !fi.IsDir() {
		t.Errorf("now-a-dir: %v %v", fi, err)
	}
	if _, err := os.Lstat(p("deleted.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("deleted.bin came back: %v", err)
	}
	// The released one reads back whole.
	got, err := exec.Command("cat", p("kept.txt")).Output()
	if err != nil || !bytes.Equal(got, orig["kept.txt"]) {
		t.Errorf("cat kept.txt: %v", err)
	}
	// The catalog agrees: skipped files are resident again.
	waitFor(t, 10*time.Second, func() error {
		for _, name := range []string{"truncated.txt", "replaced.bin"} {
			f, err := d.cat.FileByPath(p(name))
			if err != nil || f.State != catalog.StateResident {
				return fmt.Errorf("%s: %+v %v", name, f, err)
			}
		}
		return nil
	})
	assertNoDeadLetters(t, data)
	checkTierClean(t, cold)
}

// TestBadInputTmpfs: a hot tree on tmpfs (xattrs, but no pre-content
// fanotify: a stub there could never be recalled) is never released; the
// reason names the filesystem and the file is untouched.
func TestBadInputTmpfs(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", hot).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { stratatest.Unmount(t, hot) })
	data, cold := t.TempDir(), t.TempDir()
	orig := writeFiles(t, hot, map[string][]byte{"on-tmpfs.txt": bytes.Repeat([]byte("tmpfs cannot hold a stub\n"), 20000)})
	_, logs := loggedDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: cold}}})
	sum := archiveAsync(t, data, hot)()
	path := filepath.Join(hot, "on-tmpfs.txt")
	reason := skipReasonOf(sum, path)
	if sum.Released != 0 || !strings.Contains(reason, "filesystem") {
		t.Fatalf("archive on tmpfs: %+v; want the file skipped with a reason naming the filesystem", sum)
	}
	t.Logf("skip reason on tmpfs: %s", reason)
	logs.waitLog(t, 5*time.Second, "release skipped", path)
	assertHot(t, path, orig["on-tmpfs.txt"])
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Blocks == 0 {
		t.Errorf("blocks of the tmpfs file were freed: %+v %v", st, err)
	}
	assertNoDeadLetters(t, data)
}

// TestBadInputFullTier: the cold tier is a small filesystem with too little
// room. The store stage fails with ENOSPC and holds the copy until there
// is room (the tier is a condition, no delivery is spent);
// nothing is released and no partial object is left; once space is freed
// the same archive completes.
func TestBadInputFullTier(t *testing.T) {
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	cold := stratatest.LoopMount(t, "ext4", 24<<20)
	data := t.TempDir()
	c := crashFiles(t, t.TempDir(), 43)
	var rnd []byte
	for p, b := range c {
		if filepath.Base(p) == "big.bin" {
			rnd = b
		}
	}
	orig := writeFiles(t, hot, map[string][]byte{"one.bin": rnd[:3<<20], "two.bin": rnd[3<<20 : 6<<20]})
	// Fill the tier, leaving about 1 MiB: neither 3 MiB object fits.
	var sfs unix.Statfs_t
	if err := unix.Statfs(cold, &sfs); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(cold, "filler")
	free := int64(sfs.Bavail) * sfs.Bsize
	if out, err := exec.Command("fallocate", "-l", fmt.Sprint(free-(1<<20)), filler).CombinedOutput(); err != nil {
		t.Fatalf("fallocate: %v %s", err, out)
	}
	d, logs := loggedDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: cold}}})
	wait := archiveAsync(t, data, hot)
	line := logs.waitLog(t, 30*time.Second, "message held until there is room", "stage=store-cold", "no space left on device")
	t.Logf("store stage on a full tier: %s", line)
	// Both objects' puts run at once: wait until each has failed (a put
	// still in flight has a temporary file, invisible but on disk).
	waitFor(t, 30*time.Second, func() error {
		failed := map[string]bool{}
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "stage=store-cold") && strings.Contains(l, "no space left on device") {
				if i := strings.Index(l, "err=\"store "); i >= 0 && len(l) > i+11+64 {
					failed[l[i+11:i+11+64]] = true
				}
			}
		}
		if len(failed) < 2 {
			return fmt.Errorf("%d of 2 puts failed so far", len(failed))
		}
		return nil
	})
	for name, want := range orig {
		assertHot(t, filepath.Join(hot, name), want)
		f, err := d.cat.FileByPath(filepath.Join(hot, name))
		if err == nil && f.State == catalog.StateReleased {
			t.Errorf("%s released while the tier is full", name)
		}
	}
	if n := countObjects(t, cold); n != 0 {
		t.Errorf("a full tier holds %d objects", n)
	}
	waitTierClean(t, cold)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	sum := wait()
	if sum.Released != 2 {
		t.Fatalf("after freeing space: %+v", sum)
	}
	for name, want := range orig {
		got, err := exec.Command("cat", filepath.Join(hot, name)).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("cat %s after release: %v", name, err)
		}
	}
	assertNoDeadLetters(t, data)
	checkTierClean(t, cold)
}

// TestBadInputUnreadable: what cannot be archived is skipped with a reason
// and left alone — an immutable file (the releaser cannot write it), a
// FIFO and a directory named directly, a symlink out of the tree and a
// FIFO selected by an event.
func TestBadInputUnreadable(t *testing.T) {
	chattr := stratatest.NeedTool(t, "chattr")
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	orig := writeFiles(t, hot, map[string][]byte{
		"immutable.txt": bytes.Repeat([]byte("chattr +i: not even root may write me\n"), 3000),
		"fine.txt":      bytes.Repeat([]byte("an ordinary file\n"), 3000),
	})
	imm := filepath.Join(hot, "immutable.txt")
	if out, err := exec.Command(chattr, "+i", imm).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command(chattr, "-i", imm).Run() })
	fifo := filepath.Join(hot, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(hot, "passwd-link")
	if err := os.Symlink("/etc/passwd", link); err != nil {
		t.Fatal(err)
	}
	d, logs := loggedDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: cold}}})

	sum := archiveAsync(t, data, hot)()
	if reason := skipReasonOf(sum, imm); sum.Released != 1 || !strings.Contains(reason, "not writable") {
		t.Errorf("archive of a tree with an immutable file: %+v; want it skipped as not writable", sum)
	}
	logs.waitLog(t, 5*time.Second, "release skipped", imm, "not writable")
	assertHot(t, imm, orig["immutable.txt"])

	// Named directly: a FIFO, a symlink, a directory is not a file.
	var rep archiveSummary
	cliJSON(t, &rep, "archive", "--json", "--data", data, fifo, link)
	for _, p := range []string{fifo, link} {
		if skipReasonOf(rep, p) == "" {
			t.Errorf("archive %s: not skipped: %+v", p, rep)
		}
	}
	t.Logf("named directly: %+v", rep.Skipped)

	// Selected by crafted events: the compressor refuses without opening
	// anything it should not (a FIFO would block a reader forever; the
	// symlink leads out of the tree).
	em := pipeline.NewEmitter(d.js, "badhost", "test")
	reasons := map[string]string{fifo: "not a regular file", link: "leaves the hot tree through a symlink"}
	for i, p := range []string{fifo, link} {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		ev := &events.FileSelected{FileID: fmt.Sprintf("%032x", 0xf1f0+i), Path: p, Root: hot, Reason: events.ReasonManual,
			Stat: events.FileStat{Size: st.Size, Mode: st.Mode, Inode: st.Ino, Dev: st.Dev, MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano()}}
		if _, err := em.Emit(context.Background(), ev, p); err != nil {
			t.Fatal(err)
		}
		logs.waitLog(t, 20*time.Second, "not archiving file", p, reasons[p])
	}
	if _, err := os.Stat(filepath.Join(cold, "objects")); err == nil {
		// /etc/passwd must not have been packed into the tier.
		b, _ := os.ReadFile("/etc/passwd")
		oid := blake3Hex(b)
		if _, err := os.Stat(filepath.Join(cold, "objects", oid[:2], oid+".zst")); err == nil {
			t.Errorf("/etc/passwd was archived through a symlink")
		}
	}
	assertNoDeadLetters(t, data)
}

// TestBadInputOutsideHotTree: a file.selected naming a path outside every
// hot tree (published straight to the log, as a buggy or hostile
// publisher would) goes to the dead-letter stream with a reason naming the
// path; the file is not touched and the stage goes on with the next
// message.
func TestBadInputOutsideHotTree(t *testing.T) {
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret.txt")
	secret := []byte("outside every hot tree\n")
	if err := os.WriteFile(outside, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	orig := writeFiles(t, hot, map[string][]byte{"good.txt": bytes.Repeat([]byte("good\n"), 10000)})
	good := filepath.Join(hot, "good.txt")
	d, _ := loggedDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: cold}}})

	ctx := context.Background()
	publish := func(path, root string, n int) {
		t.Helper()
		c, err := scanner.Inspect(path, filepath.Dir(path), events.ReasonManual)
		if err != nil {
			t.Fatal(err)
		}
		ev := &events.FileSelected{FileID: c.FileID, Path: path, Root: root, Stat: c.Stat, Reason: events.ReasonManual}
		env, err := events.New(events.NewID(events.KindFileSelected, "badinput", fmt.Sprint(n)), "strata/test", time.Now(), ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pipeline.Publish(ctx, d.js, "badhost", env); err != nil {
			t.Fatal(err)
		}
	}
	publish(outside, hot, 1) // claims to be in the hot tree; it is not
	publish(good, hot, 2)

	waitFor(t, 30*time.Second, func() error {
		f, err := d.cat.FileByPath(good)
		if err != nil || f.State != catalog.StateReleased {
			return fmt.Errorf("good.txt: %+v %v", f, err)
		}
		return nil
	})
	got, err := exec.Command("cat", good).Output()
	if err != nil || !bytes.Equal(got, orig["good.txt"]) {
		t.Errorf("cat good.txt: %v", err)
	}
	assertHot(t, outside, secret)

	s, err := d.js.Stream(ctx, pipeline.StreamDeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	reason := msg.Header.Get(pipeline.HeaderReason)
	if !strings.Contains(reason, outside) || msg.Header.Get(pipeline.HeaderStage) != "compressor" {
		t.Errorf("dead letter: stage %q reason %q; want the compressor naming %s", msg.Header.Get(pipeline.HeaderStage), reason, outside)
	}
	t.Logf("dead letter: %s", reason)
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	if st.Stream.DeadLetters != 1 {
		t.Errorf("dead letters: %d, want 1", st.Stream.DeadLetters)
	}
}

// TestBadInputOpenFile: a file another program keeps open is not released
// (its reader could otherwise see the punched holes), and says so; a file
// that is open only for a moment is released on a second try within the
// same archive, not left to the next scan.
func TestBadInputOpenFile(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	orig := writeFiles(t, hot, map[string][]byte{
		"kept-open.bin":  bytes.Repeat([]byte("open for the whole archive\n"), 40000),
		"open-brief.bin": bytes.Repeat([]byte("open for a moment\n"), 40000),
	})
	p := func(name string) string { return filepath.Join(hot, name) }
	kept, err := os.Open(p("kept-open.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	brief, err := os.Open(p("open-brief.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer brief.Close()
	_, logs := loggedDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: "directory", Path: cold}}})
	wait := archiveAsync(t, data, hot)
	logs.waitLog(t, 30*time.Second, "trying again", p("open-brief.bin"))
	brief.Close()
	sum := wait()
	if sum.Released != 1 || !strings.Contains(skipReasonOf(sum, p("kept-open.bin")), "open by another process") {
		t.Fatalf("archive: %+v; want open-brief.bin released and kept-open.bin skipped as open", sum)
	}
	assertHot(t, p("kept-open.bin"), orig["kept-open.bin"])
	info, err := stub.ReadPath(p("open-brief.bin"))
	if err != nil || info.State != stub.Released {
		t.Fatalf("open-brief.bin after archive: %+v %v; want released", info, err)
	}
	if got, err := os.ReadFile(p("open-brief.bin")); err != nil || !bytes.Equal(got, orig["open-brief.bin"]) {
		t.Fatalf("open-brief.bin read back: %v (equal %v)", err, bytes.Equal(got, orig["open-brief.bin"]))
	}
}
