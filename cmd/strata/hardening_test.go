package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier/dir"
)

// TestRearchiveAfterCorruption: a file whose only copy was found corrupt
// (by a scrub that had nowhere to repair it from) is archived again right
// away: the store stage rewrites the copy, records it (its object.stored
// must not be dropped as a duplicate of the first), and the file is
// released. It hung before: the copy stayed corrupt in the catalog and
// archive --wait never returned.
func TestRearchiveAfterCorruption(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	hot, data, cold := filepath.Join(mnt, "hot"), t.TempDir(), t.TempDir()
	if err := os.MkdirAll(hot, 0o755); err != nil {
		t.Fatal(err)
	}
	random, _ := contentGen(21, 1)
	content := random(2<<20 + 5)
	path := filepath.Join(hot, "f.bin")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: cold}}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, path)
	if sum.Released != 1 {
		t.Fatalf("first archive: %+v", sum)
	}
	info, err := stub.ReadPath(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := exec.Command("cat", path).Output(); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("cat: %v", err)
	}
	waitFor(t, time.Minute, func() error {
		return wantState(d, path, catalog.StateArchived)
	})

	// Damage the only copy; the scrub finds it and cannot repair it.
	flipObjectByte(t, cold, info.ObjectID)
	if out, errs, code := cli(t, "scrub", "--json", "--rate", "0", "--data", data); code == 0 || !strings.Contains(errs, "could not be repaired") {
		t.Fatalf("scrub of the only, corrupt copy: exit %d %s %s", code, out, errs)
	}
	cps, err := d.cat.Copies(info.ObjectID)
	if err != nil || len(cps) != 1 || cps[0].State != catalog.CopyCorrupt {
		t.Fatalf("copies after the scrub: %+v %v; want one, corrupt", cps, err)
	}

	// Archive it again at once (well within the stream's dedup window).
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "1m", "--json", "--data", data, path)
	if sum.Released != 1 {
		t.Fatalf("archive after the corruption: %+v", sum)
	}
	cps, err = d.cat.Copies(info.ObjectID)
	if err != nil || len(cps) != 1 || cps[0].State != catalog.CopyGood {
		t.Fatalf("copies after the second archive: %+v %v; want the rewritten copy, good", cps, err)
	}
	if got, err := exec.Command("cat", path).Output(); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("cat after the second release: %v", err)
	}
}

// wantState is nil when the catalog has the file at path in state s.
func wantState(d *daemon, path string, s catalog.State) error {
	f, err := d.cat.FileByPath(path)
	if err != nil {
		return err
	}
	if f.State != s {
		return fmt.Errorf("%s is %s, want %s", path, f.State, s)
	}
	return nil
}

// TestDataDirPrivate: everything the daemon creates in its data directory
// is its owner's alone, whatever the caller's umask; a data directory
// other users can read is refused with a message that says what to do.
func TestDataDirPrivate(t *testing.T) {
	bin := buildStrata(t)
	data := filepath.Join(t.TempDir(), "data")
	t.Cleanup(func() { stopHolderOf(t, data) })
	cmd := exec.Command("sh", "-c", "umask 022; exec "+bin+" run --data "+data+" --port -2 --host permtest")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		return request(context.Background(), data, "status", struct{}{}, nil, time.Second)
	})
	var open []string
	err := filepath.WalkDir(data, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := de.Info()
		if err != nil {
			return nil // vanished (a temp file)
		}
		if fi.Mode().Perm()&0o077 != 0 && fi.Mode()&fs.ModeSocket == 0 {
			open = append(open, fmt.Sprintf("%s %04o", p, fi.Mode().Perm()))
		}
		return nil
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if werr := waitExit(cmd, 20*time.Second); werr != nil {
		t.Fatalf("stop: %v\n%s", werr, logs.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(open) > 0 {
		t.Fatalf("files under the data directory others may read: %v", open)
	}

	// A data directory an administrator made group- or world-readable.
	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "run", "--data", shared, "--port", "-2").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "open to other users") || !strings.Contains(string(out), "chmod 700 "+shared) {
		t.Fatalf("daemon on a 0755 data directory: %v\n%s", err, out)
	}
}

