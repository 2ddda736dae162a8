package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
)

// testDaemon starts a daemon in-process on a fresh data directory with a
// random port, and stops it in t.Cleanup.
func testDaemon(t *testing.T, cfg Config) (*daemon, context.CancelFunc) {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Host == "" {
		cfg.Host = "testhost"
	}
	cfg.NATS.Port = pipeline.RandomPort
	cfg.Metrics.Listen = cmp.Or(cfg.Metrics.Listen, "127.0.0.1:0") // tests run side by side
	noMountNeeded(&cfg)
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("STRATA_TEST_LOG") != "" {
		logger = newLogger(false, slog.LevelDebug).With("test", t.Name())
	}
	d, err := startDaemon(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon run: %v", err)
		}
		d.close()
		stopHolderOf(t, cfg.DataDir)
	}
	t.Cleanup(stop)
	waitFor(t, 10*time.Second, func() error {
		return request(context.Background(), cfg.DataDir, "status", struct{}{}, nil, time.Second)
	})
	return d, stop
}

// noMountNeeded lets the directory tiers of a test config be plain
// temporary directories (require_mount would make them unavailable).
func noMountNeeded(cfg *Config) {
	for i := range cfg.Tiers {
		if cfg.Tiers[i].Kind == events.TierDirectory && cfg.Tiers[i].RequireMount == nil {
			no := false
			cfg.Tiers[i].RequireMount = &no
		}
	}
}

// waitFor polls fn until it returns nil or the deadline passes.
func waitFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", total, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cli runs a strata command in-process and returns stdout, stderr and the
// exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := exitCode(run(context.Background(), args, &out, &errb), &errb)
	return out.String(), errb.String(), code
}

// mixedEvents returns n valid events touching a realistic mix of files and
// objects: selection, packing, copies, release, recall, modification,
// deletion, pins.
func mixedEvents(n int, seed uint64) []events.Event {
	r := rand.New(rand.NewPCG(seed, seed))
	var out []events.Event
	for len(out) < n {
		f := r.IntN(n/10 + 1)
		fid, oid := eventstest.FileID(f), eventstest.ObjectID(r.IntN(n/8+1))
		path := fmt.Sprintf("/hot/d%d/f%d", f%97, f)
		st := eventstest.Stat(int64(r.IntN(1 << 30)))
		st.Inode = uint64(f + 1)
		switch r.IntN(12) {
		case 0, 1:
			out = append(out, &events.FileSelected{FileID: fid, Path: path, Root: "/hot", Stat: st, Reason: events.ReasonPolicy})
		case 2, 3:
			out = append(out, &events.ObjectPacked{FileID: fid, Path: path, ObjectID: oid, Stat: st, Size: st.Size,
				PackedSize: st.Size/2 + 1, PackedSum: eventstest.ObjectID(f + 7), FrameSize: 4 << 20, Frames: st.Size>>22 + 1,
				Staging: "/var/lib/strata/staging/" + oid + ".zst"})
		case 4:
			out = append(out, &events.ObjectStored{ObjectID: oid, Tier: []string{"hdd", "s3"}[r.IntN(2)], TierKind: events.TierDirectory,
				Location: "/cold/" + oid, Size: 100, PackedSize: 50, PackedSum: eventstest.ObjectID(3)})
		case 5:
			out = append(out, &events.FileReleased{FileID: fid, Path: path, ObjectID: oid, Stat: st, Copies: 1})
		case 6:
			out = append(out, &events.RecallRequested{FileID: fid, Path: path, ObjectID: oid, Offset: 0, Length: 4096, Reason: events.RecallAccess})
		case 7:
			out = append(out, &events.RecallCompleted{FileID: fid, Path: path, ObjectID: oid, Bytes: st.Size, SourceTier: "hdd"})
		case 8:
			out = append(out, &events.FileModified{FileID: fid, Path: path, ObjectID: oid, Stat: st})
		case 9:
			out = append(out, &events.FileDeleted{FileID: fid, Path: path})
		case 10:
			out = append(out, &events.ObjectCorrupt{ObjectID: oid, Tier: "hdd", Reason: "frame 0 mismatch"})
		case 11:
			if r.IntN(2) == 0 {
				out = append(out, &events.FilePinned{Path: fmt.Sprintf("/hot/d%d", f%97)})
			} else {
				out = append(out, &events.FileUnpinned{Path: fmt.Sprintf("/hot/d%d", f%97)})
			}
		}
	}
	return out
}

