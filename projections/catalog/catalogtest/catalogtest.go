// Package catalogtest generates realistic, deterministic event streams for
// tests and benchmarks of the catalog, the export and anything that replays
// the log.
package catalogtest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/strata-hsm/strata/events"
)

// Base is the time of the first generated event; event n is n ms later.
var Base = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Options shape a generated stream.
type Options struct {
	// Invalid is the share of events that are unknown, malformed or
	// invalid (0.01 = 1 %). Negative means none.
	Invalid float64
	// Active is the number of files in flight at once (0: 1000).
	Active int
}

type stage int

const (
	stNew stage = iota
	stSelected
	stPacked
	stStored1
	stStored2
	stReleased
	stRecalling
	stArchived
	stDirty
	stResident
	stDeleted
)

type gfile struct {
	id, path, obj string
	stage         stage
	stat          events.FileStat
}

type gen struct {
	r       *rand.Rand
	envs    []events.Envelope
	active  []*gfile
	idle    []*gfile
	objects []string // stored objects, for corrupt/verified/deleted and dedup
	sizes   map[string]int64
	nfile   uint64
	inode   uint64
	tapeBlk int64
	invalid float64
}

// Generate returns n envelopes with Seq 1..n: files selected, packed, stored
// on a directory tier and a tape tier, released, recalled, modified,
// re-archived as new versions, renamed (as stubs too) and deleted; pins and unpins of
// directories; objects shared by identical files; copies marked corrupt,
// verified and deleted; and opts.Invalid of unknown or invalid events. The
// same n, seed and opts always give the same envelopes.
func Generate(n int, seed uint64, opts Options) []events.Envelope {
	if opts.Active == 0 {
		opts.Active = 1000
	}
	g := &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), sizes: map[string]int64{}, invalid: opts.Invalid}
	for len(g.envs) < n {
		g.step(opts.Active)
	}
	g.envs = g.envs[:n]
	for i := range g.envs {
		g.envs[i].Seq = uint64(i + 1)
		g.envs[i].Time = Base.Add(time.Duration(i+1) * time.Millisecond)
	}
	return g.envs
}

func (g *gen) hex(n int) string {
	b := make([]byte, 0, n)
	for len(b) < n {
		b = strconv.AppendUint(b, g.r.Uint64()|1<<63, 16)
	}
	return string(b[:n])
}

func (g *gen) step(active int) {
	if g.invalid > 0 && g.r.Float64() < g.invalid {
		g.bad()
		return
	}
	switch p := g.r.IntN(1000); {
	case p < 5:
		g.pin()
		return
	case p < 15 && len(g.objects) > 0:
		g.copyEvent()
		return
	case p < 40 && len(g.idle) > 0:
		// Something happens to a file at rest: recall, modify, delete.
		i := g.r.IntN(len(g.idle))
		f := g.idle[i]
		g.idle[i] = g.idle[len(g.idle)-1]
		g.idle = g.idle[:len(g.idle)-1]
		if !g.advance(f) {
			g.active = append(g.active, f)
		}
		return
	}
	if len(g.active) < active {
		g.nfile++
		g.inode++
		f := &gfile{id: fmt.Sprintf("%016x%016x", g.r.Uint64(), g.nfile),
			path: fmt.Sprintf("/data/d%03d/f%07d.dat", g.r.IntN(200), g.nfile)}
		f.stat = events.FileStat{Size: g.r.Int64N(1 << 30), Mode: 0o100644, UID: 1000, GID: 1000,
			AtimeNS: 1, MtimeNS: int64(g.nfile) * 1e9, CtimeNS: int64(g.nfile) * 1e9, Dev: 2049, Inode: g.inode, Generation: 1}
		g.active = append(g.active, f)
	}
	i := g.r.IntN(len(g.active))
	f := g.active[i]
	if g.advance(f) {
		g.active[i] = g.active[len(g.active)-1]
		g.active = g.active[:len(g.active)-1]
	}
}

