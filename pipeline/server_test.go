package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   pipeline.Config
		field string
	}{
		{"no data dir", pipeline.Config{}, "DataDir"},
		{"relative data dir", pipeline.Config{DataDir: "data"}, "DataDir"},
		{"bad host", pipeline.Config{DataDir: "/d", Host: "a.b"}, "Host"},
		{"bad listen host", pipeline.Config{DataDir: "/d", ListenHost: "nowhere"}, "ListenHost"},
		{"bad port", pipeline.Config{DataDir: "/d", Port: 70000}, "Port"},
		{"tiny dedup", pipeline.Config{DataDir: "/d", DedupWindow: time.Millisecond}, "DedupWindow"},
		{"bad durable", pipeline.Config{DataDir: "/d", Durables: []string{"a>"}}, "Durables"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.EnsureDefaults()
			err := tc.cfg.Validate()
			var cve *pipeline.ConfigValidationError
			if !errors.As(err, &cve) || cve.Field != tc.field {
				t.Fatalf("Validate: %v, want a ConfigValidationError on %s", err, tc.field)
			}
		})
	}
	cfg := pipeline.Config{DataDir: "/d"}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 4250 || cfg.ListenHost != "127.0.0.1" || cfg.DedupWindow != 10*time.Minute || cfg.Host == "" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

// TestOpenWhileClientChecks: a client checking whether a daemon runs holds
// a shared lock on strata.lock for a moment; a daemon starting just then
// waits for it instead of reporting another daemon.
func TestOpenWhileClientChecks(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, pipeline.LockFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { unix.Flock(int(f.Fd()), unix.LOCK_UN) })
	s := pipelinetest.RunServer(t, pipelinetest.WithDataDir(dir))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenSecondDaemonRefused(t *testing.T) {
	s := pipelinetest.RunServer(t)
	_, err := pipeline.Open(testCtx(t), pipeline.Config{DataDir: s.DataDir(), Port: pipeline.NoListener}, testLogger(t))
	if err == nil {
		t.Fatal("second daemon on the same data directory started")
	}
	if !strings.Contains(err.Error(), "another strata daemon (pid "+fmt.Sprint(os.Getpid())+")") || !strings.Contains(err.Error(), s.DataDir()) {
		t.Fatalf("error %q does not name the pid and data directory", err)
	}
	// After Close the directory is free again, and the stream kept its events.
	publishN(t, testCtx(t), s.JetStream(), 0, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	s2 := pipelinetest.RunServer(t, pipelinetest.WithDataDir(s.DataDir()))
	if seq, err := pipeline.LastSeq(testCtx(t), s2.JetStream()); err != nil || seq != 2 {
		t.Fatalf("after restart: last seq %d, %v; want 2", seq, err)
	}
	var nilServer *pipeline.Server
	if err := nilServer.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = pipeline.Open(testCtx(t), pipeline.Config{DataDir: t.TempDir(), Port: port}, testLogger(t))
	want := fmt.Sprintf("port %d on 127.0.0.1 is in use", port)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--port") {
		t.Fatalf("Open on a busy port: %v, want %q … --port", err, want)
	}
}

func TestOpenDataDirNotWritable(t *testing.T) {
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		// root ignores permission bits: make the directory a read-only
		// bind mount instead.
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind mount: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount read-only: %v", err)
		}
	} else {
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
	}
	_, err := pipeline.Open(testCtx(t), pipeline.Config{DataDir: dir, Port: pipeline.NoListener}, testLogger(t))
	want := "data directory " + dir + " is not writable"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open: %v, want %q", err, want)
	}
	_, err = pipeline.Open(testCtx(t), pipeline.Config{DataDir: filepath.Join(dir, "sub"), Port: pipeline.NoListener}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "is not writable") {
		t.Fatalf("Open of a subdirectory that cannot be created: %v", err)
	}
}

func TestCredentialsFile(t *testing.T) {
	s := pipelinetest.RunServer(t, pipelinetest.WithTCP())
	p := filepath.Join(s.DataDir(), pipeline.CredentialsFile)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials mode %v, want 0600", fi.Mode().Perm())
	}
	c1, err := pipeline.LoadCredentials(s.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	if c1.URL != s.ClientURL() || !strings.HasPrefix(c1.URL, "nats://127.0.0.1:") || c1.CLI.Password == c1.Reader.Password {
		t.Fatalf("credentials %+v (server url %q)", c1, s.ClientURL())
	}
	dir := s.DataDir()
	s.Close()
	s2 := pipelinetest.RunServer(t, pipelinetest.WithDataDir(dir), pipelinetest.WithTCP())
	c2, err := pipeline.LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c2.CLI != c1.CLI || c2.Reader != c1.Reader || c2.URL != s2.ClientURL() {
		t.Fatalf("restart changed the passwords or kept a stale URL: %+v → %+v", c1, c2)
	}
	// The daemon's own user exists only in-process.
	if _, err := nats.Connect(s2.ClientURL(), nats.UserInfo(pipeline.DaemonUser, "guess")); err == nil {
		t.Fatal("daemon user accepted over TCP")
	}
	// A corrupt file is a clear error.
	s2.Close()
	if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Open(testCtx(t), pipeline.Config{DataDir: dir, Port: pipeline.NoListener}, testLogger(t)); err == nil || !strings.Contains(err.Error(), "is corrupt") {
		t.Fatalf("Open with a corrupt credentials file: %v", err)
	}
}

