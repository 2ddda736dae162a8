package store_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/store"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

const host = "test"

// rig is a real in-process JetStream, a staging directory and the
// compressor's emitter, for driving the store and unstage stages.
type rig struct {
	t       *testing.T
	js      jetstream.JetStream
	staging string
	packer  *pipeline.Emitter
	log     *slog.Logger
}

func newRig(t *testing.T) *rig {
	t.Helper()
	srv := pipelinetest.RunServer(t, pipelinetest.WithHost(host))
	return &rig{t: t, js: srv.JetStream(), staging: t.TempDir(),
		packer: pipeline.NewEmitter(srv.JetStream(), host, "compressor"), log: pipelinetest.Logger(t)}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// checkFor calls fn every 10ms until it returns nil, and fails the test if
// it has not after total.
func checkFor(t *testing.T, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.NewTimer(total)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := fn()
		if err == nil {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("condition not met after %s: %v", total, err)
		case <-tick.C:
		}
	}
}

// openDir opens a directory target named name on a fresh root.
func openDir(t *testing.T, name string) *dir.Target {
	t.Helper()
	tgt, err := dir.Open(dir.Config{Name: name, Root: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// staged is an object as the compressor leaves it: <id>.zst and <id>.json
// in the staging directory, and its object.packed event.
type staged struct {
	ev       *events.ObjectPacked
	data     []byte
	manifest []byte
}

func (s staged) object() tier.Object {
	o := tiertest.ObjectOf(s.ev.ObjectID, s.data)
	o.Manifest = s.manifest
	return o
}

// stage writes an object of size opaque bytes (the store stage never
// looks inside) packed from the file at path, and returns it; fileNo makes
// the file id.
func (r *rig) stage(seed uint64, size int64, fileNo int, path string) staged {
	r.t.Helper()
	data := tiertest.RandomBytes(seed, size)
	sum := blake3.Sum256(data)
	id := eventstest.ObjectID(int(seed))
	zst := filepath.Join(r.staging, id+".zst")
	manifest := []byte(fmt.Sprintf(`{"object_id":%q,"path":%q}`, id, path))
	if err := os.WriteFile(zst, data, 0o600); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.staging, id+".json"), manifest, 0o600); err != nil {
		r.t.Fatal(err)
	}
	st := eventstest.Stat(size * 3)
	return staged{data: data, manifest: manifest, ev: &events.ObjectPacked{
		FileID: eventstest.FileID(fileNo), Path: path, ObjectID: id, Stat: st, Size: st.Size,
		PackedSize: size, PackedSum: hex.EncodeToString(sum[:]), FrameSize: 256 << 10, Frames: 1, Staging: zst,
	}}
}

// unstageFiles removes an object's staged files, as unstaging does.
func (r *rig) unstageFiles(s staged) {
	r.t.Helper()
	for _, ext := range []string{".zst", ".json"} {
		if err := os.Remove(filepath.Join(r.staging, s.ev.ObjectID+ext)); err != nil {
			r.t.Fatal(err)
		}
	}
}

// publish publishes object.packed for s, with the compressor's id for
// this file and object.
func (r *rig) publish(s staged) {
	r.t.Helper()
	if _, err := r.packer.Emit(testCtx(r.t), s.ev, s.ev.FileID, s.ev.ObjectID); err != nil {
		r.t.Fatal(err)
	}
}

// run runs st until the test ends or the returned stop is called (stop
// waits for Run to return).
func (r *rig) run(st pipeline.Stage) (stop func()) {
	r.t.Helper()
	runner := &pipeline.Runner{JS: r.js, Host: host, Logger: r.log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx, st) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				r.t.Errorf("stage %s: %v", st.Name, err)
			}
		case <-time.After(30 * time.Second):
			r.t.Errorf("stage %s did not stop", st.Name)
		}
	}
	r.t.Cleanup(stop)
	return stop
}

// storeStage is the store stage of tgt with fast retries.
func (r *rig) storeStage(tgt tier.Target, filter *tier.Filter) pipeline.Stage {
	st := store.Stage(store.StageConfig{
		Target: tgt, Emitter: pipeline.NewEmitter(r.js, host, tier.StageName(tgt.Name())),
		Logger: r.log, Filter: filter, Roots: []string{"/hot"},
	})
	st.Backoff = []time.Duration{50 * time.Millisecond}
	return st
}

// deleteConsumer removes a stage's durable, so that the stage run next
// receives every message of its subjects again, from the start of the
// stream.
func (r *rig) deleteConsumer(name string) {
	r.t.Helper()
	if err := r.js.DeleteConsumer(testCtx(r.t), pipeline.StreamEvents, name); err != nil {
		r.t.Fatal(err)
	}
}

