package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/scanner"
)

// The crash tests of the archive path are cells of the crash matrix
// (crashmatrix_test.go); this file holds what every crash test shares.

// crashFiles writes a small mix (text and random, 3 KiB to 9 MiB, one
// identical pair) and returns the contents by path.
func crashFiles(t *testing.T, dir string, seed uint64) map[string][]byte {
	t.Helper()
	random, text := contentGen(seed, 11)
	pair := random(64<<10 + 3)
	contents := map[string][]byte{
		"a.txt":          text(3<<10 + 17),
		"b.bin":          random(300 << 10),
		"d/c.txt":        text(2 << 20),
		"d/big.bin":      random(9<<20 + 4321), // three frames
		"e.bin":          pair,
		"d/e/e-copy.bin": pair,
	}
	out := map[string][]byte{}
	for name, b := range contents {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
		out[p] = b
	}
	return out
}

// strataProc is a `strata run` subprocess.
type strataProc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

// strataEnv is the environment of a subprocess with exactly the given
// failpoints armed.
func strataEnv(failpoints string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, failpoint.EnvVar+"=") {
			env = append(env, kv)
		}
	}
	if failpoints != "" {
		env = append(env, failpoint.EnvVar+"="+failpoints)
	}
	return env
}

// startStrata starts the daemon on a random port and waits until it
// answers, with extra arguments of `strata run` after the usual ones;
// t.Cleanup stops it (SIGTERM, then SIGKILL) and logs its output if the
// test failed.
func startStrata(t *testing.T, bin, data, hot, cold, failpoints string, extra ...string) *strataProc {
	t.Helper()
	return startStrataArgs(t, bin, data, failpoints, append([]string{"--hot", hot, "--cold", cold, "--host", "crash"}, extra...)...)
}

// startStrataArgs is startStrata with only the data directory, port and
// host given: the rest of the configuration comes from args (a --config).
func startStrataArgs(t *testing.T, bin, data, failpoints string, extra ...string) *strataProc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run", "--data", data, "--port", "-2", "--metrics", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = strataEnv(failpoints)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	p := &strataProc{cmd: cmd, logPath: logf.Name(), done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { stopHolderOf(t, data) }) // runs after the stop below
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of daemon %d (failpoints %q):\n%s", cmd.Process.Pid, failpoints, p.logs())
		}
	})
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-p.done
			t.Errorf("daemon did not stop on SIGTERM within 30s\n%s", p.logs())
		}
	})
	waitFor(t, 30*time.Second, func() error {
		select {
		case <-p.done:
			t.Fatalf("daemon exited while starting: %v\n%s", cmd.ProcessState, p.logs())
		default:
		}
		return request(context.Background(), data, "status", struct{}{}, nil, time.Second)
	})
	return p
}

// wait waits for the process to end and returns how it ended.
func (p *strataProc) wait(t *testing.T, d time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState
	case <-time.After(d):
		t.Fatalf("daemon still running after %s\n%s", d, p.logs())
		return nil
	}
}

func (p *strataProc) logs() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// stagesIdle returns nil when no stage has a message pending or in
// progress (a message held by a dead daemon counts until it is redelivered
// and acknowledged).
func stagesIdle(data string) error {
	var st statusReply
	if err := request(context.Background(), data, "status", struct{}{}, &st, 5*time.Second); err != nil {
		return err
	}
	for _, c := range st.Stream.Consumers {
		if c.Lag != 0 {
			return fmt.Errorf("stage %s: %d pending, %d in progress", c.Name, c.Pending, c.AckPending)
		}
	}
	if st.CatalogLag != 0 {
		return fmt.Errorf("catalog %d events behind", st.CatalogLag)
	}
	return nil
}

// notReleased lists the files of want that ls does not show as released.
func notReleased(ls scanner.LsReply, want map[string][]byte) []string {
	seen := map[string]string{}
	for _, f := range ls.Files {
		seen[f.Path] = f.State
	}
	var out []string
	for p := range want {
		if seen[p] != "released" {
			out = append(out, fmt.Sprintf("%s (%s)", p, seen[p]))
		}
	}
	return out
}

func blake3Hex(b []byte) string {
	s := blake3.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkTierCopy proves that the directory tier holds object oid, that the
// plain zstd CLI restores it to want, and that oid is want's BLAKE3.
func checkTierCopy(t *testing.T, cold, path, oid string, want []byte) {
	t.Helper()
	if got := blake3Hex(want); got != oid {
		t.Errorf("%s: released as object %s, but its original content hashes to %s", path, oid, got)
		return
	}
	if len(oid) != 64 {
		t.Errorf("%s: bad object id %q", path, oid)
		return
	}
	obj := filepath.Join(cold, "objects", oid[:2], oid+".zst")
	var stderr bytes.Buffer
	cmd := exec.Command("zstd", "-d", "-c", "-q", obj)
	cmd.Stderr = &stderr
	got, err := cmd.Output()
	if err != nil {
		t.Errorf("%s is released but its object %s cannot be restored with zstd: %v %s", path, obj, err, stderr.String())
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is released but zstd -d %s gives %d bytes that differ from the original %d", path, obj, len(got), len(want))
	}
	for _, ext := range []string{".json", ".b3"} {
		if _, err := os.Stat(strings.TrimSuffix(obj, ".zst") + ext); err != nil {
			t.Errorf("%s: object %s has no %s beside it: %v", path, oid, ext, err)
		}
	}
}

// checkTierClean fails if objects/** holds anything but .zst, .json and
// .b3 files (a temporary file left by an interrupted write).
func checkTierClean(t *testing.T, cold string) {
	t.Helper()
	if stray := strayFiles(t, cold); len(stray) > 0 {
		t.Errorf("tier holds stray files: %v", stray)
	}
}

// waitTierClean is checkTierClean while puts may still be retried: a put
// in flight has a temporary file; every failed one must remove its own.
func waitTierClean(t *testing.T, cold string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		if stray := strayFiles(t, cold); len(stray) > 0 {
			return fmt.Errorf("tier holds stray files: %v", stray)
		}
		return nil
	})
}

// strayFiles lists what under objects/ is not a .zst, .json or .b3 file.
func strayFiles(t *testing.T, cold string) []string {
	t.Helper()
	var stray []string
	err := filepath.WalkDir(filepath.Join(cold, "objects"), func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			return nil
		}
		name := de.Name()
		ok := !strings.HasPrefix(name, ".") &&
			(strings.HasSuffix(name, ".zst") || strings.HasSuffix(name, ".json") || strings.HasSuffix(name, ".b3"))
		if !ok || !de.Type().IsRegular() {
			stray = append(stray, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return stray
}
