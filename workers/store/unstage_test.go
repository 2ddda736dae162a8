package store_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/workers/store"
	"github.com/strata-hsm/strata/workers/tier"
)

// stagedFiles reports which of s's staged files (.zst, .json) exist.
func (r *rig) stagedFiles(s staged) (zst, json bool) {
	r.t.Helper()
	exists := func(p string) bool {
		_, err := os.Stat(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.t.Fatal(err)
		}
		return err == nil
	}
	return exists(filepath.Join(r.staging, s.ev.ObjectID+".zst")), exists(filepath.Join(r.staging, s.ev.ObjectID+".json"))
}

func (r *rig) wantStaged(s staged, want bool) {
	r.t.Helper()
	if zst, json := r.stagedFiles(s); zst != want || json != want {
		r.t.Fatalf("%s: staged .zst %v, .json %v; want both %v", s.ev.Path, zst, json, want)
	}
}

// TestUnstage: the staged .zst and .json of an object are removed once
// every tier that wants it — by its filter, for every path and size the
// catalog knows the object under — holds a good copy, and not before.
// Tiers: "all" takes every file, "logs" only *.log files. The stages run
// against a real catalog that follows the stream.
func TestUnstage(t *testing.T) {
	r := newRig(t)
	cat := openCatalog(t)
	r.project(cat)
	all, logs := openDir(t, "all"), openDir(t, "logs")
	logFilter, err := tier.NewFilter([]string{"*.log"}, nil, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.run(store.Unstage(store.UnstageConfig{
		Catalog: cat, Host: host, StagingDir: r.staging, Roots: []string{"/hot"}, Logger: r.log,
		Filters: map[string]*tier.Filter{"all": nil, "logs": logFilter},
	}))

	// a.dat is wanted by "all" alone: gone once "all" has it.
	a := r.stage(60, 200<<10, 60, "/hot/a.dat")
	r.publish(a)
	// shared is one object packed for two files: c.dat ("all" only) and
	// c.log ("all" and "logs"). The c.log path keeps it staged until
	// "logs" has it too, although "logs" was never asked for c.dat.
	shared := r.stage(61, 300<<10, 61, "/hot/c.dat")
	r.publish(shared)
	asLog := shared
	ev := *shared.ev
	ev.FileID, ev.Path = eventstest.FileID(62), "/hot/c.log"
	asLog.ev = &ev
	r.publish(asLog)
	// Nothing is removed while no tier has a copy.
	r.waitDrained(store.UnstageName)
	r.wantStaged(a, true)
	r.wantStaged(shared, true)

	// Both packings are in the log before any copy exists: unstaging
	// decides from the packings the catalog knows when a copy is stored.
	r.run(r.storeStage(all, nil))

	checkFor(t, 30*time.Second, func() error {
		if zst, json := r.stagedFiles(a); zst || json {
			return fmt.Errorf("a.dat still staged (.zst %v, .json %v)", zst, json)
		}
		return nil
	})
	checkCopy(t, all, a)
	r.waitDrained(tier.StageName("all"))
	r.waitDrained(store.UnstageName)
	if err := cat.WaitSeq(testCtx(t), r.lastSeq()); err != nil {
		t.Fatal(err)
	}
	// One object.stored per packing message: each is a verified copy on
	// "all" (a later archive of the same content must be able to record
	// a copy that was found corrupt meanwhile), and a redelivery of one
	// message adds none.
	if n := len(r.storedOn(shared.ev.ObjectID, "all")); n != 2 {
		t.Fatalf("%d object.stored of the shared object on all, want 2 (one per packing)", n)
	}
	r.wantStaged(shared, true) // "logs" wants it (as c.log) and has no copy

	// The logs tier comes up: it takes c.log only, and then the shared
	// object is unstaged.
	r.run(r.storeStage(logs, logFilter))
	checkFor(t, 30*time.Second, func() error {
		if zst, json := r.stagedFiles(shared); zst || json {
			return fmt.Errorf("shared object still staged (.zst %v, .json %v)", zst, json)
		}
		return nil
	})
	r.waitDrained(tier.StageName("logs"))
	checkCopy(t, logs, shared)
	checkCopy(t, all, shared)
	if _, err := logs.Stat(testCtx(t), a.ev.ObjectID); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("a.dat on logs: %v, want ErrNotFound", err)
	}
	cps, err := cat.Copies(shared.ev.ObjectID)
	if err != nil || len(cps) != 2 {
		t.Fatalf("catalog copies of the shared object: %+v, %v; want all and logs", cps, err)
	}
	r.wantNoDeadLetters()
}
