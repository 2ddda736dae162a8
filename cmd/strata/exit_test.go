package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// exitScript is the restore that must work without Strata.
const exitScript = "../../docs/restore-without-strata.sh"

// exitFile is a file of the hot tree as it was before it was archived.
type exitFile struct {
	data     []byte
	mode     os.FileMode
	uid, gid int
	mtime    time.Time
}

// exitFiles writes a tree with awkward names (spaces, non-ASCII, a leading
// dash, a backslash, a newline and a tab), another owner, several frames, identical contents, and chosen modes and
// nanosecond mtimes, and returns it by path.
func exitFiles(t *testing.T, dir string) map[string]exitFile {
	t.Helper()
	random, text := contentGen(16, 6)
	small := text(3000)
	files := map[string]exitFile{
		"big.bin":                 {data: random(6<<20 + 333), mode: 0o640},
		"logs/app log 1.txt":      {data: text(2<<20 + 1), mode: 0o644},
		"logs/ünïcødé ✓.txt":      {data: text(40 << 10), mode: 0o600},
		"-leading-dash":           {data: random(4096), mode: 0o755},
		"deep/a/b/c/small.txt":    {data: small, mode: 0o444},
		"deep/a/b/c/same as it":   {data: small, mode: 0o644}, // one object for two files
		"deep/one frame.bin":      {data: random(4 << 20), mode: 0o644},
		"deep/tiny":               {data: []byte("x"), mode: 0o600},
		"deep/a/b/with\\back.txt": {data: text(100), mode: 0o644},
		"deep/new\nline\ttab.txt": {data: text(5000), mode: 0o640, uid: 1234, gid: 5678},
	}
	out := map[string]exitFile{}
	base := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	i := 0
	for name, f := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
		f.mtime = base.Add(time.Duration(i)*time.Hour + time.Duration(123456789+i))
		if err := os.Chtimes(p, f.mtime, f.mtime); err != nil {
			t.Fatal(err)
		}
		out[p] = f
		i++
	}
	return out
}

