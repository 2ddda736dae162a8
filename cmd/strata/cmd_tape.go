package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/store"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/volume"
	"github.com/strata-hsm/strata/workers/tapewriter"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
)

// ---- daemon side: opening a tape tier ----

// openTapeTier opens the tape tier t (see tapeTierConfig and
// tapeTierDeps).
func (d *daemon) openTapeTier(t TierConfig) (*tapewriter.Tier, error) {
	return tapewriter.OpenTier(tapeTierConfig(d.cfg, t), d.tapeTierDeps(t.Name))
}

// tapeTierConfig is the tape writer's configuration of tier t: its state
// (spool, recall spill files) lives under <data>/tape/<name>.
func tapeTierConfig(cfg Config, t TierConfig) tapewriter.TierConfig {
	return tapewriter.TierConfig{
		Name: t.Name, Device: t.Device, Pool: t.Pool, BlockSize: int(t.BlockSize),
		BundleBytes: int64(t.BundleSize), BundleAge: time.Duration(t.BundleAge),
		StateDir: filepath.Join(cfg.DataDir, "tape", t.Name),
	}
}

// tapeTierDeps backs a tape tier with the catalog, the daemon's log and
// an emitter of the tier's store stage.
func (d *daemon) tapeTierDeps(name string) tapewriter.TierDeps {
	return tapewriter.TierDeps{
		Emitter: pipeline.NewEmitter(d.js, d.cfg.Host, tier.StageName(name)),
		Logger:  d.logger.With("stage", tier.StageName(name)),
		Copy:    catalogTapeCopy(d.cat, name),
	}
}

// catalogTapeCopy returns the catalog's good copy of an object on a tape
// tier.
func catalogTapeCopy(cat *catalog.Catalog, tier string) func(string) (tapewriter.TapeCopy, bool, error) {
	return func(objectID string) (tapewriter.TapeCopy, bool, error) {
		cps, err := cat.Copies(objectID)
		if errors.Is(err, catalog.ErrNotFound) {
			return tapewriter.TapeCopy{}, false, nil
		}
		if err != nil {
			return tapewriter.TapeCopy{}, false, err
		}
		for _, c := range cps {
			if c.Tier == tier && c.State == catalog.CopyGood && c.Tape != nil {
				return tapewriter.TapeCopy{Pos: *c.Tape, Size: c.Size, PackedSize: c.PackedSize, PackedSum: c.PackedSum}, true, nil
			}
		}
		return tapewriter.TapeCopy{}, false, nil
	}
}

// ---- rebuild: one mechanism for every tier ----

// progressDrive counts the bytes read through a drive for a progress bar.
type progressDrive struct {
	tape.Drive
	prog *progress
	n    int64
}

func (p *progressDrive) ReadBlock(b []byte) (int, error) {
	n, err := p.Drive.ReadBlock(b)
	p.n += int64(n)
	p.prog.Set(p.n, 0, "")
	return n, err
}

// tapeRebuildRequest is the body of the tape-rebuild control verb: the
// daemon publishes object.stored for each record.
type tapeRebuildRequest struct {
	Tier    string         `json:"tier"`
	Kind    string         `json:"kind"`
	Records []store.Record `json:"records"`
}

type tapeRebuildReply struct {
	Published int      `json:"published"`
	Skipped   []string `json:"skipped,omitempty"`
}

// ctlTapeRebuild is the control verb "tape-rebuild".
func (d *daemon) ctlTapeRebuild(ctx context.Context, raw []byte) (any, error) {
	var req tapeRebuildRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("tape-rebuild: %w", err)
	}
	if !events.ValidToken(req.Tier) {
		return nil, fmt.Errorf("tape-rebuild: bad tier name %q", req.Tier)
	}
	n, skipped, err := store.PublishRecords(ctx, pipeline.NewEmitter(d.js, d.cfg.Host, "rebuild"), req.Tier, req.Kind, req.Records)
	return tapeRebuildReply{Published: n, Skipped: skipped}, err
}

// ---- CLI ----

func cmdTape(ctx context.Context, e *env, args []string) error {
	sub := map[string]func(context.Context, *env, []string) error{
		"label": cmdTapeLabel, "ls": cmdTapeLs, "verify": cmdTapeVerify, "rebuild": cmdTapeRebuild,
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(e.stdout, tapeUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w: tape: want a subcommand: label, ls, verify, rebuild", errUsage)
		}
		return flag.ErrHelp
	}
	f, ok := sub[args[0]]
	if !ok {
		return fmt.Errorf("%w: tape: unknown subcommand %q (want label, ls, verify, rebuild)", errUsage, args[0])
	}
	return f(ctx, e, args[1:])
}

