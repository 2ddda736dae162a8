package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
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
		Copy:    tapewriter.CatalogCopy(d.cat, name),
		// Armed only by STRATA_FAILPOINTS, in crash tests.
		Failpoints: failpoint.New(),
	}
}

// ---- rebuild: one mechanism for every tier ----

// progressDrive counts the bytes read through a drive for a progress bar.
type progressDrive struct {
	tape.Drive
	prog *progress.Bar
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

type tapeCmd struct {
	Label   tapeLabelCmd   `cmd:"" help:"Label a cartridge (an emulated one is created) for a pool."`
	Ls      tapeLsCmd      `cmd:"" help:"List the volumes of a drive or emulated library."`
	Verify  tapeVerifyCmd  `cmd:"" help:"Read a volume end to end and check every hash."`
	Rebuild tapeRebuildCmd `cmd:"" help:"Rebuild catalog entries from a tape or a directory tier alone."`
}

// Help is shown under the usage line of strata tape --help.
func (*tapeCmd) Help() string {
	return "A DEVICE is /dev/nstX (a real drive: the loaded cartridge) or emulator:DIR " +
		"(an emulated library whose cartridges are DIR's subdirectories, or one " +
		"cartridge directory). Work on a drive that the daemon is not writing to."
}

func (*tapeCmd) Example() string {
	return "strata tape label emulator:/srv/tapes --volume V00001 --pool main\n" +
		"strata tape ls --device /dev/nst0\n" +
		"strata tape verify --device emulator:/srv/tapes V00001\n" +
		"strata tape rebuild /dev/nst0 --tier tape --data /var/lib/strata"
}

type tapeLabelCmd struct {
	Pool      string `required:"" placeholder:"P" help:"Media pool of the volume."`
	Volume    string `placeholder:"ID" help:"Volume id (barcode); required for a real drive and an emulated library."`
	BlockSize string `name:"block-size" default:"512KiB" placeholder:"N" help:"Tape block size, 256KiB to 1MiB (the tar blocking factor; default ${default})."`
	Capacity  string `default:"18TB" placeholder:"SIZE" help:"Capacity of a new emulated cartridge (default ${default})."`
	Sequence  int    `default:"1" placeholder:"N" help:"Sequence number of the volume in its set (default ${default})."`
	Force     bool   `help:"Relabel a cartridge that already has a Strata label (erases it)."`
	JSON      bool   `name:"json" help:"Print JSON."`
	Device    string `arg:"" complete:"file" help:"/dev/nstX or emulator:DIR."`
}

func (*tapeLabelCmd) Example() string {
	return "strata tape label emulator:/srv/tapes --volume V00001 --pool main"
}

// tapeLabelReply is `strata tape label --json`.
type tapeLabelReply struct {
	Volume    string `json:"volume"`
	Pool      string `json:"pool"`
	BlockSize int64  `json:"block_size"`
	Device    string `json:"device"`
}

func (c *tapeLabelCmd) Run(ctx context.Context, e *env) error {
	vol := &c.Volume
	bs, err := parseSize(c.BlockSize)
	if err != nil {
		return fmt.Errorf("%w: --block-size: %w", errUsage, err)
	}
	capacity, err := parseSize(c.Capacity)
	if err != nil || capacity < 16<<20 {
		return fmt.Errorf("%w: --capacity %q: want at least 16MiB", errUsage, c.Capacity)
	}
	if *vol, err = volume.Prepare(c.Device, *vol, capacity); err != nil {
		return fmt.Errorf("%w: tape label: %w", errUsage, err)
	}
	dev, err := tape.OpenDevice(c.Device)
	if err != nil {
		return err
	}
	defer dev.Close()
	d, err := dev.Mount(ctx, *vol)
	if err != nil {
		return err
	}
	if err := volume.Label(d, *vol, c.Pool, int(bs), c.Sequence, c.Force); err != nil {
		if errors.Is(err, volume.ErrLabelled) {
			return fmt.Errorf("%w (use --force to erase it)", err)
		}
		return err
	}
	if err := dev.Dismount(ctx, *vol); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, tapeLabelReply{Volume: *vol, Pool: c.Pool, BlockSize: bs, Device: c.Device})
	}
	fmt.Fprintf(e.stdout, "labelled volume %s (pool %s, block size %d) on %s\n", *vol, c.Pool, bs, c.Device)
	return nil
}