// TestRestoreWithoutStrata is the easy-exit promise, end to end: a real
// daemon archives a tree to a directory tier, an S3 tier (versitygw), an
// rclone tier (rclone serve webdav) and an emulated tape library, releases every file (the hot tree keeps only
// stubs) and exports its catalog; then the daemon is stopped and
// docs/restore-without-strata.sh — duckdb, zstd, b3sum, tar, rclone, dd, no
// Strata code — restores every file from each tier alone (the directory
// tier moved out of reach for the other two), with its bytes, mode and
// mtime. A corrupt copy is caught by its BLAKE3 and the next source used;
// with no good source the file is named FAILED and the script fails.
func TestRestoreWithoutStrata(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, tool := range []string{"bash", "duckdb", "zstd", "b3sum", "tar", "rclone", "dd", "od", "awk"} {
		stratatest.NeedTool(t, tool)
	}
	srv := tiertest.StartS3(t)
	bucket := srv.NewBucket(t)
	dav := tiertest.StartRclone(t, "webdav")
	davEnv := map[string]string{}
	for _, kv := range dav.Env {
		k, v, _ := strings.Cut(kv, "=")
		davEnv[k] = v
	}
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	data, cold, lib, out := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	if o, e, code := cli(t, "tape", "label", "emulator:"+lib, "--volume", "T00001", "--pool", "main", "--capacity", "1GB"); code != 0 {
		t.Fatalf("tape label: %s %s", o, e)
	}
	files := exitFiles(t, hot)
	noTLS := false
	d, stop := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{
			{Name: "hdd", Kind: "directory", Path: cold},
			{Name: "s3", Kind: "s3", Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "strata/", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, TLS: &noTLS},
			{Name: "lto", Kind: "tape", Device: "emulator:" + lib, Pool: "main", BundleAge: duration(time.Second)},
			{Name: "dav", Kind: "rclone", Remote: dav.Remote + ":strata", Env: davEnv},
		},
		Release: ReleaseConfig{Copies: 4}})
	// The files are older than policy.min_age: the daemon's first scan may
	// take some before strata archive does (which then does not select
	// them again), so wait for every file, not for archive's count.
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "3m", "--json", "--data", data, hot)
	waitFor(t, 2*time.Minute, func() error {
		for p := range files {
			if err := wantState(d, p, catalog.StateReleased); err != nil {
				return fmt.Errorf("%w (archive: %+v)", err, sum)
			}
		}
		return nil
	})
	for p := range files {
		if info, err := stub.ReadPath(p); err != nil || info.State != stub.Released {
			t.Fatalf("%s is not a stub after archive: %+v %v", p, info, err)
		}
	}
	exp := filepath.Join(out, "the export's dir") // a quote: SQL string literals in the script
	if o, e, code := cli(t, "export", "--parquet", exp, "--data", data); code != 0 {
		t.Fatalf("export: %s %s", o, e)
	}
	stop() // from here on, no Strata runs
	// Every S3 copy is recorded where it is (a copy the store stage found
	// already there was once recorded as "s3:objects/…").
	q, err := exec.Command("duckdb", "-noheader", "-list", "-c",
		"SELECT location FROM '"+strings.ReplaceAll(exp, "'", "''")+"/copies.parquet' WHERE tier = 's3'").Output()
	if err != nil {
		t.Fatalf("duckdb: %v", err)
	}
	if locs := strings.Fields(string(q)); len(locs) != len(files)-1 { // two files share one object
		t.Fatalf("%d S3 copies in the export, want %d:\n%s", len(locs), len(files)-1, q)
	} else {
		for _, l := range locs {
			if !strings.HasPrefix(l, "s3://"+bucket+"/strata/objects/") {
				t.Fatalf("S3 copy recorded at %q, want s3://%s/strata/objects/…", l, bucket)
			}
		}
	}

	restore := func(dest string, env []string, sources ...string) (string, error) {
		t.Helper()
		cmd := exec.Command("bash", append([]string{exitScript, exp, dest}, sources...)...)
		cmd.Env = append(os.Environ(), env...)
		o, err := cmd.CombinedOutput()
		return string(o), err
	}
	check := func(dest, how string, skip ...string) {
		t.Helper()
		n := 0
		for p, f := range files {
			if strings.Contains(strings.Join(skip, "\x00"), p) {
				continue
			}
			n++
			got := filepath.Join(dest, p)
			b, err := os.ReadFile(got)
			if err != nil {
				t.Fatalf("%s: %s not restored: %v", how, p, err)
			}
			if !bytes.Equal(b, f.data) {
				t.Fatalf("%s: %s: restored %d bytes differ from the original %d (%s)", how, p, len(b), len(f.data), firstDiff(b, f.data))
			}
			fi, err := os.Stat(got)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode().Perm() != f.mode || !fi.ModTime().Equal(f.mtime) || int(st.Uid) != f.uid || int(st.Gid) != f.gid {
				t.Fatalf("%s: %s: mode %v mtime %v owner %d:%d, want %v %v %d:%d", how, p, fi.Mode().Perm(), fi.ModTime(), st.Uid, st.Gid, f.mode, f.mtime, f.uid, f.gid)
			}
		}
		var found int
		filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				found++
				if !fi.Mode().IsRegular() || strings.HasSuffix(p, ".restore-tmp") {
					t.Errorf("%s: stray %s", how, p)
				}
			}
			return nil
		})
		if found != n {
			t.Fatalf("%s: %d files under %s, want %d", how, found, dest, n)
		}
	}

	// 1. From the directory tier.
	if o, err := restore(filepath.Join(out, "from-dir"), nil, "hdd=dir:"+cold); err != nil {
		t.Fatalf("restore from the directory tier: %v\n%s", err, o)
	}
	check(filepath.Join(out, "from-dir"), "from the directory tier")
	// With no source named: directory tiers where the export says.
	if o, err := restore(filepath.Join(out, "recorded"), nil); err != nil {
		t.Fatalf("restore from the recorded locations: %v\n%s", err, o)
	}
	check(filepath.Join(out, "recorded"), "from the recorded directory locations")

	// The directory tier out of reach: what follows cannot read it.
	away := cold + ".away"
	if err := os.Rename(cold, away); err != nil {
		t.Fatal(err)
	}

	// 2. From S3, through an rclone remote defined in the environment
	// (this machine's AWS_CA_BUNDLE breaks rclone's S3 backend: FIELDNOTES).
	rcloneEnv := []string{"AWS_CA_BUNDLE=", "RCLONE_CONFIG=/dev/null",
		"RCLONE_CONFIG_EXITS3_TYPE=s3", "RCLONE_CONFIG_EXITS3_PROVIDER=Other",
		"RCLONE_CONFIG_EXITS3_ENDPOINT=http://" + srv.Endpoint,
		"RCLONE_CONFIG_EXITS3_ACCESS_KEY_ID=" + srv.AccessKey, "RCLONE_CONFIG_EXITS3_SECRET_ACCESS_KEY=" + srv.SecretKey}
	os.Unsetenv("AWS_CA_BUNDLE")
	if o, err := restore(filepath.Join(out, "from-s3"), rcloneEnv, "s3=rclone:exits3:"); err != nil {
		f, _ := exec.Command("find", srv.Dir).CombinedOutput()
		q, _ := exec.Command("duckdb", "-c", "select object_id, tier, location from '"+strings.ReplaceAll(exp, "'", "''")+"/copies.parquet'").CombinedOutput()
		t.Fatalf("restore from S3: %v\n%s\n%s\n%s", err, o, f, q)
	}
	check(filepath.Join(out, "from-s3"), "from S3")

	// 3. From an rclone tier (a WebDAV remote, rclone serve webdav), with
	// the remote defined in the environment under the same name.
	if o, err := restore(filepath.Join(out, "from-rclone"), dav.Env, "dav=rclone:"+dav.Remote+":strata"); err != nil {
		t.Fatalf("restore from the rclone tier: %v\n%s", err, o)
	}
	check(filepath.Join(out, "from-rclone"), "from the rclone tier")

	// 4. From the emulated tape library, read as dd reads a drive.
	if o, err := restore(filepath.Join(out, "from-tape"), nil, "lto=tape-image:"+lib); err != nil {
		t.Fatalf("restore from tape: %v\n%s", err, o)
	} else if !strings.Contains(o, "reading tape file") {
		t.Fatalf("restore from tape did not read a tape file:\n%s", o)
	}
	check(filepath.Join(out, "from-tape"), "from tape")

	// 5. A corrupt copy on the directory tier: caught by BLAKE3, and the
	// file comes from the next source (tape).
	if err := os.Rename(away, cold); err != nil {
		t.Fatal(err)
	}
	var victim, victimPath string
	for p, f := range files {
		if len(f.data) > 1<<20 {
			victim, victimPath = objectPath(cold, blake3Hex(f.data)), p
			break
		}
	}
	zst, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	zst[len(zst)/2] ^= 0x01
	if err := os.WriteFile(victim, zst, 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := restore(filepath.Join(out, "fallback"), nil, "hdd=dir:"+cold, "lto=tape-image:"+lib)
	if err != nil || !strings.Contains(o, "corrupt copy") {
		t.Fatalf("restore with a corrupt directory copy and tape behind it: %v\n%s", err, o)
	}
	check(filepath.Join(out, "fallback"), "with a corrupt copy and a fallback")

	// 6. The corrupt copy and no other source: that file FAILED (named),
	// every other file restored, exit status 1.
	o, err = restore(filepath.Join(out, "no-fallback"), nil, "hdd=dir:"+cold)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(o, "FAILED "+victimPath) {
		t.Fatalf("restore with only a corrupt copy: %v\n%s", err, o)
	}
	check(filepath.Join(out, "no-fallback"), "with only a corrupt copy", victimPath)
}
