package pipeline_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"golang.org/x/sys/unix"
)

// killChildEnv, when set to a data directory, turns the test binary into
// the child of TestStageKilledBeforeAck.
const killChildEnv = "STRATA_PIPELINE_KILL_CHILD"

func TestMain(m *testing.M) {
	// Data directories are the owner's alone (the daemon's umask): the
	// t.TempDir()s the tests use as such are made 0700.
	unix.Umask(0o077)
	if dir := os.Getenv(killChildEnv); dir != "" {
		os.Exit(killChild(dir))
	}
	os.Exit(m.Run())
}

var killStage = pipeline.Stage{Name: "killable", AckWait: time.Second, Backoff: []time.Duration{10 * time.Millisecond}}

// effectHandler performs a durable, idempotent side effect keyed by event
// id: it creates dir/effects/<id> exclusively and logs every call to
// dir/attempts and every effect actually applied to dir/applied. With
// blockID set, it stops forever after the effect for that event, before
// returning (so before any ack), and says so in dir/ready.
func effectHandler(dir, blockID string) func(context.Context, events.Envelope, events.Event) error {
	return func(_ context.Context, env events.Envelope, _ events.Event) error {
		if err := appendLine(filepath.Join(dir, "attempts"), env.ID); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(dir, "effects", env.ID), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		switch {
		case errors.Is(err, fs.ErrExist):
			// Already done by an earlier delivery.
		case err != nil:
			return err
		default:
			if err := f.Sync(); err != nil {
				return err
			}
			f.Close()
			if err := appendLine(filepath.Join(dir, "applied"), env.ID); err != nil {
				return err
			}
		}
		if env.ID == blockID {
			if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644); err != nil {
				return err
			}
			select {} // killed here
		}
		return nil
	}
}

func appendLine(p, s string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(s + "\n"); err != nil {
		return err
	}
	return f.Sync()
}

func killChild(dir string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := context.Background()
	s, err := pipeline.Open(ctx, pipeline.Config{DataDir: filepath.Join(dir, "data"), Host: "test", Port: pipeline.NoListener}, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st := killStage
	st.Handle = effectHandler(dir, os.Getenv(killChildEnv+"_BLOCK"))
	r := &pipeline.Runner{JS: s.JetStream(), Host: "test", Logger: logger}
	if err := r.Run(ctx, st); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestStageKilledBeforeAck runs a stage in a child process, SIGKILLs it
// after its handler made the side effect and before the ack, restarts the
// stage on the same data directory and checks that every effect happened
// exactly once.
func TestStageKilledBeforeAck(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "effects"), 0o755); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "data")
	s := pipelinetest.RunServer(t, pipelinetest.WithDataDir(dataDir))
	publishN(t, testCtx(t), s.JetStream(), 0, 3)
	s.Close()

	blockID := fileDeleted(t, 0).ID
	var out bytes.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killChildEnv+"="+dir, killChildEnv+"_BLOCK="+blockID)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	checkFor(t, 20*time.Second, func() error {
		select {
		case err := <-exited:
			t.Fatalf("child exited early (%v):\n%s", err, out.String())
		default:
		}
		_, err := os.Stat(filepath.Join(dir, "ready"))
		return err
	})
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-exited

	s2 := pipelinetest.RunServer(t, pipelinetest.WithDataDir(dataDir))
	st := killStage
	st.Handle = effectHandler(dir, "")
	runStage(t, s2.JetStream(), st, nil)
	ctx := testCtx(t)
	waitDrained(t, ctx, s2.JetStream(), st.Name)

	count := func(name string) map[string]int {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int{}
		for _, l := range strings.Fields(string(b)) {
			m[l]++
		}
		return m
	}
	attempts, applied := count("attempts"), count("applied")
	if attempts[blockID] != 2 {
		t.Fatalf("killed event handled %d times, want 2 (killed before ack, then redelivered); child output:\n%s", attempts[blockID], out.String())
	}
	for i := range 3 {
		id := fileDeleted(t, i).ID
		if applied[id] != 1 {
			t.Fatalf("event %d: effect applied %d times, want exactly 1", i, applied[id])
		}
	}
	if len(applied) != 3 {
		t.Fatalf("effects for %d events, want 3", len(applied))
	}
}
