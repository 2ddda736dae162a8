package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/cmd/internal/doctor"
	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// runDoctor runs strata doctor --json in-process and returns its report
// and exit code; the text output must agree with it.
func runDoctor(t *testing.T, args ...string) (doctor.Report, int) {
	t.Helper()
	out, errs, code := cli(t, append([]string{"doctor", "--json"}, args...)...)
	var r doctor.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("doctor --json: %v (exit %d)\n%s%s", err, code, out, errs)
	}
	if (code == 0) != (r.Problems == 0) || (code != 0 && code != exitFailure) {
		t.Fatalf("doctor: exit %d with %d problems\n%s%s", code, r.Problems, out, errs)
	}
	text, _, tcode := cli(t, append([]string{"doctor"}, args...)...)
	if tcode != code || !strings.Contains(text, fmt.Sprintf("%d problems", r.Problems)) {
		t.Fatalf("doctor (text): exit %d, want %d:\n%s", tcode, code, text)
	}
	for _, f := range r.Findings {
		if f.Status != doctor.OK && (f.Fix == "" || !strings.Contains(text, f.Fix)) {
			t.Errorf("finding %s %s is %s but says no fix in the text: %+v\n%s", f.Check, f.Subject, f.Status, f, text)
		}
	}
	return r, code
}

// finding returns the first finding of check whose subject contains
// subject, or fails.
func finding(t *testing.T, r doctor.Report, check, subject string) doctor.Finding {
	t.Helper()
	for _, f := range r.Findings {
		if f.Check == check && strings.Contains(f.Subject, subject) {
			return f
		}
	}
	t.Fatalf("no %q finding for %q in %+v", check, subject, r.Findings)
	return doctor.Finding{}
}

// TestDoctor runs strata doctor against a real daemon and breaks, one at
// a time, what breaks in practice: each must be a problem (exit 1) saying
// what to do, and the healthy host must pass (exit 0).
func TestDoctor(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	roTier := stratatest.LoopMount(t, "ext4", 32<<20)
	data := t.TempDir()
	cold := filepath.Join(data, "cold")
	yes := true
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "cold", Kind: events.TierDirectory, Path: cold}, {Name: "ro", Kind: events.TierDirectory, Path: roTier, RequireMount: &yes}}})

	// Healthy but for the read-only tier, which is still writable now.
	r, code := runDoctor(t, "--data", data)
	if code != 0 {
		t.Fatalf("doctor on a healthy host: exit %d: %+v", code, r.Findings)
	}
	for _, want := range [][2]string{{doctor.CheckDaemon, data}, {doctor.CheckHotTree, hot}, {doctor.CheckSpace, "hot tree " + hot},
		{doctor.CheckTier, "cold"}, {doctor.CheckTier, "ro"}, {doctor.CheckSpace, "data directory"}, {doctor.CheckCredentials, "credentials.json"},
		{doctor.CheckNATS, "127.0.0.1"}, {doctor.CheckHolder, data}, {doctor.CheckProbeGuard, ""}, {doctor.CheckClock, ""}} {
		if f := finding(t, r, want[0], want[1]); f.Status == doctor.Problem {
			t.Errorf("healthy host: %+v", f)
		}
	}
	if f := finding(t, r, doctor.CheckTier, "ro"); !strings.Contains(f.Detail, "wrote, read back and deleted") {
		t.Errorf("tier ro: %+v", f)
	}
	// The probe left nothing behind on the tiers.
	for _, root := range []string{cold, roTier} {
		if n := filesUnder(t, filepath.Join(root, "objects")); n != 0 {
			t.Errorf("doctor left %d files in %s", n, root)
		}
	}

	// A tier that answers but refuses writes.
	if out, err := exec.Command("mount", "-o", "remount,ro", roTier).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v %s", err, out)
	}
	r, code = runDoctor(t, "--data", data)
	if f := finding(t, r, doctor.CheckTier, "ro"); code != exitFailure || f.Status != doctor.Problem || !strings.Contains(f.Detail, "read-only") || !strings.Contains(f.Fix, "read-write") {
		t.Errorf("read-only tier: exit %d, %+v", code, f)
	}
	if out, err := exec.Command("mount", "-o", "remount,rw", roTier).CombinedOutput(); err != nil {
		t.Fatalf("remount rw: %v %s", err, out)
	}

	// A hot tree on a filesystem that cannot carry pre-content marks.
	tmpfs := t.TempDir()
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, unix.MNT_DETACH) })
	r, code = runDoctor(t, "--data", data, "--hot", tmpfs)
	if f := finding(t, r, doctor.CheckHotTree, tmpfs); code != exitFailure || f.Status != doctor.Problem || !strings.Contains(f.Detail, "NOT SUPPORTED") || !strings.Contains(f.Fix, "ext4, XFS or btrfs") {
		t.Errorf("hot tree on tmpfs: exit %d, %+v", code, f)
	}
	if f := finding(t, r, doctor.CheckHotTree, hot); f.Status != doctor.OK {
		t.Errorf("the ext4 hot tree beside it: %+v", f)
	}

	// Credentials others can read.
	creds := filepath.Join(data, "credentials.json")
	if err := os.Chmod(creds, 0o644); err != nil {
		t.Fatal(err)
	}
	r, code = runDoctor(t, "--data", data)
	if f := finding(t, r, doctor.CheckCredentials, creds); code != exitFailure || f.Status != doctor.Problem || f.Fix != "chmod 600 "+creds {
		t.Errorf("credentials 0644: exit %d, %+v", code, f)
	}
	if err := os.Chmod(creds, 0o600); err != nil {
		t.Fatal(err)
	}
	if r, code := runDoctor(t, "--data", data); code != 0 {
		t.Fatalf("doctor after the fixes: exit %d: %+v", code, r.Findings)
	}
}