const tapeUsage = `Usage: strata tape <label|ls|verify|rebuild> [flags]

Example:
  strata tape label emulator:/srv/tapes --volume V00001 --pool main
  strata tape ls --device /dev/nst0
  strata tape verify --device emulator:/srv/tapes V00001
  strata tape rebuild /dev/nst0 --tier tape --data /var/lib/strata

A DEVICE is /dev/nstX (a real drive: the loaded cartridge) or emulator:DIR
(an emulated library whose cartridges are DIR's subdirectories, or one
cartridge directory). Work on a drive that the daemon is not writing to.
`

// parseInterleaved parses flags wherever they appear among the positional
// arguments ("label DEVICE --pool P" as well as "label --pool P DEVICE").
func parseInterleaved(fs *flag.FlagSet, args []string, e *env) ([]string, error) {
	var pos []string
	for {
		if err := parse(fs, args, e); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func cmdTapeLabel(ctx context.Context, e *env, args []string) error {
	fs := newFlags("tape label", "strata tape label DEVICE --pool P [--volume ID] [--block-size N] [--capacity SIZE] [--force]",
		"strata tape label emulator:/srv/tapes --volume V00001 --pool main")
	pool := fs.String("pool", "", "media pool of the volume (required)")
	vol := fs.String("volume", "", "volume id (barcode); required for a real drive and an emulated library")
	bsFlag := fs.String("block-size", "512KiB", "tape block size, 256KiB to 1MiB (the tar blocking factor)")
	capFlag := fs.String("capacity", "18TB", "capacity of a new emulated cartridge")
	seq := fs.Int("sequence", 1, "sequence number of the volume in its set")
	force := fs.Bool("force", false, "relabel a cartridge that already has a Strata label (erases it)")
	pos, err := parseInterleaved(fs, args, e)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *pool == "" {
		return fmt.Errorf("%w: tape label: want one DEVICE and --pool", errUsage)
	}
	bs, err := parseSize(*bsFlag)
	if err != nil {
		return fmt.Errorf("%w: --block-size: %w", errUsage, err)
	}
	capacity, err := parseSize(*capFlag)
	if err != nil || capacity < 16<<20 {
		return fmt.Errorf("%w: --capacity %q: want at least 16MiB", errUsage, *capFlag)
	}
	kind, p, err := tape.ParseDevice(pos[0])
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if kind == "emulator" {
		if !tape.IsCartridge(p) {
			if *vol == "" {
				return fmt.Errorf("%w: tape label: %s is an emulated library: give --volume (its cartridge becomes %s/VOLUME)", errUsage, pos[0], p)
			}
			cart := filepath.Join(p, *vol)
			if !tape.IsCartridge(cart) {
				if err := tape.CreateCartridge(cart, tape.Cartridge{Capacity: capacity, EarlyWarning: tape.DefaultEarlyWarning(capacity)}); err != nil {
					return err
				}
			}
		} else if *vol == "" {
			*vol = filepath.Base(p)
		}
	} else if *vol == "" {
		return fmt.Errorf("%w: tape label: give --volume for a real drive", errUsage)
	}
	dev, err := tape.OpenDevice(pos[0])
	if err != nil {
		return err
	}
	defer dev.Close()
	d, err := dev.Mount(ctx, *vol)
	if err != nil {
		return err
	}
	if err := volume.Label(d, *vol, *pool, int(bs), *seq, *force); err != nil {
		if errors.Is(err, volume.ErrLabelled) {
			return fmt.Errorf("%w (use --force to erase it)", err)
		}
		return err
	}
	if err := dev.Dismount(ctx, *vol); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "labelled volume %s (pool %s, block size %d) on %s\n", *vol, *pool, bs, pos[0])
	return nil
}

func cmdTapeLs(ctx context.Context, e *env, args []string) error {
	fs := newFlags("tape ls", "strata tape ls --device DEVICE [--json]", "strata tape ls --device emulator:/srv/tapes")
	device := fs.String("device", "", "the drive or emulated library (required)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if *device == "" || fs.NArg() != 0 {
		return fmt.Errorf("%w: tape ls: want --device and no arguments", errUsage)
	}
	dev, err := tape.OpenDevice(*device)
	if err != nil {
		return err
	}
	defer dev.Close()
	vols, err := volume.List(ctx, dev)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, vols)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "BARCODE\tVOLUME\tPOOL\tSTATE\tUSED\tFILL")
	for _, v := range vols {
		fill := "-"
		if v.Capacity > 0 {
			fill = fmt.Sprintf("%.1f%%", 100*float64(v.Used)/float64(v.Capacity))
		}
		state := v.State
		if v.Error != "" {
			state += " (" + v.Error + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Barcode, v.Volume, v.Pool, state, humanBytes(v.Used), fill)
	}
	return w.Flush()
}

