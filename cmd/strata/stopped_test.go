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

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestStoppedDaemon: the real daemon, stopped as systemctl stop does
// (SIGTERM), then real programs against its stubs, on ext4 and XFS. A
// read waits through the grace and a restart gives it its bytes; past the
// grace, cat, sha256sum, cp and a write get EIO (exit status not 0) and
// nothing lands in the stub; `strata holder status` says so; a daemon
// with interceptor.holder = false refuses to start over a guarding
// holder; after a restart every stub reads right.
func TestStoppedDaemon(t *testing.T) {
	stratatest.NeedRoot(t)
	bin := buildStrata(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) { stoppedDaemon(t, bin, fstype) })
	}
}

func stoppedDaemon(t *testing.T, bin, fstype string) {
	hot := stratatest.LoopMount(t, fstype, 512<<20)
	data := t.TempDir()
	cold := filepath.Join(data, "cold")
	files := map[string][]byte{}
	for i, size := range []int{300 << 10, 80 << 20} { // below and above whole_file_below
		random, text := contentGen(uint64(400+i), 1)
		files[filepath.Join(hot, fmt.Sprintf("f%d.bin", i))] = append(random(size/2), text(size-size/2)...)
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(cfg, []byte("[interceptor]\nstopped_grace = \"3s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The first stop parks with a long grace: the restart within it must
	// not race a loaded machine; the restarted daemon parks with 3s.
	longGrace := filepath.Join(t.TempDir(), "long.toml")
	if err := os.WriteFile(longGrace, []byte("[interceptor]\nstopped_grace = \"60s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noHolder := filepath.Join(t.TempDir(), "noholder.toml")
	if err := os.WriteFile(noHolder, []byte("[interceptor]\nholder = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startStrata(t, bin, data, hot, cold, "", "--config", longGrace)
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	stop := func(p *strataProc) {
		t.Helper()
		p.cmd.Process.Signal(syscall.SIGTERM)
		if st := p.wait(t, 30*time.Second); !st.Success() {
			t.Fatalf("daemon stopped with %v\n%s", st, p.logs())
		}
	}
	big, small := filepath.Join(hot, "f1.bin"), filepath.Join(hot, "f0.bin")
	stop(d)

	// Within the grace a restart answers the waiting reader.
	rd := exec.Command("sha256sum", big)
	var out bytes.Buffer
	rd.Stdout = &out
	if err := rd.Start(); err != nil {
		t.Fatal(err)
	}
	rdDone := make(chan error, 1)
	go func() { rdDone <- rd.Wait() }()
	t.Cleanup(func() { rd.Process.Kill() })
	select {
	case err := <-rdDone:
		t.Fatalf("sha256sum of a stub with the daemon stopped ended at once (%v, %q): it should wait", err, out.String())
	case <-time.After(time.Second):
	}
	d = startStrata(t, bin, data, hot, cold, "", "--config", cfg)
	select {
	case err := <-rdDone:
		if want := sha256Hex(files[big]); err != nil || !strings.HasPrefix(out.String(), want) {
			t.Fatalf("sha256sum across a restart: %v %q, want %s", err, out.String(), want)
		}
	case <-time.After(time.Minute):
		t.Fatal("sha256sum still waiting a minute after the restart")
	}
	stop(d)

	// Past the grace: errors, never zeros, never a write into a stub.
	waitFor(t, 20*time.Second, func() error {
		o, _ := exec.Command(bin, "holder", "status", "--data", data).CombinedOutput()
		if !strings.Contains(string(o), "get EIO") {
			return fmt.Errorf("holder status: %s", o)
		}
		return nil
	})
	copyTo := filepath.Join(t.TempDir(), "copy")
	for _, argv := range [][]string{
		{"cat", small},
		{"sha256sum", small},
		{"cp", small, copyTo},
		{"dd", "if=/dev/zero", "of=" + small, "bs=4096", "count=1", "conv=notrunc,fsync", "status=none"},
	} {
		o, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err == nil || !strings.Contains(string(o), "Input/output error") {
			t.Errorf("%s with the daemon stopped: %v %q; want EIO", strings.Join(argv, " "), err, o)
		}
	}
	if b, err := os.ReadFile(copyTo); err == nil && len(b) > 0 {
		t.Errorf("cp left %d bytes in its copy of a stub it could not read", len(b))
	}

	// holder = false is refused while the holder guards the stubs.
	o, err := exec.Command(bin, "run", "--data", data, "--hot", hot, "--cold", cold, "--port", "-2", "--config", noHolder).CombinedOutput()
	if err == nil || !strings.Contains(string(o), "strata holder stop --unguard") {
		t.Errorf("run with holder = false over a guarding holder: %v\n%s", err, o)
	}
	// So is stopping the holder without --unguard.
	if o, err := exec.Command(bin, "holder", "stop", "--data", data).CombinedOutput(); err == nil || !strings.Contains(string(o), "--unguard") {
		t.Errorf("holder stop without --unguard: %v %s", err, o)
	}

	d = startStrata(t, bin, data, hot, cold, "", "--config", cfg)
	if o, err := exec.Command(bin, "holder", "stop", "--unguard", "--data", data).CombinedOutput(); err == nil || !strings.Contains(string(o), "stop the daemon first") {
		t.Errorf("holder stop while the daemon runs: %v %s", err, o)
	}
	for p, want := range files {
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("cat %s after the restart: %v, %d bytes (equal: %v)", p, err, len(got), bytes.Equal(got, want))
		}
	}
	stop(d)
	if st, err := interceptor.QueryHolder(holderSocket(data)); err != nil || st.State != "waiting" {
		t.Fatalf("holder after the last stop: %+v %v", st, err)
	}
}
