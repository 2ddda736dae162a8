package recall_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/object/objecttest"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

const testFrame = 64 << 10

// testObject is a packed object and its original content.
type testObject struct {
	data     []byte
	m        object.Manifest
	packed   []byte
	manifest []byte // JSON
}

func (o *testObject) id() string { return o.m.ObjectID }

func (o *testObject) stub() stub.Info {
	return stub.Info{FileID: "0123456789abcdef0123456789abcdef", ObjectID: o.m.ObjectID, State: stub.Released, Size: o.m.Size}
}

// pack packs data with frames of frameSize bytes.
func pack(t testing.TB, data []byte, frameSize int) *testObject {
	t.Helper()
	var buf bytes.Buffer
	m, err := object.Pack(context.Background(), bytes.NewReader(data), &buf, object.Options{FrameSize: frameSize, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	js, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return &testObject{data: data, m: m, packed: buf.Bytes(), manifest: js}
}

// mixedObject is size bytes alternating random and text chunks (so some
// frames are stored raw and some compressed), packed in 64 KiB frames.
func mixedObject(t testing.TB, size int, seed uint64) *testObject {
	t.Helper()
	data, err := io.ReadAll(objecttest.Reader(int64(size), 100_000, seed))
	if err != nil {
		t.Fatal(err)
	}
	return pack(t, data, testFrame)
}

func (o *testObject) put(t testing.TB, tgt tier.Target) {
	t.Helper()
	_, err := tgt.Put(context.Background(), tier.Object{
		ID: o.m.ObjectID, PackedSize: o.m.PackedSize, PackedSum: o.m.PackedSum, Manifest: o.manifest,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(o.packed)), nil },
	})
	if err != nil {
		t.Fatalf("put %s on %s: %v", o.id(), tgt.Name(), err)
	}
}

func openDir(t testing.TB, name string) *dir.Target {
	t.Helper()
	tgt, err := dir.Open(dir.Config{Name: name, Root: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

func openS3(t testing.TB, name string, srv *tiertest.S3Server) *s3.Target {
	t.Helper()
	tgt, err := s3.Open(s3.Config{
		Name: name, Endpoint: srv.Endpoint, Bucket: srv.NewBucket(t),
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, NoTLS: true, MaxRetries: 1,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// s3Path is where versitygw's posix backend keeps an object's packed bytes.
func s3Path(srv *tiertest.S3Server, tgt *s3.Target, id string) string {
	return filepath.Join(srv.Dir, tgt.Bucket(), filepath.FromSlash(tgt.Key(id)))
}

func dirPath(tgt *dir.Target, id string) string {
	return filepath.Join(tgt.Root(), filepath.FromSlash(tier.ObjectKey(id)))
}

// flipByte flips one byte of a file in place (keeping its inode and xattrs)
// at off, and returns off.
func flipByte(t testing.TB, path string, off int64) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	return off
}

// corruptFrame flips a byte in the middle of frame i of a stored copy.
func corruptFrame(t testing.TB, path string, m object.Manifest, i int) {
	t.Helper()
	f := m.Frames[i]
	flipByte(t, path, f.PackedOffset+f.PackedSize/2)
}

// failure is one OnFailure call.
type failure struct {
	id, tier string
	err      error
}

// failures records OnFailure calls.
type failures struct {
	mu   sync.Mutex
	list []failure
}

func (f *failures) record(id, tier string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = append(f.list, failure{id, tier, err})
}

func (f *failures) get() []failure {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]failure(nil), f.list...)
}

func (f *failures) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = nil
}

// copyList is a catalog that lists the same good copies for every object.
type copyList []recall.Copy

func (l copyList) Copies(string) ([]catalog.Copy, error) {
	out := make([]catalog.Copy, len(l))
	for i, c := range l {
		out[i] = catalog.Copy{Tier: c.Tier, State: catalog.CopyGood}
	}
	return out, nil
}

func (l copyList) costs() map[string]int {
	m := map[string]int{}
	for _, c := range l {
		m[c.Tier] = c.Cost
	}
	return m
}

// catalogFunc is a catalog whose Copies is a func.
type catalogFunc func(string) ([]catalog.Copy, error)

func (f catalogFunc) Copies(id string) ([]catalog.Copy, error) { return f(id) }

// newReader returns a Reader over targets; every object has a copy on each
// target, with the cost given.
func newReader(t testing.TB, fails *failures, backoff time.Duration, copies []recall.Copy, targets ...tier.Target) *recall.Reader {
	t.Helper()
	m := make(map[string]tier.Target)
	for _, tgt := range targets {
		m[tgt.Name()] = tgt
	}
	cfg := recall.Config{
		Targets:        m,
		Catalog:        copyList(copies),
		Costs:          copyList(copies).costs(),
		FailureBackoff: backoff,
	}
	if fails != nil {
		cfg.OnFailure = fails.record
	}
	r, err := recall.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// startVersitygw starts a versitygw that the test can stop, and returns the
// server and a func that kills it (and waits for it to exit).
func startVersitygw(t testing.TB) (*tiertest.S3Server, func()) {
	t.Helper()
	bin := tiertest.LookGoTool(t, "versitygw", "github.com/versity/versitygw/cmd/versitygw@v1.8.0")
	srv := &tiertest.S3Server{Dir: t.TempDir(), AccessKey: "recall-test", SecretKey: "recall-test-secret"}
	srv.Endpoint = fmt.Sprintf("127.0.0.1:%d", tiertest.FreePort(t))
	cmd := exec.Command(bin, "--port", srv.Endpoint, "--quiet", "posix", srv.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+srv.AccessKey, "ROOT_SECRET_KEY="+srv.SecretKey)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", srv.Endpoint, time.Second)
		if err == nil {
			c.Close()
			return srv, stop
		}
		select {
		case <-exited:
			t.Fatalf("versitygw exited before listening: %s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw does not listen on %s after 30 s: %s", srv.Endpoint, out.String())
		}
	}
}

func errOf(f []failure) []error {
	var errs []error
	for _, x := range f {
		errs = append(errs, x.err)
	}
	return errs
}