// deviceAndVolume resolves "VOLUME|DEVICE" with an optional --device.
func deviceAndVolume(arg, device string) (spec, vol string, err error) {
	if _, _, perr := tape.ParseDevice(arg); perr == nil && device == "" {
		return arg, "", nil
	}
	if device == "" {
		return "", "", fmt.Errorf("%w: %q is not a device (/dev/nstX, emulator:DIR): give --device for a volume id", errUsage, arg)
	}
	return device, arg, nil
}

func cmdTapeVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags("tape verify", "strata tape verify [--device DEVICE] VOLUME|DEVICE [--json]",
		"strata tape verify --device emulator:/srv/tapes V00001")
	device := fs.String("device", "", "the drive or emulated library holding VOLUME")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args, e)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: tape verify: want one VOLUME or DEVICE", errUsage)
	}
	spec, vol, err := deviceAndVolume(pos[0], *device)
	if err != nil {
		return err
	}
	dev, err := tape.OpenDevice(spec)
	if err != nil {
		return err
	}
	defer dev.Close()
	d, err := dev.Mount(ctx, vol)
	if err != nil {
		return err
	}
	var total int64
	if u, ok, err := dev.Usage(vol); ok && err == nil {
		total = u.Used
	}
	prog := newProgress(e.stderr, "verify", "bytes", total)
	pd := &progressDrive{Drive: d, prog: prog}
	info, verr := volume.Verify(pd)
	prog.Finish()
	if verr != nil && info.Label.Volume == "" {
		return verr
	}
	if vol != "" && info.Label.Volume != vol {
		return fmt.Errorf("the cartridge %s is labelled %q", vol, info.Label.Volume)
	}
	type fileRep struct {
		TapeFile int64  `json:"tape_file"`
		Bundle   string `json:"bundle"`
		Part     int    `json:"part"`
		Objects  int    `json:"objects"`
		Bytes    int64  `json:"bytes"`
		Damaged  int    `json:"damaged"`
		Error    string `json:"error,omitempty"`
	}
	rep := struct {
		Volume  string    `json:"volume"`
		Pool    string    `json:"pool"`
		Files   []fileRep `json:"files"`
		Objects int       `json:"objects"`
		Damaged []string  `json:"damaged,omitempty"`
		OK      bool      `json:"ok"`
	}{Volume: info.Label.Volume, Pool: info.Label.Pool, OK: verr == nil}
	for _, f := range info.Files {
		fr := fileRep{TapeFile: f.TapeFile, Bundle: f.Header.Bundle, Part: f.Header.Part, Objects: len(f.Objects), Bytes: f.Bytes, Damaged: f.Damaged}
		if f.Err != nil {
			fr.Error = f.Err.Error()
			rep.Damaged = append(rep.Damaged, fmt.Sprintf("tape file %d: %v", f.TapeFile, f.Err))
		}
		for _, o := range f.Objects {
			if o.Err != nil {
				rep.Damaged = append(rep.Damaged, fmt.Sprintf("tape file %d: %v", f.TapeFile, o.Err))
			}
		}
		rep.Objects += len(f.Objects)
		rep.Files = append(rep.Files, fr)
	}
	if *asJSON {
		if err := printJSON(e, rep); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "FILE\tBUNDLE\tPART\tOBJECTS\tBYTES\tDAMAGED")
		for _, f := range rep.Files {
			fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%s\t%d\n", f.TapeFile, f.Bundle, f.Part, f.Objects, humanBytes(f.Bytes), f.Damaged)
		}
		w.Flush()
		for _, dmg := range rep.Damaged {
			fmt.Fprintln(e.stdout, "DAMAGED:", dmg)
		}
	}
	if verr != nil {
		return fmt.Errorf("volume %s: %d damaged: %w", info.Label.Volume, len(rep.Damaged), volume.ErrDamaged)
	}
	if !*asJSON {
		fmt.Fprintf(e.stdout, "volume %s: %d bundles, %d objects, every hash checks\n", rep.Volume, len(rep.Files), rep.Objects)
	}
	return nil
}