// TestDoctorNoDaemon: with no daemon, doctor says so (exit 1), checks the
// configured tiers itself, and finds the NATS port taken by another
// program and a configuration that others can read although it holds a
// tier's secret.
func TestDoctorNoDaemon(t *testing.T) {
	stratatest.NeedRoot(t)
	data, cold := t.TempDir(), t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	cfgPath := filepath.Join(t.TempDir(), "strata.toml")
	cfgText := fmt.Sprintf(`data_dir = %q
[nats]
port = %d
[[tier]]
name = "hdd"
kind = "directory"
path = %q
require_mount = false
[[tier]]
name = "remote"
kind = "rclone"
remote = "dav:strata"
binary = "rclone-not-installed-here"
env = { RCLONE_CONFIG_DAV_TYPE = "webdav" }
`, data, port, cold)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfgPath, 0o644); err != nil { // the tests' umask is 077
		t.Fatal(err)
	}
	r, code := runDoctor(t, "--config", cfgPath)
	if code != exitFailure {
		t.Fatalf("doctor with no daemon: exit %d", code)
	}
	if f := finding(t, r, doctor.CheckDaemon, data); f.Status != doctor.Problem || !strings.Contains(f.Fix, "systemctl start strata") {
		t.Errorf("daemon: %+v", f)
	}
	if f := finding(t, r, doctor.CheckNATS, fmt.Sprint(port)); f.Status != doctor.Problem || !strings.Contains(f.Fix, "another program holds port") {
		t.Errorf("nats port taken: %+v", f)
	}
	if f := finding(t, r, doctor.CheckTier, "hdd"); f.Status != doctor.OK || !strings.Contains(f.Detail, "wrote, read back and deleted") {
		t.Errorf("directory tier checked by the CLI: %+v", f)
	}
	if f := finding(t, r, doctor.CheckTier, "remote"); f.Status != doctor.Problem || !strings.Contains(f.Fix, "install rclone") {
		t.Errorf("rclone missing: %+v", f)
	}
	if f := finding(t, r, doctor.CheckCredentials, cfgPath); f.Status != doctor.Problem || f.Fix != "chmod 600 "+cfgPath {
		t.Errorf("config with secrets, mode 0644: %+v", f)
	}
	if n := filesUnder(t, filepath.Join(cold, "objects")); n != 0 {
		t.Errorf("doctor left %d files in the tier", n)
	}

	// A configuration strata run would refuse is a problem naming the key.
	if err := os.WriteFile(cfgPath, []byte("[policy]\nage_by = \"ctime\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, _ = runDoctor(t, "--config", cfgPath)
	if f := finding(t, r, doctor.CheckConfig, cfgPath); f.Status != doctor.Problem || !strings.Contains(f.Detail, "age_by") {
		t.Errorf("bad config: %+v", f)
	}
}

// filesUnder counts the regular files below dir (0 if it does not exist).
func filesUnder(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, de fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if de.Type().IsRegular() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDoctorS3 runs doctor against a daemon with two S3 tiers on a real S3
// server (versitygw): one with the right credentials passes the write
// probe, one with a wrong secret key is a problem that says to check the
// credentials; so is a bucket that does not exist.
func TestDoctorS3(t *testing.T) {
	srv := tiertest.StartS3(t)
	no := false
	s3tier := func(name, bucket, secret string) TierConfig {
		return TierConfig{Name: name, Kind: events.TierS3, Endpoint: srv.Endpoint, Bucket: bucket,
			AccessKey: srv.AccessKey, SecretKey: secret, TLS: &no}
	}
	data := t.TempDir()
	testDaemon(t, Config{DataDir: data, Tiers: []TierConfig{
		s3tier("good", srv.NewBucket(t), srv.SecretKey),
		s3tier("badkey", srv.NewBucket(t), "not-the-secret"),
		s3tier("nobucket", "no-such-bucket", srv.SecretKey)}})
	r, code := runDoctor(t, "--data", data)
	if code != exitFailure {
		t.Fatalf("doctor: exit %d, want 1", code)
	}
	if f := finding(t, r, doctor.CheckTier, "good"); f.Status != doctor.OK || !strings.Contains(f.Detail, "wrote, read back and deleted") {
		t.Errorf("tier good: %+v", f)
	}
	for _, name := range []string{"badkey", "nobucket"} {
		f := finding(t, r, doctor.CheckTier, name)
		t.Logf("tier %s: %s → %s", name, f.Detail, f.Fix)
		if f.Status != doctor.Problem || !strings.Contains(f.Fix, "credentials") {
			t.Errorf("tier %s: %+v; want a problem saying to check the credentials", name, f)
		}
	}
}

// TestDoctorTape: with a daemon holding an (emulated) tape drive, doctor
// asks the tape tier without writing to it; with no daemon, a tape tier
// whose device is not there is a problem.
func TestDoctorTape(t *testing.T) {
	stratatest.NeedRoot(t)
	lib := t.TempDir()
	if out, errs, code := cli(t, "tape", "label", "emulator:"+lib, "--volume", "V1", "--pool", "p", "--capacity", "1GiB"); code != 0 {
		t.Fatalf("tape label: %d %s%s", code, out, errs)
	}
	data := t.TempDir()
	tapeDaemon(t, Config{DataDir: data}, lib)
	r, _ := runDoctor(t, "--data", data)
	if f := finding(t, r, doctor.CheckTier, "tape"); f.Status != doctor.OK || !strings.Contains(f.Detail, "tape tier answers") {
		t.Errorf("tape tier: %+v", f)
	}

	cfgPath := filepath.Join(t.TempDir(), "strata.toml")
	cfgText := fmt.Sprintf("data_dir = %q\n[[tier]]\nname = \"lto\"\nkind = \"tape\"\ndevice = \"/dev/nst7\"\npool = \"p\"\n", t.TempDir())
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	r, _ = runDoctor(t, "--config", cfgPath)
	if f := finding(t, r, doctor.CheckTier, "lto"); f.Status != doctor.Problem || !strings.Contains(f.Fix, "connect the drive") {
		t.Errorf("tape tier with no device: %+v", f)
	}
}
