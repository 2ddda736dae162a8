package catalog_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
)

// hostEvents returns, for each host, file.selected of the same two paths
// (distinct file ids) and a pin of /data/a.
func hostEvents(t *testing.T, hosts ...string) map[string][]events.Envelope {
	t.Helper()
	out := map[string][]events.Envelope{}
	for hi, h := range hosts {
		for i, p := range []string{"/data/a", "/data/sub/b"} {
			ev := &events.FileSelected{FileID: fmt.Sprintf("%031x%d", hi+1, i), Path: p, Root: "/data",
				Stat: events.FileStat{Size: int64(10 * (i + 1)), Mode: 0o100644, Inode: uint64(i + 1)}, Reason: events.ReasonManual}
			env, err := events.New(events.NewID(ev.Kind(), h, p), events.Source(h, "scanner"), catalogtest.Base, ev)
			if err != nil {
				t.Fatal(err)
			}
			out[h] = append(out[h], env)
		}
		pin := &events.FilePinned{Path: "/data/a"}
		env, err := events.New(events.NewID(pin.Kind(), h), events.Source(h, "scanner"), catalogtest.Base, pin)
		if err != nil {
			t.Fatal(err)
		}
		out[h] = append(out[h], env)
	}
	return out
}

// TestSamePathOnTwoHosts: two hosts with the same paths both have their
// files in every catalog (the path index is keyed by host); a catalog's
// own-host queries (Options.Host) answer for its host alone, FilesOn("")
// lists both, and pins stay on their host.
func TestSamePathOnTwoHosts(t *testing.T) {
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	evs := hostEvents(t, "nas1", "nas2")
	for _, h := range []string{"nas1", "nas2"} {
		if err := catalogtest.Publish(js, h, evs[h][:2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := catalogtest.Publish(js, "nas2", evs["nas2"][2:]); err != nil { // only nas2 pins
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	last, err := pipeline.LastSeq(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	cats := map[string]*catalog.Catalog{}
	for _, h := range []string{"nas1", "nas2", ""} {
		c, err := catalog.Rebuild(ctx, js, filepath.Join(t.TempDir(), "cat"), last, catalog.Options{Host: h}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cats[h] = c
	}
	if d, err := catalog.Diff(cats["nas1"], cats["nas2"]); err != nil || d != "" {
		t.Fatalf("catalogs of two hosts differ: %q %v", d, err)
	}
	for _, h := range []string{"nas1", "nas2"} {
		c := cats[h]
		f, err := c.FileByPath("/data/a")
		if err != nil || f.Host != h {
			t.Fatalf("%s: FileByPath(/data/a) = %+v, %v; want its own file", h, f, err)
		}
		var own []string
		if err := c.Files("/data", func(f catalog.File) error { own = append(own, f.Host+":"+f.Path); return nil }); err != nil {
			t.Fatal(err)
		}
		if want := []string{h + ":/data/a", h + ":/data/sub/b"}; !slices.Equal(own, want) {
			t.Fatalf("%s: Files(/data) = %v, want %v", h, own, want)
		}
		var all []string
		if err := c.FilesOn("", "/data", func(f catalog.File) error { all = append(all, f.Host+":"+f.Path); return nil }); err != nil {
			t.Fatal(err)
		}
		if want := []string{"nas1:/data/a", "nas2:/data/a", "nas1:/data/sub/b", "nas2:/data/sub/b"}; !slices.Equal(all, want) {
			t.Fatalf("%s: FilesOn(all, /data) = %v, want %v", h, all, want)
		}
		pinned, err := c.Pinned("/data/a")
		if err != nil || pinned != (h == "nas2") {
			t.Fatalf("%s: Pinned(/data/a) = %v, %v; only nas2 pinned it", h, pinned, err)
		}
	}
	if pinned, err := cats[""].Pinned("/data/a"); err != nil || !pinned {
		t.Fatalf("catalog of no host: Pinned(/data/a) = %v, %v; want true (some host pinned it)", pinned, err)
	}
	if f, err := cats[""].FileOn("nas2", "/data/sub/b"); err != nil || f.Host != "nas2" {
		t.Fatalf("FileOn(nas2) = %+v, %v", f, err)
	}
}

// TestHostIsTheSubjects: a file's host is the host of the subject its
// file.selected was published on (the host whose stages pack, store and
// release it), whatever source the publisher wrote: a source naming no
// host, or another host.
func TestHostIsTheSubjects(t *testing.T) {
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	var envs []events.Envelope
	for i, src := range []string{"strata/test", events.Source("nas2", "scanner")} {
		ev := &events.FileSelected{FileID: fmt.Sprintf("%032x", i+1), Path: fmt.Sprintf("/data/%d", i), Root: "/data",
			Stat: events.FileStat{Size: 10, Mode: 0o100644, Inode: uint64(i + 1)}, Reason: events.ReasonManual}
		env, err := events.New(events.NewID(ev.Kind(), src), src, catalogtest.Base, ev)
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, env)
	}
	pin := &events.FilePinned{Path: "/data/0"}
	env, err := events.New(events.NewID(pin.Kind(), "nas1"), "strata/test", catalogtest.Base, pin)
	if err != nil {
		t.Fatal(err)
	}
	if err := catalogtest.Publish(js, "nas1", append(envs, env)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := catalog.Rebuild(ctx, js, filepath.Join(t.TempDir(), "cat"), 3, catalog.Options{Host: "nas1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range []string{"/data/0", "/data/1"} {
		if f, err := c.FileByPath(p); err != nil || f.Host != "nas1" {
			t.Errorf("FileByPath(%s) = %+v, %v; want nas1's file (published on strata.nas1)", p, f, err)
		}
	}
	if pinned, err := c.Pinned("/data/0"); err != nil || !pinned {
		t.Errorf("Pinned(/data/0) on nas1 = %v, %v; want true", pinned, err)
	}
}

// TestOlderFormatRebuilt: a catalog of format 1 (paths without hosts) is
// refused by Open and rebuilt from the log by OpenOrRebuild, equal to a
// fresh replay.
func TestOlderFormatRebuilt(t *testing.T) {
	srv := pipelinetest.RunServer(t)
	js := srv.JetStream()
	evs := hostEvents(t, "nas1")
	if err := catalogtest.Publish(js, "nas1", evs["nas1"]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "cat")
	c, err := catalog.Open(dir, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("meta/format"), []byte("1"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("path//data/a"), []byte("00000000000000000000000000000010"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := catalog.Open(dir, catalog.Options{}); err == nil {
		t.Fatal("format 1 catalog opened: want ErrFormat")
	}
	got, err := catalog.OpenOrRebuild(ctx, js, dir, catalog.Options{Host: "nas1"})
	if err != nil {
		t.Fatalf("OpenOrRebuild: %v", err)
	}
	defer got.Close()
	fresh, err := catalog.Rebuild(ctx, js, filepath.Join(t.TempDir(), "fresh"), uint64(len(evs["nas1"])), catalog.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if d, err := catalog.Diff(got, fresh); err != nil || d != "" {
		t.Fatalf("rebuilt catalog differs from a fresh replay: %q %v", d, err)
	}
	if f, err := got.FileByPath("/data/a"); err != nil || f.Host != "nas1" {
		t.Fatalf("rebuilt catalog: FileByPath = %+v, %v", f, err)
	}
}