type tapeLsCmd struct {
	Device string `required:"" placeholder:"DEVICE" complete:"file" help:"The drive or emulated library."`
	JSON   bool   `name:"json" help:"Print JSON."`
}

func (*tapeLsCmd) Example() string { return "strata tape ls --device emulator:/srv/tapes" }

func (c *tapeLsCmd) Run(ctx context.Context, e *env) error {
	dev, err := tape.OpenDevice(c.Device)
	if err != nil {
		return err
	}
	defer dev.Close()
	vols, err := volume.List(ctx, dev)
	if err != nil {
		return err
	}
	if c.JSON {
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Barcode, v.Volume, v.Pool, state, progress.Bytes(v.Used), fill)
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

type tapeVerifyCmd struct {
	Device string `placeholder:"DEVICE" complete:"file" help:"The drive or emulated library holding VOLUME."`
	JSON   bool   `name:"json" help:"Print JSON."`
	Target string `arg:"" name:"volume-or-device" complete:"file" help:"A volume id (with --device), or a DEVICE holding one cartridge."`
}

func (*tapeVerifyCmd) Example() string {
	return "strata tape verify --device emulator:/srv/tapes V00001"
}

func (c *tapeVerifyCmd) Run(ctx context.Context, e *env) error {
	spec, vol, err := deviceAndVolume(c.Target, c.Device)
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
	prog := progress.New(e.stderr, "verify", "bytes", total)
	pd := &progressDrive{Drive: d, prog: prog}
	info, verr := volume.Verify(pd)
	prog.Finish()
	if verr != nil && info.Label.Volume == "" {
		return verr
	}
	if vol != "" && info.Label.Volume != vol {
		return fmt.Errorf("the cartridge %s is labelled %q", vol, info.Label.Volume)
	}
	rep := volume.ReportOf(info, verr)
	if c.JSON {
		if err := printJSON(e, rep); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "FILE\tBUNDLE\tPART\tOBJECTS\tBYTES\tDAMAGED")
		for _, f := range rep.Files {
			fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%s\t%d\n", f.TapeFile, f.Bundle, f.Part, f.Objects, progress.Bytes(f.Bytes), f.Damaged)
		}
		w.Flush()
		for _, dmg := range rep.Damaged {
			fmt.Fprintln(e.stdout, "DAMAGED:", dmg)
		}
	}
	if verr != nil {
		return fmt.Errorf("volume %s: %d damaged: %w", info.Label.Volume, len(rep.Damaged), volume.ErrDamaged)
	}
	if !c.JSON {
		fmt.Fprintf(e.stdout, "volume %s: %d bundles, %d objects, every hash checks\n", rep.Volume, len(rep.Files), rep.Objects)
	}
	return nil
}

type tapeRebuildCmd struct {
	Tier    string `required:"" placeholder:"NAME" help:"The tier name the copies belong to."`
	TierDir string `name:"tier-dir" placeholder:"DIR" complete:"dir" help:"Rebuild a directory tier from its manifests instead of a tape."`
	Host    string `placeholder:"NAME" help:"Host token of the events when no daemon runs (default: this host's name)."`
	JSON    bool   `name:"json" help:"Print JSON."`
	Device  string `arg:"" optional:"" complete:"file" help:"/dev/nstX or emulator:DIR (or give --tier-dir)."`
}

func (*tapeRebuildCmd) Example() string {
	return "strata tape rebuild /dev/nst0 --tier tape --data /var/lib/strata\n" +
		"strata tape rebuild --tier-dir /mnt/archive --tier cold"
}

func (c *tapeRebuildCmd) Run(ctx context.Context, e *env, g *globals) error {
	tier, tierDir := &c.Tier, &c.TierDir
	if !events.ValidToken(c.Tier) || (c.Device != "") == (c.TierDir != "") {
		return fmt.Errorf("%w: tape rebuild: want --tier and either one DEVICE or --tier-dir DIR (see strata tape rebuild --help)", errUsage)
	}
	dataDir, err := filepath.Abs(g.dataDir())
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
		prog := progress.New(e.stderr, "read tier", "objects", 0)
		recs, skipped, err = store.TargetRecords(ctx, tg, func(done, total int) { prog.Set(int64(done), int64(total), "") })
		prog.Finish()
		if err != nil {
			return err
		}
	} else {
		dev, err := tape.OpenDevice(c.Device)
		if err != nil {
			return err
		}
		prog := progress.New(e.stderr, "read tape", "bytes", 0)
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
		host := c.Host
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
	if c.JSON {
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
