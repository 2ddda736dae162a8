package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier/faulttest"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// TestFaultyS3Tier: a daemon with a directory tier and an S3 tier behind
// a fault-injecting proxy, copies = 2. While every read of the S3 copy
// comes back with a bit flipped, the upload's read-back fails: the file
// stays resident (never released on a copy not proven good) and the store
// stage keeps retrying; once the flips stop, the retry stores a good copy
// and the file is released. Then, with the cheap copy damaged and S3
// flipping again, `cat` of the stub fails with EIO — never wrong bytes —
// and once the faults stop, cat gets the original bytes from S3.
func TestFaultyS3Tier(t *testing.T) {
	stratatest.NeedRoot(t)
	srv := tiertest.StartS3(t)
	bucket := srv.NewBucket(t)
	proxy := faulttest.Start(t, srv.Endpoint)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	files := randomFiles(t, hot, 16, map[string]int{"f.bin": 2<<20 + 99})
	p := filepath.Join(hot, "f.bin")
	want := files[p]
	noTLS := false
	flip := faulttest.Rule{Method: "GET", Path: ".zst", Fault: faulttest.FlipResponse, Middle: true}
	proxy.Set(flip)
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{
			{Name: "hdd", Kind: "directory", Path: cold},
			{Name: "s3", Kind: "s3", Endpoint: proxy.Addr, Bucket: bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, TLS: &noTLS},
		},
		Release: ReleaseConfig{Copies: 2}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--json", "--data", data, hot)
	// Two read-backs flipped: the first attempt and its retry.
	waitFor(t, 30*time.Second, func() error {
		if n := proxy.Hits(faulttest.FlipResponse); n < 3 { // the existence check, then two read-backs
			return fmt.Errorf("%d flipped reads", n)
		}
		return nil
	})
	if info, err := stub.ReadPath(p); err == nil && info.State == stub.Released {
		t.Fatal("released while the S3 copy failed its read-back")
	}
	if f, _ := d.cat.FileByPath(p); f.ObjectID != "" && goodCopyOn(d.cat, f.ObjectID, "s3") {
		t.Fatal("the catalog counts an S3 copy that failed its read-back")
	}
	proxy.Clear()
	f := waitReleasedOnBoth(t, d, p, 40*time.Second)

	// Damage the cheap copy; S3 flips every read: no good copy.
	flipObjectByte(t, cold, f.ObjectID)
	proxy.Set(flip)
	got, err := exec.Command("cat", p).Output()
	if err == nil || len(got) > 0 && !bytes.Equal(got, want[:len(got)]) {
		t.Fatalf("cat with no good copy: %v, %d bytes (%s); want EIO and no wrong bytes", err, len(got), firstDiff(got, want[:min(len(got), len(want))]))
	}
	t.Logf("cat with no good copy: %v after %d good bytes", err, len(got))
	proxy.Clear()
	got, err = exec.Command("cat", p).Output()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("cat once S3 reads right: %v: %s", err, firstDiff(got, want))
	}
}

// TestHungS3Tier: the same daemon with `timeout = "2s"` on the S3 tier,
// and an S3 that answers nothing. An upload that hangs fails after the
// timeout and is retried: the file stays resident until it lands. A
// recall whose only good copy sits on the hung tier ends with EIO within
// a bounded time — never a reader held for ever, never wrong bytes — and
// once S3 answers again, cat gets the original bytes.
func TestHungS3Tier(t *testing.T) {
	stratatest.NeedRoot(t)
	srv := tiertest.StartS3(t)
	bucket := srv.NewBucket(t)
	proxy := faulttest.Start(t, srv.Endpoint)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data, cold := t.TempDir(), t.TempDir()
	files := randomFiles(t, hot, 16, map[string]int{"f.bin": 3<<20 + 7})
	p := filepath.Join(hot, "f.bin")
	want := files[p]
	noTLS := false
	// Uploads hang (HEAD, the existence check, answers: the daemon's
	// status probe is a HEAD too).
	proxy.Set(faulttest.Rule{Method: "PUT", Path: ".zst", Fault: faulttest.Hang})
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{
			{Name: "hdd", Kind: "directory", Path: cold},
			{Name: "s3", Kind: "s3", Endpoint: proxy.Addr, Bucket: bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, TLS: &noTLS,
				Timeout: duration(2 * time.Second)},
		},
		Release: ReleaseConfig{Copies: 2}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--json", "--data", data, hot)
	waitFor(t, 30*time.Second, func() error {
		if n := proxy.Hits(faulttest.Hang); n < 2 { // the first try timed out, the retry hangs too
			return fmt.Errorf("%d hung requests", n)
		}
		return nil
	})
	if info, err := stub.ReadPath(p); err == nil && info.State == stub.Released {
		t.Fatal("released while the S3 upload hung")
	}
	proxy.Clear()
	f := waitReleasedOnBoth(t, d, p, 60*time.Second)

	// The cheap copy damaged, S3 hung: the reader gets EIO, in bounded time.
	flipObjectByte(t, cold, f.ObjectID)
	proxy.Set(faulttest.Rule{Method: "GET", Path: ".zst", Fault: faulttest.Hang})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	got, err := exec.CommandContext(ctx, "cat", p).Output()
	took := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("cat through a hung tier still blocked after %s", took.Round(time.Second))
	}
	if err == nil || len(got) > 0 && !bytes.Equal(got, want[:min(len(got), len(want))]) {
		t.Fatalf("cat through a hung tier: %v, %d bytes; want EIO and no wrong bytes", err, len(got))
	}
	t.Logf("cat through a hung tier: %v after %s, %d good bytes", err, took.Round(time.Millisecond), len(got))
	proxy.Clear()
	got, err = exec.Command("cat", p).Output()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("cat once S3 answers: %v: %s", err, firstDiff(got, want))
	}
}

// waitReleasedOnBoth waits until p is released and checks that it has a
// good copy on both tiers of these tests, "hdd" and "s3".
func waitReleasedOnBoth(t *testing.T, d *daemon, p string, within time.Duration) catalog.File {
	t.Helper()
	waitFor(t, within, func() error {
		if f, err := d.cat.FileByPath(p); err != nil || f.State != catalog.StateReleased {
			return fmt.Errorf("not released yet (%v, %s)", err, f.State)
		}
		return nil
	})
	f, _ := d.cat.FileByPath(p)
	if !goodCopyOn(d.cat, f.ObjectID, "s3") || !goodCopyOn(d.cat, f.ObjectID, "hdd") {
		t.Fatal("released without both copies")
	}
	return f
}
