//go:build linux

package interceptor_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

const frameSize = 4 << 20

// testSource serves the original content of each stub from a copy kept
// outside the stubbed filesystem, checking every 4 MiB frame against the
// SHA-256 recorded when the stub was made.
type testSource struct {
	dir string

	mu      sync.Mutex
	objects map[string]*object // by object id

	fail   atomic.Bool   // every read fails, like an unreachable tier
	gate   chan struct{} // when non-nil, reads outside allow wait for it to close
	allow  func(off int64) bool
	onGate func() // called when a read starts waiting at the gate

	calls atomic.Int64
	bytes atomic.Int64
}

type object struct {
	path   string
	frames [][32]byte
	bytes  atomic.Int64 // bytes served for this object
}

func newTestSource(t *testing.T) *testSource {
	return &testSource{dir: t.TempDir(), objects: map[string]*object{}}
}

var errTierDown = errors.New("test tier unavailable")

func (s *testSource) ReadVerified(ctx context.Context, st stub.Info, p []byte, off int64) (string, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return "", errTierDown
	}
	s.mu.Lock()
	o := s.objects[st.ObjectID]
	gate, allow, onGate := s.gate, s.allow, s.onGate
	s.mu.Unlock()
	if o == nil {
		return "", fmt.Errorf("object %s not found", st.ObjectID)
	}
	if gate != nil && (allow == nil || !allow(off)) {
		if onGate != nil {
			onGate()
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	f, err := os.Open(o.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	end := off + int64(len(p))
	for fr := off / frameSize; fr*frameSize < end; fr++ {
		buf := make([]byte, frameSize)
		n, err := f.ReadAt(buf, fr*frameSize)
		if err != nil && err != io.EOF {
			return "", err
		}
		buf = buf[:n]
		if sha256.Sum256(buf) != o.frames[fr] {
			return "", fmt.Errorf("frame %d of %s: hash mismatch", fr, st.ObjectID)
		}
		lo, hi := max(off, fr*frameSize), min(end, fr*frameSize+int64(n))
		if hi-lo <= 0 {
			return "", fmt.Errorf("frame %d of %s: short object", fr, st.ObjectID)
		}
		copy(p[lo-off:hi-off], buf[lo-fr*frameSize:hi-fr*frameSize])
	}
	s.bytes.Add(int64(len(p)))
	o.bytes.Add(int64(len(p)))
	return "test", nil
}

func (s *testSource) objectBytes(id string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.objects[id].bytes.Load()
}

// content returns n deterministic pseudo-random bytes.
func content(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7}))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// makeStub writes data at path, keeps a copy for the source, writes the
// stub xattrs and releases the file through the interceptor (mark, then
// punch). It returns the object id.
func makeStub(t *testing.T, it *interceptor.Interceptor, src *testSource, path string, data []byte, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	sum := blake3.Sum256(data) // an object id is the BLAKE3 of the content: the recall proves it
	id := hex.EncodeToString(sum[:])
	o := &object{path: filepath.Join(src.dir, id)}
	if err := os.WriteFile(o.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += frameSize {
		o.frames = append(o.frames, sha256.Sum256(data[off:min(off+frameSize, len(data))]))
	}
	src.mu.Lock()
	src.objects[id] = o
	src.mu.Unlock()

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	err = stub.Write(int(f.Fd()), stub.Info{FileID: testFileID(filepath.Base(path)), ObjectID: id,
		State: stub.Released, Size: int64(len(data)), MtimeNS: fi.ModTime().UnixNano()})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := it.Release(path); err != nil {
		t.Fatal(err)
	}
	// As the releaser does: the punch moved mtime; a stub keeps its
	// times (the path is not opened: no event).
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	// Release itself checks that no data is left (SEEK_DATA); opening
	// the stub here would raise an event in open-perm mode.
	return id
}

// completions collects OnComplete and OnFail calls.
type completions struct {
	mu    sync.Mutex
	done  map[string]interceptor.Completion // by path
	fails []interceptor.Failure
}

func (c *completions) complete(x interceptor.Completion) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done[x.Path] = x
}

func (c *completions) fail(f interceptor.Failure) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fails = append(c.fails, f)
}

func (c *completions) get(path string) (interceptor.Completion, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	x, ok := c.done[path]
	return x, ok
}

func (c *completions) failures() []interceptor.Failure {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]interceptor.Failure(nil), c.fails...)
}

// waitComplete polls until path's recall completed.
func (c *completions) waitComplete(t *testing.T, path string) interceptor.Completion {
	t.Helper()
	var x interceptor.Completion
	checkFor(t, 30*time.Second, func() error {
		var ok bool
		if x, ok = c.get(path); !ok {
			return fmt.Errorf("recall of %s not completed", path)
		}
		return nil
	})
	return x
}

// env is one interceptor on one loop-mounted filesystem.
type env struct {
	mnt  string
	it   *interceptor.Interceptor
	src  *testSource
	comp *completions
}

func newEnv(t *testing.T, fs string, mode interceptor.Mode, tweak func(*interceptor.Config)) *env {
	t.Helper()
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, fs, 512<<20)
	e := &env{mnt: mnt, src: newTestSource(t), comp: &completions{done: map[string]interceptor.Completion{}}}
	cfg := interceptor.NewConfig()
	cfg.Mode = mode
	cfg.StopTimeout = 2 * time.Second
	cfg.WholeFileBelow = 1 << 20 // stubs under 1 MiB are recalled whole at open
	cfg.OnComplete = e.comp.complete
	cfg.OnFail = e.comp.fail
	if tweak != nil {
		tweak(&cfg)
	}
	it, err := interceptor.Open(cfg, e.src, slog.New(slog.NewTextHandler(logOut(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if it.Mode() != mode {
		t.Fatalf("mode %s, want %s", it.Mode(), mode)
	}
	e.it = it
	t.Cleanup(func() {
		if err := it.Close(); err != nil {
			t.Errorf("close interceptor: %v", err)
		}
	})
	return e
}

// run runs a real program with a deadline and returns its stdout.
func run(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

func mustRun(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %d bytes, want %d; first difference at byte %d", what, len(got), len(want), i)
	}
}

// checkFor polls fn until it returns nil or the deadline passes.
func checkFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for an outcome
	}
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// buildHelper builds testdata/helper once per test binary.
func buildHelper(t *testing.T) string {
	t.Helper()
	goTool := stratatest.NeedTool(t, "go")
	helperOnce.Do(func() {
		dir, err := os.MkdirTemp("", "interceptor-helper-")
		if err != nil {
			helperErr = err
			return
		}
		helperPath = filepath.Join(dir, "helper")
		out, err := exec.Command(goTool, "build", "-o", helperPath, "./testdata/helper").CombinedOutput()
		if err != nil {
			helperErr = fmt.Errorf("go build helper: %w: %s", err, out)
		}
	})
	if helperErr != nil {
		t.Fatal(helperErr)
	}
	return helperPath
}

func TestMain(m *testing.M) {
	// Roles of this binary when a test re-executes it (crash_test.go).
	if len(os.Args) > 1 && os.Args[1] == interceptor.DefaultHolderSubcommand {
		os.Exit(holderRole(os.Args[2:]))
	}
	if os.Getenv(roleEnv) == "daemon" {
		os.Exit(daemonRole())
	}
	code := m.Run()
	if helperPath != "" {
		os.RemoveAll(filepath.Dir(helperPath))
	}
	os.Exit(code)
}

func logOut() io.Writer {
	if os.Getenv("INTERCEPTOR_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}

// testFileID is a well-formed file id (32 hex digits) named after name.
func testFileID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:16])
}