// advance emits f's next event; it reports whether f came to rest (and was
// moved to the idle list, or is gone).
func (g *gen) advance(f *gfile) (rest bool) {
	r := g.r.IntN(100)
	switch f.stage {
	case stNew, stDirty, stResident:
		if f.stage != stNew && r < 20 {
			f.path = fmt.Sprintf("/data/d%03d/renamed-%s.dat", g.r.IntN(200), f.id[:8])
		}
		g.emit(&events.FileSelected{FileID: f.id, Path: f.path, Root: "/data", Stat: f.stat, Reason: events.ReasonPolicy})
		f.stage = stSelected
	case stSelected:
		// 5 % of new content is identical to an existing object.
		if len(g.objects) > 0 && r < 5 {
			f.obj = g.objects[g.r.IntN(len(g.objects))]
			f.stat.Size = g.sizes[f.obj]
		} else {
			f.obj = g.hex(64)
			g.sizes[f.obj] = f.stat.Size
		}
		g.emit(&events.ObjectPacked{FileID: f.id, Path: f.path, ObjectID: f.obj, Stat: f.stat, Size: f.stat.Size,
			PackedSize: f.stat.Size/2 + 1, PackedSum: g.hex(64), FrameSize: 4 << 20, Frames: f.stat.Size>>22 + 1,
			Staging: "/var/lib/strata/staging/" + f.obj + ".zst"})
		f.stage = stPacked
	case stPacked:
		g.emit(&events.ObjectStored{ObjectID: f.obj, Tier: "disk", TierKind: events.TierDirectory,
			Location: "/cold/objects/" + f.obj[:2] + "/" + f.obj + ".zst", Size: f.stat.Size,
			PackedSize: f.stat.Size/2 + 1, PackedSum: g.hex(64)})
		f.stage = stStored1
	case stStored1:
		g.tapeBlk += 1 + f.stat.Size>>20
		g.emit(&events.ObjectStored{ObjectID: f.obj, Tier: "tape1", TierKind: events.TierTape,
			Location: "VOL001/" + strconv.FormatInt(g.tapeBlk>>10, 10), Size: f.stat.Size,
			PackedSize: f.stat.Size/2 + 1, PackedSum: g.hex(64),
			Tape: &events.TapePosition{Volume: "VOL001", TapeFile: g.tapeBlk>>10 + 1, Block: g.tapeBlk, Offset: 512}})
		g.objects = append(g.objects, f.obj)
		f.stage = stStored2
	case stStored2, stArchived:
		switch {
		case r < 80:
			g.emit(&events.FileReleased{FileID: f.id, Path: f.path, ObjectID: f.obj, Stat: f.stat, Copies: 2})
			f.stage = stReleased
		case r < 90:
			g.emit(&events.FileReleaseSkipped{FileID: f.id, Path: f.path, ObjectID: f.obj, Reason: "file is open"})
			f.stage = stResident
		default:
			g.modify(f)
		}
		return g.rest(f)
	case stReleased:
		if r < 85 {
			g.emit(&events.RecallRequested{FileID: f.id, Path: f.path, ObjectID: f.obj, Offset: 0, Length: 4096, PID: 42, Process: "cat", Reason: events.RecallAccess})
			f.stage = stRecalling
			return false
		}
		if r < 90 {
			from := f.path
			f.path = fmt.Sprintf("/data/d%03d/moved-%s.dat", g.r.IntN(200), f.id[:8])
			g.emit(&events.FileMoved{FileID: f.id, Path: f.path, From: from})
			return false
		}
		g.emit(&events.FileDeleted{FileID: f.id, Path: f.path})
		f.stage = stDeleted
		return true
	case stRecalling:
		if r < 90 {
			g.emit(&events.RecallCompleted{FileID: f.id, Path: f.path, ObjectID: f.obj, Bytes: f.stat.Size, DurationNS: 1e6, SourceTier: "disk"})
			f.stage = stArchived
		} else {
			g.emit(&events.RecallFailed{FileID: f.id, Path: f.path, ObjectID: f.obj, Tier: "tape1", Reason: "checksum mismatch"})
			f.stage = stReleased
		}
		return g.rest(f)
	}
	return false
}

func (g *gen) modify(f *gfile) {
	f.stat.Size = g.r.Int64N(1 << 30)
	f.stat.MtimeNS += 1e9
	f.stat.CtimeNS += 1e9
	g.emit(&events.FileModified{FileID: f.id, Path: f.path, ObjectID: f.obj, Stat: f.stat})
	f.stage = stDirty
}

// rest moves f to the idle list (it returns true: f leaves the active set).
func (g *gen) rest(f *gfile) bool {
	g.idle = append(g.idle, f)
	return true
}

func (g *gen) pin() {
	dir := fmt.Sprintf("/data/d%03d", g.r.IntN(200))
	if g.r.IntN(2) == 0 {
		g.emit(&events.FilePinned{Path: dir})
	} else {
		g.emit(&events.FileUnpinned{Path: dir})
	}
}

func (g *gen) copyEvent() {
	obj := g.objects[g.r.IntN(len(g.objects))]
	tier := "disk"
	if g.r.IntN(2) == 0 {
		tier = "tape1"
	}
	switch g.r.IntN(3) {
	case 0:
		g.emit(&events.ObjectCorrupt{ObjectID: obj, Tier: tier, Reason: "frame 3: blake3 mismatch"})
	case 1:
		g.emit(&events.ObjectVerified{ObjectID: obj, Tier: tier})
	default:
		g.emit(&events.ObjectDeleted{ObjectID: obj, Tier: tier, Reason: "retention"})
	}
}

// bad emits an event the catalog must skip.
func (g *gen) bad() {
	seq := strconv.Itoa(len(g.envs))
	env := events.Envelope{SpecVersion: events.SpecVersion, ID: "bad-" + seq, Source: "/strata/test/gen",
		DataContentType: events.ContentType, Type: events.KindFileSelected.Type()}
	switch g.r.IntN(4) {
	case 0:
		env.Type = "strata.file.exploded.v1"
		env.Data = json.RawMessage(`{"file_id":"x"}`)
	case 1:
		env.Data = json.RawMessage(`{"file_id":"not-a-file-id","path":"/data/x","root":"/data","stat":{"size":1,"inode":1},"reason":"policy"}`)
	case 2:
		env.Data = json.RawMessage(`{"file_id":`)
	default:
		env.Data = json.RawMessage(`{"path":"relative/path"} {}`)
	}
	g.envs = append(g.envs, env)
}

func (g *gen) emit(ev events.Event) {
	env, err := events.New(events.NewID(ev.Kind(), strconv.Itoa(len(g.envs))), "/strata/test/gen", Base, ev)
	if err != nil {
		panic(fmt.Sprintf("catalogtest: generated an invalid %s: %v", ev.Kind(), err))
	}
	g.envs = append(g.envs, env)
}
