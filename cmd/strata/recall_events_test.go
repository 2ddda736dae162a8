package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// recallEvents returns the recall events of file id in the log, in order.
func recallEvents(t *testing.T, d *daemon, fileID string) []events.Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	last, err := pipeline.LastSeq(ctx, d.js)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Envelope
	err = pipeline.FollowWith(ctx, d.js, 1, pipeline.FollowOptions{Filter: []string{events.AggregateEvents(events.AnyHost, "recall")}},
		func(batch []events.Envelope) error {
			for _, env := range batch {
				ev, err := events.DecodeData(env.Type, env.Data)
				if err == nil && ev.Entity() == fileID {
					out = append(out, env)
				}
				if env.Seq >= last {
					return pipeline.ErrStop
				}
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRecallEventsOncePerRelease: a program's read of a stub is recorded
// by the interceptor itself — recall.requested naming the program, then
// recall.completed — once per release, with deterministic ids: a retried
// publish of the same completion is dropped, and the next release of the
// same content is recalled and recorded anew.
func TestRecallEventsOncePerRelease(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	hot, data := filepath.Join(mnt, "hot"), t.TempDir()
	if err := os.MkdirAll(hot, 0o755); err != nil {
		t.Fatal(err)
	}
	random, _ := contentGen(11, 1)
	content := random(3<<20 + 77)
	path := filepath.Join(hot, "f.bin")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: t.TempDir()}}})

	var releaseIDs []string
	for round := 1; round <= 2; round++ {
		var sum archiveSummary
		cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, path)
		if sum.Released != 1 {
			t.Fatalf("round %d: archive: %+v", round, sum)
		}
		info, err := stub.ReadPath(path)
		if err != nil || info.State != stub.Released || info.ReleaseID == "" {
			t.Fatalf("round %d: stub %+v, %v: want released with a release id", round, info, err)
		}
		releaseIDs = append(releaseIDs, info.ReleaseID)
		got, err := exec.Command("cat", path).Output()
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("round %d: cat: %d bytes, %v", round, len(got), err)
		}
		waitFor(t, time.Minute, func() error {
			f, err := d.cat.FileByPath(path)
			if err == nil && f.State != catalog.StateArchived {
				err = fmt.Errorf("state %s", f.State)
			}
			return err
		})
		var requested, completed []events.Envelope
		for _, env := range recallEvents(t, d, info.FileID) {
			ev, _ := events.DecodeData(env.Type, env.Data)
			switch e := ev.(type) {
			case *events.RecallRequested:
				if e.Reason != events.RecallAccess || e.Process != "cat" || e.PID == 0 {
					t.Errorf("round %d: recall.requested %+v: want reason access by cat", round, e)
				}
				requested = append(requested, env)
			case *events.RecallCompleted:
				if e.Process != "cat" || e.Bytes != int64(len(content)) || e.DurationNS <= 0 || e.SourceTier != "hdd" {
					t.Errorf("round %d: recall.completed %+v: want cat, every byte, a duration, tier hdd", round, e)
				}
				completed = append(completed, env)
			}
		}
		if len(requested) != round || len(completed) != round {
			t.Fatalf("round %d: %d recall.requested and %d recall.completed in the log, want %d of each", round, len(requested), len(completed), round)
		}
		if round == 2 && (requested[0].ID == requested[1].ID || completed[0].ID == completed[1].ID) {
			t.Fatal("two releases' recalls share an event id: the second would be dropped as a duplicate")
		}
		if requested[round-1].Seq > completed[round-1].Seq {
			t.Fatalf("round %d: recall.completed before recall.requested", round)
		}

		// The same completion published again (a retry, or a restarted
		// daemon recording it) is dropped by the stream.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		before, err := pipeline.LastSeq(ctx, d.js)
		if err != nil {
			t.Fatal(err)
		}
		em := pipeline.NewEmitter(d.js, d.cfg.Host, "interceptor")
		if _, err := em.Emit(ctx, &events.RecallCompleted{FileID: info.FileID, Path: path, ObjectID: info.ObjectID, SourceTier: "none"},
			info.FileID, info.ObjectID, info.ReleaseID); err != nil {
			t.Fatal(err)
		}
		after, err := pipeline.LastSeq(ctx, d.js)
		cancel()
		if err != nil || after != before {
			t.Fatalf("round %d: a repeated completion was stored (seq %d → %d): its id is not the completion's", round, before, after)
		}
	}
	if releaseIDs[0] == releaseIDs[1] {
		t.Fatalf("two releases have one release id %q", releaseIDs[0])
	}
}