// TestUnmountedTier: a directory tier outside the data directory whose
// disk is not mounted (its root a plain directory, or missing) is shown
// unreachable, saying why, and gets no copy: the file stays hot.
func TestUnmountedTier(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 128<<20)
	hot, data := filepath.Join(mnt, "hot"), t.TempDir()
	if err := os.MkdirAll(hot, 0o755); err != nil {
		t.Fatal(err)
	}
	plain := t.TempDir()                            // meant to be a mount point
	missing := filepath.Join(t.TempDir(), "absent") // a disk whose mount point is gone
	path := filepath.Join(hot, "f")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 100<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	yes := true
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{
		{Name: "usb", Kind: events.TierDirectory, Path: plain, RequireMount: &yes},
		{Name: "nas", Kind: events.TierDirectory, Path: missing},
	}, Release: ReleaseConfig{Copies: 1, From: []string{"usb"}}})
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	why := map[string]string{}
	for _, ts := range st.TierState {
		if ts.Reachable {
			t.Errorf("tier %s reachable, want unreachable", ts.Name)
		}
		why[ts.Name] = ts.Probe
	}
	if !strings.Contains(why["usb"], "not a mount point") || !strings.Contains(why["nas"], "does not exist") {
		t.Fatalf("status says %q; want usb not a mount point, nas missing", why)
	}
	out, errs, code := cli(t, "archive", "--wait", "--timeout", "5s", "--json", "--data", data, path)
	if code == 0 {
		t.Fatalf("archive to unmounted tiers returned 0: %s %s", out, errs)
	}
	if ents, _ := os.ReadDir(plain); len(ents) != 0 {
		t.Fatalf("the unmounted tier's directory holds %d entries: a copy landed on the local disk", len(ents))
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("the missing tier root was created (%v)", err)
	}
	if info, err := stub.ReadPath(path); err == nil && info.State == stub.Released {
		t.Fatal("released with no copy on a mounted tier")
	}
}

// TestNewTierIsBackFilled: a tier added after files were archived (and
// their staged copies removed) gets a verified copy of every existing
// object, copied from the tier that has one, as its store stage works
// through the log; nothing is dead-lettered.
func TestNewTierIsBackFilled(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	hot, data, hdd, nas := filepath.Join(mnt, "hot"), t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.MkdirAll(hot, 0o755); err != nil {
		t.Fatal(err)
	}
	files := testFiles(t, hot, 31)
	cfg := Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: hdd}}}
	_, stop := testDaemon(t, cfg)
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	stop()

	cfg.Tiers = append(cfg.Tiers, TierConfig{Name: "nas", Kind: events.TierDirectory, Path: nas})
	d, _ := testDaemon(t, cfg)
	objects := map[string]bool{}
	for p := range files {
		info, err := stub.ReadPath(p)
		if err != nil {
			t.Fatal(err)
		}
		objects[info.ObjectID] = true
	}
	waitFor(t, time.Minute, func() error {
		for oid := range objects {
			cps, err := d.cat.Copies(oid)
			if err != nil {
				return err
			}
			good := 0
			for _, c := range cps {
				if c.State == catalog.CopyGood && (c.Tier == "hdd" || c.Tier == "nas") {
					good++
				}
			}
			if good != 2 {
				return fmt.Errorf("object %s: %d good copies, want hdd and nas: %+v", oid[:8], good, cps)
			}
		}
		return nil
	})
	nt, err := dir.Open(dir.Config{Name: "nas", Root: nas}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for oid := range objects {
		if _, err := nt.Verify(context.Background(), oid); err != nil {
			t.Errorf("back-filled copy of %s: %v", oid[:8], err)
		}
	}
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	if st.Stream.DeadLetters != 0 {
		t.Fatalf("%d dead letters after the back-fill", st.Stream.DeadLetters)
	}
	// The new copies serve: with the old tier's objects gone, every stub
	// still reads right.
	if err := os.RemoveAll(filepath.Join(hdd, "objects")); err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		if got, err := exec.Command("cat", p).Output(); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat %s from the back-filled tier: %v", p, err)
		}
	}
}