// waitDrained waits until durable name has handled every message of its
// subjects that is in the stream now: nothing pending, nothing waiting for
// an ack, and its ack floor at the last of them (a consumer just created
// may report nothing pending before it looked at the stream).
func (r *rig) waitDrained(name string) {
	r.t.Helper()
	checkFor(r.t, 30*time.Second, func() error {
		c, err := r.js.Consumer(testCtx(r.t), pipeline.StreamEvents, name)
		if err != nil {
			return err
		}
		ci, err := c.Info(testCtx(r.t))
		if err != nil {
			return err
		}
		filter := append([]string{ci.Config.FilterSubject}, ci.Config.FilterSubjects...)
		var last uint64
		for _, m := range r.streamMsgs(pipeline.StreamEvents) {
			for _, f := range filter {
				if f != "" && subjectMatch(f, m.Subject) {
					last = m.Sequence
				}
			}
		}
		if ci.NumPending != 0 || ci.NumAckPending != 0 || ci.AckFloor.Stream < last {
			return fmt.Errorf("consumer %s: %d pending, %d unacknowledged, acknowledged up to %d of %d",
				name, ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, last)
		}
		return nil
	})
}

// subjectMatch reports whether NATS subject filter f matches subject s.
func subjectMatch(f, s string) bool {
	ft, st := strings.Split(f, "."), strings.Split(s, ".")
	for i, tok := range ft {
		switch {
		case tok == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case tok != "*" && tok != st[i]:
			return false
		}
	}
	return len(ft) == len(st)
}

// stored returns every object.stored event on the stream.
func (r *rig) stored() []*events.ObjectStored {
	r.t.Helper()
	var out []*events.ObjectStored
	for _, m := range r.streamMsgs(pipeline.StreamEvents) {
		env, ev, err := events.Decode(m.Data)
		if err != nil {
			r.t.Fatalf("stream message %d: %v", m.Sequence, err)
		}
		if s, ok := ev.(*events.ObjectStored); ok {
			if m.Subject != events.Subject(host, events.KindObjectStored) {
				r.t.Fatalf("object.stored %s on subject %s", env.ID, m.Subject)
			}
			out = append(out, s)
		}
	}
	return out
}

// storedOn returns the object.stored events of object id on tier name.
func (r *rig) storedOn(id, name string) []*events.ObjectStored {
	r.t.Helper()
	var out []*events.ObjectStored
	for _, s := range r.stored() {
		if s.ObjectID == id && s.Tier == name {
			out = append(out, s)
		}
	}
	return out
}

// deadLetter is a message a stage gave up on.
type deadLetter struct {
	subject, stage, reason string
	deliveries             string // how many times the stage was handed it
	ev                     events.Event
}

func (r *rig) deadLetters() []deadLetter {
	r.t.Helper()
	var out []deadLetter
	for _, m := range r.streamMsgs(pipeline.StreamDeadLetter) {
		_, ev, err := events.Decode(m.Data)
		if err != nil {
			r.t.Fatalf("dead letter %d: %v", m.Sequence, err)
		}
		out = append(out, deadLetter{subject: m.Subject, stage: m.Header.Get(pipeline.HeaderStage),
			reason: m.Header.Get(pipeline.HeaderReason), deliveries: m.Header.Get(pipeline.HeaderDeliveries), ev: ev})
	}
	return out
}

func (r *rig) streamMsgs(stream string) []*jetstream.RawStreamMsg {
	r.t.Helper()
	ctx := testCtx(r.t)
	s, err := r.js.Stream(ctx, stream)
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			r.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// lastSeq is the last sequence of the event stream.
func (r *rig) lastSeq() uint64 {
	r.t.Helper()
	s, err := r.js.Stream(testCtx(r.t), pipeline.StreamEvents)
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := s.Info(testCtx(r.t))
	if err != nil {
		r.t.Fatal(err)
	}
	return info.State.LastSeq
}

// project keeps cat following the stream until the test ends.
func (r *rig) project(cat *catalog.Catalog) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- pipeline.FollowRecords(ctx, r.js, 1, pipeline.FollowOptions{}, func(recs []pipeline.Record) error {
			envs := make([]events.Envelope, len(recs))
			evs := make([]events.Event, len(recs))
			for i, rec := range recs {
				envs[i], evs[i] = rec.Envelope, rec.Event
			}
			return cat.ApplyDecoded(envs, evs)
		})
	}()
	r.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("catalog projection: %v", err)
		}
	})
}

// openCatalog opens a catalog in a fresh directory, closed at the end of
// the test (after the stages and the projection using it stopped).
func openCatalog(t *testing.T) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.Open(t.TempDir(), catalog.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cat.Close(); err != nil {
			t.Errorf("close catalog: %v", err)
		}
	})
	return cat
}

// readBack reads the whole object id from tgt.
func readBack(t *testing.T, tgt tier.Target, id string, size int64) []byte {
	t.Helper()
	b, err := tiertest.ReadRange(t, tgt, id, 0, size)
	if err != nil {
		t.Fatalf("read %s back from %s: %v", id, tgt.Name(), err)
	}
	return b
}
