package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/pruner"
	"github.com/strata-hsm/strata/workers/scrubber"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// tcpProxy forwards 127.0.0.1:port to a server and can be taken down
// (listener and every connection closed: a real network failure) and up.
type tcpProxy struct {
	addr, to string
	mu       sync.Mutex
	l        net.Listener
	conns    map[net.Conn]bool
}

func startProxy(t *testing.T, to string) *tcpProxy {
	p := &tcpProxy{addr: fmt.Sprintf("127.0.0.1:%d", tiertest.FreePort(t)), to: to, conns: map[net.Conn]bool{}}
	p.up(t)
	t.Cleanup(p.down)
	return p
}

func (p *tcpProxy) up(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[s] = true, true
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
}

func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// randomFiles writes n files of the given sizes with random content under
// dir and returns their contents by path.
func randomFiles(t *testing.T, dir string, seed uint64, sizes map[string]int) map[string][]byte {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 3))
	out := map[string][]byte{}
	for name, n := range sizes {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out[p] = b
	}
	return out
}

func tierStatusOf(t *testing.T, data, name string) tierStatus {
	t.Helper()
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	for _, ts := range st.TierState {
		if ts.Name == name {
			return ts
		}
	}
	t.Fatalf("status has no tier %s: %+v", name, st.TierState)
	return tierStatus{}
}

func goodCopyOn(cat *catalog.Catalog, oid, tier string) bool {
	cps, _ := cat.Copies(oid)
	for _, c := range cps {
		if c.Tier == tier && c.State == catalog.CopyGood {
			return true
		}
	}
	return false
}

// TestReleaseWaitsForCopies: copies = 2 of a directory tier and S3. With
// S3 unreachable, the directory copies are made but nothing is released
// and status shows the S3 tier's error; when S3 comes back, its store
// stage catches up, the files are released, and they read back intact.
func TestReleaseWaitsForCopies(t *testing.T) {
	stratatest.NeedRoot(t)
	srv := tiertest.StartS3(t)
	bucket := srv.NewBucket(t)
	proxy := startProxy(t, srv.Endpoint)
	proxy.down()
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	files := randomFiles(t, hot, 1, map[string]int{"a.bin": 300 << 10, "d/b.bin": 5<<20 + 17, "d/c.bin": 1000})
	noTLS := false
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{
			{Name: "hdd", Kind: "directory", Path: cold},
			{Name: "s3", Kind: "s3", Endpoint: proxy.addr, Bucket: bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, TLS: &noTLS},
		},
		Release: ReleaseConfig{Copies: 2}})

	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--json", "--data", data, hot)
	if sum.Selected != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	// Every file packed and on hdd; the S3 stage has failed at least once;
	// the releaser has handled everything it was given.
	waitFor(t, 30*time.Second, func() error {
		for p := range files {
			f, err := d.cat.FileByPath(p)
			if err != nil || f.ObjectID == "" || !goodCopyOn(d.cat, f.ObjectID, "hdd") {
				return fmt.Errorf("%s not on hdd yet (%v)", p, err)
			}
		}
		ts := tierStatusOf(t, data, "s3")
		if ts.LastError == "" || ts.Reachable {
			return fmt.Errorf("s3 tier: %+v", ts)
		}
		var st statusReply
		cliJSON(t, &st, "status", "--json", "--data", data)
		for _, c := range st.Stream.Consumers {
			if c.Name == "releaser" && c.Lag != 0 {
				return fmt.Errorf("releaser lag %d", c.Lag)
			}
		}
		return nil
	})
	for p := range files {
		f, _ := d.cat.FileByPath(p)
		if f.State != catalog.StateArchiving {
			t.Fatalf("%s is %s with one copy of two", p, f.State)
		}
		if info, err := stub.ReadPath(p); err == nil && info.State == stub.Released {
			t.Fatalf("%s released with S3 down", p)
		}
	}
	if out, _, code := cli(t, "status", "--data", data); code != 0 || !strings.Contains(out, "UNREACHABLE") {
		t.Fatalf("status does not show the unreachable tier: %s", out)
	}

	proxy.up(t)
	// Released in the catalog: file.released is published after the hole
	// is punched (the xattr says released before that).
	waitFor(t, 40*time.Second, func() error {
		for p := range files {
			if info, err := stub.ReadPath(p); err != nil || info.State != stub.Released {
				return fmt.Errorf("%s not released yet (%v)", p, err)
			}
		}
		return nil
	})
	// Read each file the moment its xattrs say released, racing the
	// punch: a program must get the original bytes (a release that a
	// reader races is given up, and the file stays whole).
	for p, want := range files {
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat during release %s: %v: %s", p, err, firstDiff(got, want))
		}
	}
	// A release the reader made give up is done by the next archive.
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "1m", "--json", "--data", data, hot)
	waitFor(t, 40*time.Second, func() error {
		for p := range files {
			if f, err := d.cat.FileByPath(p); err != nil || (f.State != catalog.StateReleased && f.State != catalog.StateArchived) {
				return fmt.Errorf("%s not released yet (%v)", p, err)
			}
		}
		return nil
	})
	for p, want := range files {
		f, _ := d.cat.FileByPath(p)
		if !goodCopyOn(d.cat, f.ObjectID, "s3") || !goodCopyOn(d.cat, f.ObjectID, "hdd") {
			t.Fatalf("%s released without both copies", p)
		}
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat %s: %v: %s", p, err, firstDiff(got, want))
		}
	}
	if ts := tierStatusOf(t, data, "s3"); !ts.Reachable || ts.Objects != uint64(len(files)) || ts.Lag != 0 {
		t.Fatalf("s3 tier after catching up: %+v", ts)
	}
}

