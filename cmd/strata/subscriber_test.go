package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// natsCLI finds the NATS CLI (go install github.com/nats-io/natscli/nats).
func natsCLI(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "nats")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	stratatest.Skip(t, "needs the nats CLI (go install github.com/nats-io/natscli/nats@v0.5.0)")
	return ""
}

// TestReadOnlySubscriber: an external tool with the generated read-only
// credential sees recall events with `nats sub`, and its publishes are
// refused — both checked with the real NATS CLI as a separate process.
func TestReadOnlySubscriber(t *testing.T) {
	nats := natsCLI(t)
	data := t.TempDir()
	d, _ := testDaemon(t, Config{DataDir: data})
	creds, err := pipeline.LoadCredentials(data)
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--server", creds.URL, "--user", creds.Reader.Name, "--password", creds.Reader.Password,
		"--inbox-prefix", pipeline.ReaderInboxPrefix}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, nats, append(base, "sub", "strata.*.recall.>", "--count", "1", "--raw")...)
	var out, errb bytes.Buffer
	sub.Stdout, sub.Stderr = &out, &errb
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	// Publish recall events until the subscriber (which needs a moment to
	// connect) has seen one.
	ev := &events.RecallCompleted{FileID: eventstest.FileID(1), Path: "/hot/x", ObjectID: eventstest.ObjectID(2),
		Bytes: 10, DurationNS: 1000, SourceTier: "cold", PID: 7, Process: "cat"}
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	for i := 0; ; i++ {
		env := eventstest.Envelope(ev, i)
		if _, err := pipeline.Publish(ctx, d.js, "otherhost", env); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("nats sub: %v\n%s", err, errb.String())
			}
			line := strings.TrimSpace(out.String())
			if _, got, err := events.Decode([]byte(line)); err != nil || got.Kind() != events.KindRecallCompleted {
				t.Fatalf("nats sub printed %q: %v", line, err)
			}
			goto published
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("nats sub saw nothing: %s", errb.String())
		}
	}
published:
	pub := exec.CommandContext(ctx, nats, append(base, "pub", "strata.otherhost.recall.completed", "forged")...)
	pout, _ := pub.CombinedOutput()
	last, err := pipeline.LastSeq(ctx, d.js)
	if err != nil {
		t.Fatal(err)
	}
	// The CLI may report the violation or not (a plain publish is fire and
	// forget); what matters is that nothing reached the log.
	if !strings.Contains(strings.ToLower(string(pout)), "permission") {
		t.Logf("nats pub output: %s", pout)
	}
	if err := d.cat.WaitSeq(ctx, last); err != nil {
		t.Fatal(err)
	}
	var forged int
	pipeline.Follow(ctx, d.js, 1, func(batch []events.Envelope) error {
		for _, e := range batch {
			if e.Type == "" {
				forged++
			}
			if e.Seq >= last {
				return pipeline.ErrStop
			}
		}
		return nil
	})
	if forged != 0 {
		t.Fatalf("a publish with the read-only credential reached the log (%d undecodable events)", forged)
	}
	// A stream deletion is refused too.
	rm := exec.CommandContext(ctx, nats, append(base, "stream", "rm", pipeline.StreamEvents, "-f")...)
	if out, err := rm.CombinedOutput(); err == nil {
		t.Fatalf("nats stream rm with the read-only credential succeeded: %s", out)
	}
	if _, err := pipeline.LastSeq(ctx, d.js); err != nil {
		t.Fatalf("stream gone after a refused delete: %v", err)
	}
}