// TestArchiveNeverLeavesTheHotTree: a user who can write into a hot tree
// plants a symlink to a directory outside it (here, one standing for
// /etc) and asks for its files to be archived: the root daemon reads
// nothing outside the tree and stores nothing of it on any tier.
func TestArchiveNeverLeavesTheHotTree(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 128<<20)
	hot, data, cold, outside := filepath.Join(mnt, "hot"), t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(hot, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte("root's secret\n"), 1000)
	if err := os.WriteFile(filepath.Join(outside, "shadow"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(hot, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(hot, "sub", "deeper")); err != nil {
		t.Fatal(err)
	}
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: cold}}})
	for _, p := range []string{
		filepath.Join(hot, "etc", "shadow"),           // a file through the symlink
		filepath.Join(hot, "etc"),                     // the symlink itself
		filepath.Join(hot, "sub", "deeper", "shadow"), // deeper down
		filepath.Join(hot, "sub"),                     // a directory holding the symlink
	} {
		var sum archiveSummary
		cliJSON(t, &sum, "archive", "--wait", "--timeout", "30s", "--json", "--data", data, p)
		if sum.Selected != 0 {
			t.Errorf("archive %s selected %d files: %+v", p, sum.Selected, sum)
		}
	}
	if n := countObjects(t, cold); n != 0 {
		t.Fatalf("the tier holds %d objects: something outside the hot tree was stored", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(data, "staging")); len(ents) != 0 {
		t.Fatalf("staging holds %d entries", len(ents))
	}
}

// TestConsumersCommand: a durable a reader made (where nobody may keep
// one) shows as stray in strata consumers ls and strata status, and
// strata consumers rm removes it; a stage's durable is never removed.
func TestConsumersCommand(t *testing.T) {
	data := t.TempDir()
	d, _ := testDaemon(t, Config{DataDir: data})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := pipeline.DialReader(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rjs.CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, jetstream.ConsumerConfig{Durable: "rogue", AckPolicy: jetstream.AckNonePolicy}); err != nil {
		t.Fatal(err)
	}
	var cs []pipeline.Consumer
	cliJSON(t, &cs, "consumers", "ls", "--json", "--data", data)
	owners := map[string]string{}
	for _, c := range cs {
		owners[c.Name] = c.Owner
	}
	if owners["rogue"] != "stray" || owners["compressor"] != "daemon" {
		t.Fatalf("consumers: %v; want rogue stray and the stages the daemon's", owners)
	}
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	for _, c := range st.Stream.Consumers {
		if c.Name == "rogue" {
			t.Fatal("strata status lists a reader's durable as a stage")
		}
	}
	if len(st.Stray) != 1 {
		t.Fatalf("status strays %v, want the rogue durable", st.Stray)
	}
	if _, errs, code := cli(t, "consumers", "rm", "compressor", "--data", data); code == 0 || !strings.Contains(errs, "is a stage of this daemon") {
		t.Fatalf("rm of a stage: exit %d %q; want a refusal", code, errs)
	}
	if out, errs, code := cli(t, "consumers", "rm", "rogue", "--data", data); code != 0 {
		t.Fatalf("rm rogue: exit %d %s %s", code, out, errs)
	}
	if _, err := d.js.Consumer(ctx, pipeline.StreamEvents, "rogue"); err == nil {
		t.Fatal("the rogue durable is still there")
	}
}