func TestDialNoDaemon(t *testing.T) {
	dir := t.TempDir()
	_, err := pipeline.Dial(testCtx(t), dir)
	want := "no strata daemon is running on data directory " + dir + " (start it with: strata run --data " + dir + ")"
	if !errors.Is(err, pipeline.ErrNoDaemon) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Dial: %v, want %q", err, want)
	}
	// A stopped daemon leaves its files behind: still "no daemon".
	s := pipelinetest.RunServer(t, pipelinetest.WithTCP())
	s.Close()
	if _, err := pipeline.Dial(testCtx(t), s.DataDir()); !errors.Is(err, pipeline.ErrNoDaemon) {
		t.Fatalf("Dial after Close: %v, want ErrNoDaemon", err)
	}
}

// permissionError waits for the server's asynchronous answer to a refused
// publish or subscribe on nc.
func permissionError(t *testing.T, nc *nats.Conn, subject string) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		err := nc.LastError()
		if err != nil && strings.Contains(strings.ToLower(err.Error()), "permissions violation") && strings.Contains(err.Error(), subject) {
			return nil
		}
		return fmt.Errorf("last error %v, want a permissions violation for %s", err, subject)
	})
}

func TestReaderIsReadOnly(t *testing.T) {
	s := pipelinetest.RunServer(t, pipelinetest.WithTCP(), pipelinetest.WithConfig(func(c *pipeline.Config) {
		c.Durables = []string{"compressor"}
	}))
	ctx := testCtx(t)
	publishN(t, ctx, s.JetStream(), 0, 5)

	nc, err := pipeline.DialReader(ctx, s.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	// Replay through an ordered consumer works.
	var got []uint64
	err = pipeline.Follow(ctx, js, 0, func(batch []events.Envelope) error {
		for _, env := range batch {
			got = append(got, env.Seq)
		}
		if got[len(got)-1] == 5 {
			return pipeline.ErrStop
		}
		return nil
	})
	if err != nil || len(got) != 5 {
		t.Fatalf("reader Follow: %v, got seqs %v", err, got)
	}

	// A plain subscription sees new events.
	sub, err := nc.SubscribeSync(events.AllEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	publishN(t, ctx, s.JetStream(), 5, 1)
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil || m.Subject != events.Subject("test", events.KindFileDeleted) {
		t.Fatalf("reader subscription: %v %v", m, err)
	}

	// Publishing an event is refused and stores nothing.
	subject := events.Subject("test", events.KindFileDeleted)
	if err := nc.Publish(subject, mustEncode(t, fileDeleted(t, 99))); err != nil {
		t.Fatal(err)
	}
	permissionError(t, nc, subject)
	if seq, err := pipeline.LastSeq(ctx, s.JetStream()); err != nil || seq != 6 {
		t.Fatalf("last seq %d (%v) after a refused publish, want 6", seq, err)
	}

	// Deleting or purging the stream, or taking over a durable, is refused.
	for _, op := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"delete stream", func(ctx context.Context) error { return js.DeleteStream(ctx, pipeline.StreamEvents) }},
		{"purge stream", func(ctx context.Context) error {
			st, err := js.Stream(ctx, pipeline.StreamEvents)
			if err != nil {
				return err
			}
			return st.Purge(ctx)
		}},
		{"overwrite durable", func(ctx context.Context) error {
			_, err := js.CreateOrUpdateConsumer(ctx, pipeline.StreamEvents, jetstream.ConsumerConfig{Durable: "compressor", AckPolicy: jetstream.AckNonePolicy})
			return err
		}},
	} {
		octx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := op.do(octx)
		cancel()
		if err == nil {
			t.Errorf("reader could %s", op.name)
		}
	}
	st, err := pipeline.StreamStatus(ctx, s.JetStream())
	if err != nil || st.Events != 6 {
		t.Fatalf("stream after the refused operations: %+v, %v", st, err)
	}
	for _, c := range st.Consumers {
		if c.Name == "compressor" {
			t.Fatalf("reader created durable %q", c.Name)
		}
	}
}

func TestCLIUser(t *testing.T) {
	s := pipelinetest.RunServer(t, pipelinetest.WithTCP())
	ctx := testCtx(t)
	publishN(t, ctx, s.JetStream(), 0, 3)

	// The daemon answers control requests on its in-process connection.
	dnc, err := s.Connect("control")
	if err != nil {
		t.Fatal(err)
	}
	defer dnc.Close()
	if _, err := dnc.Subscribe(events.ControlSubject("test", "status"), func(m *nats.Msg) { m.Respond([]byte("ok")) }); err != nil {
		t.Fatal(err)
	}
	if err := dnc.Flush(); err != nil {
		t.Fatal(err)
	}

	nc, err := pipeline.Dial(ctx, s.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reply, err := nc.Request(events.ControlSubject("test", "status"), nil, 5*time.Second)
	if err != nil || string(reply.Data) != "ok" {
		t.Fatalf("cli request: %v %v", reply, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := pipeline.StreamStatus(ctx, js); err != nil || st.LastSeq != 3 {
		t.Fatalf("cli status: %+v %v", st, err)
	}
	subject := events.Subject("test", events.KindFileDeleted)
	if err := nc.Publish(subject, mustEncode(t, fileDeleted(t, 99))); err != nil {
		t.Fatal(err)
	}
	permissionError(t, nc, subject)
}

func TestOpenCreatesDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "strata")
	s := pipelinetest.RunServer(t, pipelinetest.WithDataDir(dir))
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data directory: %v, %v; want mode 0700", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, pipeline.JetStreamDir)); err != nil {
		t.Fatalf("jetstream store: %v", err)
	}
	if s.ClientURL() != "" {
		t.Fatalf("server without listener has URL %q", s.ClientURL())
	}
	if _, err := pipeline.Dial(testCtx(t), dir); err == nil || !strings.Contains(err.Error(), "has no TCP listener") {
		t.Fatalf("Dial of a daemon without listener: %v", err)
	}
}