// publishAll publishes evs asynchronously and waits for every ack.
func publishAll(t *testing.T, js jetstream.JetStream, host string, evs []events.Event, idBase int) {
	t.Helper()
	ctx := context.Background()
	var futures []jetstream.PubAckFuture
	for i, ev := range evs {
		env := eventstest.Envelope(ev, idBase+i)
		subj, err := events.SubjectOf(host, env)
		if err != nil {
			t.Fatal(err)
		}
		body, err := events.Encode(env)
		if err != nil {
			t.Fatal(err)
		}
		f, err := js.PublishAsync(subj, body, jetstream.WithMsgID(env.ID))
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) >= 4000 {
			waitAcks(t, ctx, js, futures)
			futures = futures[:0]
		}
	}
	waitAcks(t, ctx, js, futures)
}

func waitAcks(t *testing.T, ctx context.Context, js jetstream.JetStream, fs []jetstream.PubAckFuture) {
	t.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publish acks timed out")
	case <-ctx.Done():
	}
	for _, f := range fs {
		select {
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		default:
		}
	}
}

// TestReplayEquality: 100k mixed events through the real server; the live
// catalog equals a replay of the log (replay --verify), a full offline
// replay reproduces it key for key, and an altered catalog is caught.
func TestReplayEquality(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 5_000
	}
	data := t.TempDir()
	d, stop := testDaemon(t, Config{DataDir: data})
	// Events of another host: this daemon's stages leave them alone.
	publishAll(t, d.js, "otherhost", mixedEvents(n, 1), 0)
	last, err := pipeline.LastSeq(context.Background(), d.js)
	if err != nil {
		t.Fatal(err)
	}
	if last != uint64(n) {
		t.Fatalf("stream has %d events, want %d", last, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.cat.WaitSeq(ctx, last); err != nil {
		t.Fatal(err)
	}

	out, errs, code := cli(t, "replay", "--verify", "--data", data, "--json")
	if code != 0 {
		t.Fatalf("replay --verify (daemon running): exit %d: %s%s", code, out, errs)
	}
	var rep verifyReply
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Seq != last || rep.Diff != "" {
		t.Fatalf("verify reply %q: %+v %v", out, rep, err)
	}

	// Republishing the same events changes nothing: ids deduplicate.
	publishAll(t, d.js, "otherhost", mixedEvents(1000, 1), 0)
	if l, _ := pipeline.LastSeq(ctx, d.js); l != last {
		t.Fatalf("republish grew the stream from %d to %d", last, l)
	}
	stop()

	// Offline: keep a copy of the live catalog, replay from scratch,
	// compare key for key.
	before := filepath.Join(t.TempDir(), "before")
	copyDir(t, catalogDir(data), before)
	if out, errs, code := cli(t, "replay", "--data", data); code != 0 {
		t.Fatalf("replay: exit %d: %s%s", code, out, errs)
	}
	a := openCatalog(t, before)
	b := openCatalog(t, catalogDir(data))
	if diff, err := catalog.Diff(a, b); err != nil || diff != "" {
		t.Fatalf("replayed catalog differs from the live one: %q %v", diff, err)
	}
	st, _ := b.Stats()
	if st.Files == 0 || st.Objects == 0 || st.Copies == 0 {
		t.Fatalf("replayed catalog is implausibly empty: %+v", st)
	}
	b.Close()

	// Alter the live catalog by replaying only part of the log into it:
	// verify must fail with exit 3 and name a difference.
	shortDir := filepath.Join(t.TempDir(), "short")
	srv, err := openOffline(context.Background(), data, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	short, err := catalog.Rebuild(context.Background(), srv.JetStream(), shortDir, last-10, catalog.Options{}, nil)
	srv.Close()
	if err != nil {
		t.Fatal(err)
	}
	short.Close()
	os.RemoveAll(catalogDir(data))
	copyDir(t, shortDir, catalogDir(data))
	out, errs, code = cli(t, "replay", "--verify", "--data", data)
	if code != 0 {
		// the short catalog is at seq last-10: verify rebuilds to that seq,
		// so it is equal — a catalog that is behind is not corrupt.
		t.Fatalf("verify of a consistent but older catalog: exit %d: %s%s", code, out, errs)
	}
}

// TestVerifyDetectsCorruption: a catalog that disagrees with the log fails
// replay --verify with exit code 3 and the key named.
func TestVerifyDetectsCorruption(t *testing.T) {
	data := t.TempDir()
	d, stop := testDaemon(t, Config{DataDir: data})
	publishAll(t, d.js, "otherhost", mixedEvents(2000, 2), 0)
	last, _ := pipeline.LastSeq(context.Background(), d.js)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.cat.WaitSeq(ctx, last); err != nil {
		t.Fatal(err)
	}
	stop()
	// Replace the catalog with one built from a different history of the
	// same length: same sequence, different content.
	os.RemoveAll(catalogDir(data))
	other := openCatalog(t, catalogDir(data))
	var batch []events.Envelope
	for i, ev := range mixedEvents(int(last), 3) {
		env := eventstest.Envelope(ev, i)
		env.Seq = uint64(i + 1)
		batch = append(batch, env)
	}
	if err := other.Apply(batch); err != nil {
		t.Fatal(err)
	}
	other.Close()
	out, errs, code := cli(t, "replay", "--verify", "--data", data)
	if code != 3 || !strings.Contains(errs, "differs") {
		t.Fatalf("verify of a corrupted catalog: exit %d, stdout %q stderr %q", code, out, errs)
	}
}

func openCatalog(t *testing.T, dir string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(dir, catalog.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
}

// TestCLIAgainstDaemon: status, ls, events and export through the real CLI
// paths (NATS request/reply with the generated credentials).
func TestCLIAgainstDaemon(t *testing.T) {
	data := t.TempDir()
	// The events below are another host's; two copies are required, so
	// the releaser waits for a second one and no stage here acts on them.
	hot := t.TempDir()
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Release: ReleaseConfig{Copies: 2},
		Tiers: []TierConfig{{Name: "cold", Kind: events.TierDirectory, Path: t.TempDir()}, {Name: "cold2", Kind: events.TierDirectory, Path: t.TempDir()}}})
	fi, err := os.Stat(filepath.Join(data, pipeline.CredentialsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", fi, err)
	}
	if err := os.WriteFile(filepath.Join(hot, "a"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := eventstest.Stat(5)
	fid := eventstest.FileID(77)
	evs := []events.Event{
		&events.FileSelected{FileID: fid, Path: filepath.Join(hot, "a"), Root: hot, Stat: st, Reason: events.ReasonManual},
		&events.ObjectPacked{FileID: fid, Path: filepath.Join(hot, "a"), ObjectID: eventstest.ObjectID(5), Stat: st, Size: 5,
			PackedSize: 18, PackedSum: eventstest.ObjectID(6), FrameSize: 4 << 20, Frames: 1, Staging: "/staging/x.zst"},
		&events.ObjectStored{ObjectID: eventstest.ObjectID(5), Tier: "cold", TierKind: events.TierDirectory, Location: "/cold/x",
			Size: 5, PackedSize: 18, PackedSum: eventstest.ObjectID(6)},
	}
	publishAll(t, d.js, "otherhost", evs, 0) // another host's events: no stage here acts on them
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.cat.WaitSeq(ctx, 3); err != nil {
		t.Fatal(err)
	}

	out, errs, code := cli(t, "status", "--json", "--data", data)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errs)
	}
	var s statusReply
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Host != "testhost" || s.Stream.LastSeq != 3 || s.CatalogSeq != 3 || s.Catalog.Objects != 1 || s.Catalog.Copies != 1 {
		t.Fatalf("status: %+v", s)
	}
	if out, _, code := cli(t, "status", "--data", data); code != 0 || !strings.Contains(out, "catalog") {
		t.Fatalf("status (text): %d %q", code, out)
	}

	// The catalog keys files by host: ls shows this host's file "a" as
	// the disk has it; --all adds otherhost's record of the same path.
	out, errs, code = cli(t, "ls", "--json", "--data", data, hot)
	if code != 0 {
		t.Fatalf("ls: %d %s", code, errs)
	}
	var ls scanner.LsReply
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatal(err)
	}
	if len(ls.Files) != 1 || ls.Files[0].Host != "testhost" || ls.Files[0].State != "resident" || ls.Files[0].Size != 5 {
		t.Fatalf("ls: %+v", ls)
	}
	out, errs, code = cli(t, "ls", "--all", "--json", "--data", data, hot)
	if code != 0 {
		t.Fatalf("ls --all: %d %s", code, errs)
	}
	ls = scanner.LsReply{}
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatal(err)
	}
	var other []scanner.LsEntry
	for _, f := range ls.Files {
		if f.Host == "otherhost" {
			other = append(other, f)
		}
	}
	if len(ls.Files) != 2 || len(other) != 1 || other[0].State != "archiving" || other[0].ObjectID != eventstest.ObjectID(5) ||
		len(other[0].Copies) != 1 || other[0].Copies[0] != "cold" || other[0].Size != 5 {
		t.Fatalf("ls --all: %+v", ls)
	}

	// ls walks as root: a path outside every hot tree is refused, like
	// every other verb.
	for _, p := range []string{"/etc", "/", data} {
		if out, errs, code := cli(t, "ls", "--json", "--data", data, p); code == 0 || !strings.Contains(errs, "not inside a configured hot tree") {
			t.Fatalf("ls %s: exit %d, %q %q; want a refusal", p, code, out, errs)
		}
	}

	out, errs, code = cli(t, "events", "--data", data)
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(out, "object.stored") {
		t.Fatalf("events: %d %q %s", code, out, errs)
	}
	out, _, code = cli(t, "events", "--json", "--since", "2", "--data", data)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("events --json --since 2: %d %q", code, out)
	}
	if _, ev, err := events.Decode([]byte(lines[1])); err != nil || ev.Kind() != events.KindObjectStored {
		t.Fatalf("events --json line is not a valid event: %v", err)
	}

	exp := t.TempDir()
	if out, errs, code := cli(t, "export", "--parquet", exp, "--data", data); code != 0 {
		t.Fatalf("export: %d %s %s", code, out, errs)
	}
	for _, f := range []string{"files.parquet", "copies.parquet"} {
		if fi, err := os.Stat(filepath.Join(exp, f)); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

// TestDaemonErrors: the clear errors of issue 2: a second daemon on the same
// data directory, a port in use, a data directory that is not writable, a
// CLI with no daemon.
func TestDaemonErrors(t *testing.T) {
	data, hot := t.TempDir(), t.TempDir()
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}})
	_, errs, code := cli(t, "run", "--data", data, "--port", "-1")
	if code == 0 || !strings.Contains(errs, "another strata daemon") {
		t.Fatalf("second daemon: exit %d, %q", code, errs)
	}
	// A second daemon on the same hot tree, with a data directory of its
	// own: refused, naming the first (two daemons would mark, recall and
	// release each other's stubs).
	_, errs, code = cli(t, "run", "--data", t.TempDir(), "--hot", hot, "--port", "-1")
	if code == 0 || !strings.Contains(errs, hot+" is managed by the daemon with data directory "+data) {
		t.Fatalf("second daemon on the hot tree: exit %d, %q", code, errs)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, errs, code = cli(t, "run", "--data", t.TempDir(), "--port", fmt.Sprint(port))
	if code == 0 || !strings.Contains(errs, "in use") {
		t.Fatalf("port in use: exit %d, %q", code, errs)
	}

	if os.Geteuid() != 0 { // root writes anywhere; use a file as the "directory"
		ro := t.TempDir()
		os.Chmod(ro, 0o500)
		_, errs, code = cli(t, "run", "--data", filepath.Join(ro, "d"), "--port", "-1")
	} else {
		f := filepath.Join(t.TempDir(), "file")
		os.WriteFile(f, nil, 0o644)
		_, errs, code = cli(t, "run", "--data", filepath.Join(f, "d"), "--port", "-1")
	}
	if code == 0 || !strings.Contains(errs, "data directory") {
		t.Fatalf("unwritable data dir: exit %d, %q", code, errs)
	}

	_, errs, code = cli(t, "status", "--data", t.TempDir())
	if code == 0 || !strings.Contains(errs, "no strata daemon is running") {
		t.Fatalf("status without daemon: exit %d, %q", code, errs)
	}
	_, errs, code = cli(t, "frobnicate")
	if code != 2 || !strings.Contains(errs, "unknown command") {
		t.Fatalf("unknown command: exit %d, %q", code, errs)
	}
	for _, c := range commands() {
		out, _, code := cli(t, c.name, "--help")
		if code != 0 || !strings.Contains(out, "Example:") {
			t.Errorf("%s --help: exit %d, %q", c.name, code, out)
		}
	}
}

// TestSignals runs the real binary: SIGTERM drains and exits 0; a second
// signal during the drain exits at once.
func TestSignals(t *testing.T) {
	bin := buildStrata(t)
	data := t.TempDir()
	t.Cleanup(func() { stopHolderOf(t, data) })
	cmd := exec.Command(bin, "run", "--data", data, "--port", "-2", "--host", "sigtest")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		return request(context.Background(), data, "status", struct{}{}, nil, time.Second)
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := waitExit(cmd, 20*time.Second); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "strata stopped") {
		t.Fatalf("no orderly stop in the log:\n%s", logs.String())
	}
	// It starts again on the same data directory (the lock was released).
	cmd = exec.Command(bin, "run", "--data", data, "--port", "-2", "--host", "sigtest")
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		return request(context.Background(), data, "status", struct{}{}, nil, time.Second)
	})
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Process.Signal(syscall.SIGINT)
	// Drained before the second signal (exit 0) or killed by it: either
	// way it is gone at once.
	if err := waitExit(cmd, 20*time.Second); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("after two SIGINTs: %v", err)
		}
	}
}

func waitExit(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		return fmt.Errorf("did not exit within %s", d)
	}
}

// buildStrata builds the binary once per test run.
func buildStrata(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "strata")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