func cmdTapeRebuild(ctx context.Context, e *env, args []string) error {
	fs := newFlags("tape rebuild", "strata tape rebuild DEVICE --tier NAME [--data DIR] | strata tape rebuild --tier-dir DIR --tier NAME [--data DIR]",
		"strata tape rebuild /dev/nst0 --tier tape --data /var/lib/strata")
	data := dataDirFlag(fs)
	tier := fs.String("tier", "", "the tier name the copies belong to (required)")
	tierDir := fs.String("tier-dir", "", "rebuild a directory tier from its manifests instead of a tape")
	hostFlag := fs.String("host", "", "host token of the events when no daemon runs (default: this host's name)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args, e)
	if err != nil {
		return err
	}
	if !events.ValidToken(*tier) || (len(pos) == 1) == (*tierDir != "") || len(pos) > 1 {
		return fmt.Errorf("%w: tape rebuild: want --tier and either one DEVICE or --tier-dir DIR", errUsage)
	}
	dataDir, err := filepath.Abs(*data)
	if err != nil {
		return err
	}
	var recs []store.Record
	var skipped []string
	kind := events.TierTape
	if *tierDir != "" {
		kind = events.TierDirectory
		tg, err := dir.Open(dir.Config{Name: *tier, Root: *tierDir}, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		prog := newProgress(e.stderr, "read tier", "objects", 0)
		recs, skipped, err = store.TargetRecords(ctx, tg, func(done, total int) { prog.Set(int64(done), int64(total), "") })
		prog.Finish()
		if err != nil {
			return err
		}
	} else {
		dev, err := tape.OpenDevice(pos[0])
		if err != nil {
			return err
		}
		prog := newProgress(e.stderr, "read tape", "bytes", 0)
		vrecs, _, err := volume.RebuildDevice(ctx, dev, func(d tape.Drive) tape.Drive { return &progressDrive{Drive: d, prog: prog} })
		prog.Finish()
		dev.Close()
		if err != nil {
			return err
		}
		for _, r := range vrecs {
			pos := r.Pos
			recs = append(recs, store.Record{ObjectID: r.ObjectID, Manifest: r.Manifest, PackedSize: r.PackedSize,
				PackedSum: r.PackedSum, Location: tapewriter.Location(pos), Tape: &pos})
		}
	}
	var rep tapeRebuildReply
	if daemonRunning(ctx, dataDir) {
		// The daemon publishes; send the records in batches that fit a
		// NATS message.
		for len(recs) > 0 {
			n, sz := 0, 0
			for n < len(recs) && (n == 0 || sz+len(recs[n].Manifest)*2+512 < 512<<10) {
				sz += len(recs[n].Manifest)*2 + 512
				n++
			}
			var r tapeRebuildReply
			if err := request(ctx, dataDir, "tape-rebuild", tapeRebuildRequest{Tier: *tier, Kind: kind, Records: recs[:n]}, &r, 5*time.Minute); err != nil {
				return err
			}
			rep.Published += r.Published
			rep.Skipped = append(rep.Skipped, r.Skipped...)
			recs = recs[n:]
		}
	} else {
		host := *hostFlag
		if host == "" {
			name, _ := os.Hostname()
			host = events.HostToken(name)
		}
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return fmt.Errorf("data directory: %w", err)
		}
		srv, err := openOffline(ctx, dataDir, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		rep.Published, rep.Skipped, err = store.PublishRecords(ctx, pipeline.NewEmitter(srv.JetStream(), host, "rebuild"), *tier, kind, recs)
		srv.Close()
		if err != nil {
			return err
		}
	}
	rep.Skipped = append(skipped, rep.Skipped...)
	if *asJSON {
		return printJSON(e, rep)
	}
	for _, s := range rep.Skipped {
		fmt.Fprintln(e.stdout, "skipped:", s)
	}
	fmt.Fprintf(e.stdout, "published object.stored for %d copies on tier %s (%d skipped)\n", rep.Published, *tier, len(rep.Skipped))
	if len(rep.Skipped) > 0 {
		return fmt.Errorf("%d objects could not be rebuilt: %s", len(rep.Skipped), strings.Join(rep.Skipped[:min(3, len(rep.Skipped))], "; "))
	}
	return nil
}