// objectPath is where a directory tier keeps an object's packed bytes.
func objectPath(root, id string) string { return filepath.Join(root, tier.ObjectKey(id)) }

// flipObjectByte damages the copy of object id on the directory tier at
// root: one byte in its middle.
func flipObjectByte(t *testing.T, root, id string) {
	t.Helper()
	zp := objectPath(root, id)
	b, err := os.ReadFile(zp)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(zp, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFallbackAndScrub: a directory tier (cheap) and an rclone webdav
// remote, copies = 2. A corrupted directory copy: recall falls back to the
// remote (programs get the right bytes) and object.corrupt is recorded. A
// copy missing on the remote and the corrupt one are both re-created by
// strata scrub, which publishes object.stored again.
func TestFallbackAndScrub(t *testing.T) {
	stratatest.NeedRoot(t)
	dav := tiertest.StartRclone(t, "webdav")
	env := map[string]string{}
	for _, kv := range dav.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	files := randomFiles(t, hot, 2, map[string]int{"big.bin": 6<<20 + 5, "small.bin": 70 << 10})
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{
			{Name: "hdd", Kind: "directory", Path: cold},
			{Name: "dav", Kind: "rclone", Remote: dav.Remote + ":strata", Env: env},
		},
		Release: ReleaseConfig{Copies: 2}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "1m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	big, small := filepath.Join(hot, "big.bin"), filepath.Join(hot, "small.bin")
	fb, _ := d.cat.FileByPath(big)
	fs, _ := d.cat.FileByPath(small)

	// Corrupt the cheap copy of big: one byte in the middle.
	zp := objectPath(cold, fb.ObjectID)
	f, err := os.OpenFile(zp, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	var one [1]byte
	f.ReadAt(one[:], fi.Size()/2)
	one[0] ^= 0xff
	f.WriteAt(one[:], fi.Size()/2)
	f.Close()
	got, err := exec.Command("cat", big).Output()
	if err != nil || !bytes.Equal(got, files[big]) {
		t.Fatalf("cat %s with a corrupt cheap copy: %v: %s", big, err, firstDiff(got, files[big]))
	}
	waitFor(t, 20*time.Second, func() error {
		cps, _ := d.cat.Copies(fb.ObjectID)
		for _, c := range cps {
			if c.Tier == "hdd" && c.State == catalog.CopyCorrupt {
				return nil
			}
		}
		return fmt.Errorf("no object.corrupt for hdd: %+v", cps)
	})

	// Remove the remote's copy of small.
	if err := os.Remove(filepath.Join(dav.Dir, "strata", tier.ObjectKey(fs.ObjectID))); err != nil {
		t.Fatal(err)
	}

	var st scrubber.Status
	out, errs, code := cli(t, "scrub", "--json", "--rate", "0", "--data", data)
	if code != 0 {
		t.Fatalf("scrub: exit %d: %s %s", code, out, errs)
	}
	if err := jsonUnmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	if st.Total != 4 || st.Checked != 4 || st.Corrupt != 2 || st.Missing != 1 || st.Repaired != 2 || st.Verified != 2 || !st.Done {
		t.Fatalf("scrub: %+v", st)
	}
	// Both copies are whole again, on disk and in the catalog.
	hdd, err := dir.Open(dir.Config{Name: "hdd", Root: cold}, d.logger)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hdd.Verify(context.Background(), fb.ObjectID); err != nil {
		t.Fatalf("hdd copy after scrub: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dav.Dir, "strata", tier.ObjectKey(fs.ObjectID))); err != nil {
		t.Fatalf("remote copy after scrub: %v", err)
	}
	waitFor(t, 10*time.Second, func() error {
		for _, oid := range []string{fb.ObjectID, fs.ObjectID} {
			for _, tier := range []string{"hdd", "dav"} {
				if !goodCopyOn(d.cat, oid, tier) {
					return fmt.Errorf("%s on %s not good in the catalog", oid, tier)
				}
			}
		}
		return nil
	})
	// A second scrub finds nothing wrong; a scrub of an unknown tier is refused.
	cliJSON(t, &st, "scrub", "--json", "--tier", "dav", "--data", data)
	if st.Checked != 2 || st.Verified != 2 || st.Corrupt != 0 {
		t.Fatalf("second scrub: %+v", st)
	}
	if _, errs, code := cli(t, "scrub", "--tier", "nope", "--data", data); code == 0 || !strings.Contains(errs, `tier "nope" is not configured`) {
		t.Fatalf("scrub of an unknown tier: exit %d %s", code, errs)
	}
	if ts := tierStatusOf(t, data, "dav"); !ts.Reachable || ts.Kind != "rclone" || ts.Objects != 2 {
		t.Fatalf("dav status: %+v", ts)
	}
}

// TestPrune: retention keep_deleted = 1h, keep_versions = 1. Objects of a
// file deleted long ago and a version superseded long ago go; a file
// deleted just now, an object shared with a live file and every current
// version stay. The dry run removes nothing.
func TestPrune(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	shared := bytes.Repeat([]byte("shared content\n"), 5000)
	files := randomFiles(t, hot, 3, map[string]int{"old-deleted": 50 << 10, "new-deleted": 60 << 10, "superseded": 70 << 10, "live": 80 << 10})
	for _, n := range []string{"c1", "c2"} {
		os.WriteFile(filepath.Join(hot, n), shared, 0o644)
		files[filepath.Join(hot, n)] = shared
	}
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers:     []TierConfig{{Name: "hdd", Kind: "directory", Path: cold}},
		Retention: RetentionConfig{KeepDeleted: duration(time.Hour), KeepVersions: 1}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "1m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	fileAt := func(name string) catalog.File {
		f, err := d.cat.FileByPath(filepath.Join(hot, name))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	oldDel, newDel, sup, c1 := fileAt("old-deleted"), fileAt("new-deleted"), fileAt("superseded"), fileAt("c1")
	before := countObjects(t, cold)
	// Long ago (eventstest times are in 2023): old-deleted and c1 were
	// deleted, and superseded got a new version (packed on another host).
	publishAll(t, d.js, "otherhost", []events.Event{
		&events.FileDeleted{FileID: oldDel.ID, Path: oldDel.Path},
		&events.FileDeleted{FileID: c1.ID, Path: c1.Path},
		&events.ObjectPacked{FileID: sup.ID, Path: sup.Path, ObjectID: eventstest.ObjectID(99), Stat: sup.Stat, Size: sup.Stat.Size,
			PackedSize: 10, PackedSum: eventstest.ObjectID(98), FrameSize: 4 << 20, Frames: 1, Staging: "/elsewhere/x.zst"},
	}, 0)
	// Just now: new-deleted.
	em := pipeline.NewEmitter(d.js, "testhost", "test")
	if _, err := em.Emit(context.Background(), &events.FileDeleted{FileID: newDel.ID, Path: newDel.Path}, newDel.ID); err != nil {
		t.Fatal(err)
	}

	var dry pruner.Reply
	cliJSON(t, &dry, "prune", "--json", "--data", data)
	want := map[string]bool{oldDel.ObjectID: true, sup.ObjectID: true}
	if dry.Applied || len(dry.Objects) != 2 || !want[dry.Objects[0].ObjectID] || !want[dry.Objects[1].ObjectID] || dry.Copies != 2 {
		t.Fatalf("dry run: %+v", dry)
	}
	if n := countObjects(t, cold); n != before {
		t.Fatalf("the dry run removed objects: %d, was %d", n, before)
	}
	if out, _, code := cli(t, "prune", "--data", data); code != 0 || !strings.Contains(out, "dry run: nothing was removed") {
		t.Fatalf("prune (text): %d %s", code, out)
	}

	var rep pruner.Reply
	cliJSON(t, &rep, "prune", "--apply", "--json", "--data", data)
	if !rep.Applied || rep.Deleted != 2 || rep.Errors != 0 {
		t.Fatalf("prune --apply: %+v", rep)
	}
	if n := countObjects(t, cold); n != before-2 {
		t.Fatalf("cold tier holds %d objects after prune, want %d", n, before-2)
	}
	for oid := range want {
		if _, err := os.Stat(objectPath(cold, oid)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("pruned object %s still on the tier: %v", oid, err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		for oid := range want {
			if cps, _ := d.cat.Copies(oid); len(cps) != 0 {
				return fmt.Errorf("catalog still lists copies of %s: %+v", oid, cps)
			}
		}
		return nil
	})
	// What stays readable stays intact: the shared object and the live file.
	for _, name := range []string{"c2", "live", "new-deleted"} {
		p := filepath.Join(hot, name)
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, files[p]) {
			t.Fatalf("cat %s after prune: %v: %s", p, err, firstDiff(got, files[p]))
		}
	}
	cliJSON(t, &rep, "prune", "--json", "--data", data)
	if len(rep.Objects) != 0 {
		t.Fatalf("a second prune still finds: %+v", rep.Objects)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// TestTierFilters: a tier takes only the files its filters allow; the
// release still reaches its copies on the tier that takes all, and staged
// objects are removed once every tier that wants them has its copy.
func TestTierFilters(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold, fast := t.TempDir(), t.TempDir(), t.TempDir()
	files := randomFiles(t, hot, 4, map[string]int{"big.bin": 2 << 20, "small.txt": 10 << 10, "skip/small.bin": 20 << 10})
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{
			{Name: "hdd", Kind: "directory", Path: cold},
			{Name: "ssd", Kind: "directory", Path: fast, MaxSize: 1 << 20, Exclude: []string{"skip/**"}},
		}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "1m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	for p := range files {
		f, _ := d.cat.FileByPath(p)
		onSSD := strings.HasSuffix(p, "/small.txt")
		if _, err := os.Stat(objectPath(fast, f.ObjectID)); (err == nil) != onSSD {
			t.Errorf("%s on the ssd tier: %v, want %v", p, err == nil, onSSD)
		}
		if !goodCopyOn(d.cat, f.ObjectID, "hdd") || goodCopyOn(d.cat, f.ObjectID, "ssd") != onSSD {
			t.Errorf("%s: copies in the catalog do not follow the filters", p)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		m, _ := filepath.Glob(filepath.Join(data, "staging", "*"))
		if len(m) != 0 {
			return fmt.Errorf("staging still holds %v", m)
		}
		return nil
	})
}

// firstDiff describes where got departs from want.
func firstDiff(got, want []byte) string {
	n := min(len(got), len(want))
	for i := range n {
		if got[i] != want[i] {
			end := i
			for end < n && got[end] != want[end] {
				end++
			}
			zeros := bytes.Count(got[i:end], []byte{0}) == end-i
			return fmt.Sprintf("%d bytes, want %d; first difference at offset %d (frame %d), %d bytes differ there (all zero: %v)",
				len(got), len(want), i, i/(4<<20), end-i, zeros)
		}
	}
	return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
}
