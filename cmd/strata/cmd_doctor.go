package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/cmd/internal/doctor"
	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/kernelguard"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/rclone"
	"github.com/strata-hsm/strata/workers/tier/s3"
)

// Doctor's checks are in cmd/internal/doctor; this file gathers what they
// look at: the configuration, the daemon's status, and (through the
// daemon's "doctor" verb) the tiers as the daemon has them open.

// defaultConfigFile is where the packaged unit reads its configuration;
// doctor reads it too when neither --config nor --data is given.
const defaultConfigFile = "/etc/strata/strata.toml"

// clockFloor: a clock before this date is wrong (left at 1970, or at a
// board's default date).
var clockFloor = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

type doctorCmd struct {
	Config string   `placeholder:"FILE" complete:"file" help:"TOML configuration file (default: /etc/strata/strata.toml when it exists and --data is not given)."`
	Hot    []string `sep:"none" placeholder:"DIR" complete:"dir" help:"A hot tree to check besides the configured ones (repeatable)."`
	JSON   bool     `name:"json" help:"Print JSON."`
}

func (*doctorCmd) Example() string { return "strata doctor --config /etc/strata/strata.toml" }

// Help is shown under the usage line of strata doctor --help.
func (*doctorCmd) Help() string {
	return "Checks the daemon, every tier (written, read back and deleted), free space in the data directory and hot trees, " +
		"the permissions of files holding secrets, the NATS listener, the holder and the probe guard, the kernel mode of each hot tree " +
		"and the clock. Each finding that is not ok says what to do; any problem makes the exit code 1."
}

// doctorDaemonReply answers the daemon's "doctor" verb: what only the
// daemon can check.
type doctorDaemonReply struct {
	Findings  []doctor.Finding `json:"findings"`
	Now       time.Time        `json:"now"`
	LastEvent time.Time        `json:"last_event"` // of the event log (zero when empty)
}

func (c *doctorCmd) Run(ctx context.Context, e *env, g *globals) error {
	var r doctor.Report
	cfgPath := c.Config
	if cfgPath == "" && g.Data == "" {
		if _, err := os.Stat(defaultConfigFile); err == nil {
			cfgPath = defaultConfigFile
		}
	}
	cfg := Config{DataDir: g.dataDir()} // the defaults, with --data's tier
	cfg.EnsureDefaults()
	if cfgPath != "" {
		loaded, err := LoadConfig(cfgPath)
		if err == nil {
			if g.Data != "" {
				loaded.DataDir = g.Data
			}
			loaded.EnsureDefaults()
			err = loaded.Validate()
		}
		if err != nil {
			r.Add(doctor.Finding{Check: doctor.CheckConfig, Subject: cfgPath, Status: doctor.Problem, Detail: err.Error(),
				Fix: "fix the key named (strata.example.toml documents every key); strata run refuses this file"})
		} else {
			cfg = loaded
			r.Add(doctor.Finding{Check: doctor.CheckConfig, Subject: cfgPath, Status: doctor.OK, Detail: "valid"})
		}
	}
	dataDir := cfg.DataDir

	st, err := daemonStatus(ctx, dataDir)
	up := err == nil
	if up {
		r.Add(doctor.Finding{Check: doctor.CheckDaemon, Subject: dataDir, Status: doctor.OK,
			Detail: fmt.Sprintf("strata %s, pid %d, up %s, host %s", st.Version, st.PID, time.Duration(st.UptimeSeconds*float64(time.Second)).Round(time.Second), st.Host)})
	} else {
		r.Add(doctor.Finding{Check: doctor.CheckDaemon, Subject: dataDir, Status: doctor.Problem,
			Detail: "no daemon answers: " + err.Error(),
			Fix:    "start it: systemctl start strata (or strata run --config FILE); journalctl -u strata says why it stopped"})
	}

	r.Add(c.kernelAndTrees(cfg, st, up)...)

	var last time.Time
	if up {
		var dr doctorDaemonReply
		if err := request(ctx, dataDir, "doctor", struct{}{}, &dr, 3*time.Minute); err != nil {
			r.Add(doctor.Finding{Check: doctor.CheckTier, Status: doctor.Problem, Detail: "the daemon could not check its tiers: " + err.Error(),
				Fix: "see the daemon's log (journalctl -u strata)"})
		}
		r.Add(dr.Findings...)
		last = dr.LastEvent
	} else {
		r.Add(probeTiers(ctx, cfg)...)
	}

	fs, err := doctorFS(dataDir)
	r.Add(doctor.Space("data directory", dataDir, fs, err))
	staging := filepath.Join(dataDir, "staging")
	var a, b unix.Stat_t
	if unix.Stat(dataDir, &a) == nil && unix.Stat(staging, &b) == nil && a.Dev != b.Dev {
		fs, err := doctorFS(staging)
		r.Add(doctor.Space("staging", staging, fs, err))
	}
	for _, cond := range st.Conditions {
		sev := doctor.Warning
		if cond.Kind == pipeline.KindNoSpace {
			sev = doctor.Problem
		}
		r.Add(doctor.Finding{Check: doctor.CheckCondition, Subject: cond.Path, Status: sev,
			Detail: fmt.Sprintf("the daemon reports %s since %s: %s", cond.Title(), cond.Since.Local().Format(time.TimeOnly), cond.Effect), Fix: cond.Hint})
	}

	r.Add(doctor.Credentials("NATS credentials", filepath.Join(dataDir, "credentials.json")))
	if cfgPath != "" && hasSecrets(cfg) {
		r.Add(doctor.Credentials("configuration with tier secrets", cfgPath))
	}
	r.Add(doctor.NATS(cfg.NATS.Listen, cfg.NATS.Port, st.NATS, up))
	r.Add(holderFinding(dataDir, cfg, up), guardFinding(cfg, up))
	r.Add(doctor.Clock(time.Now(), last, clockFloor))

	if c.JSON {
		if err := printJSON(e, r); err != nil {
			return err
		}
	} else if err := r.Write(e.stdout); err != nil {
		return err
	}
	return r.Err()
}

// daemonStatus asks a running daemon for its status within a few seconds.
func daemonStatus(ctx context.Context, dataDir string) (statusReply, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var r statusReply
	err := request(ctx, dataDir, "status", struct{}{}, &r, 5*time.Second)
	return r, err
}

// kernelAndTrees checks the kernel's fanotify mode and every hot tree: the
// configured ones, the running daemon's and --hot.
func (c *doctorCmd) kernelAndTrees(cfg Config, st statusReply, up bool) []doctor.Finding {
	ok, rel := interceptor.KernelHasPreAccess()
	preAccess := ok && cfg.Interceptor.Mode != string(interceptor.ModeOpenPerm)
	k := doctor.Finding{Check: doctor.CheckKernel, Subject: rel, Status: doctor.OK,
		Detail: fmt.Sprintf("FAN_PRE_ACCESS %v; mode %s (configured: %s)", ok, map[bool]string{true: "pre-access", false: "open-perm"}[preAccess], cfg.Interceptor.Mode)}
	switch {
	case !ok && cfg.Interceptor.Mode == string(interceptor.ModePreAccess):
		k.Status, k.Fix = doctor.Problem, "interceptor.mode = \"pre-access\" needs Linux >= 6.14: boot a newer kernel, or set interceptor.mode = \"auto\""
	case !ok:
		k.Status, k.Fix = doctor.Warning, "on Linux >= 6.14 a read of a stub waits only for the bytes it reads; here it waits for the whole file"
	}
	out := []doctor.Finding{k}
	var trees []string
	for _, p := range c.Hot {
		if abs, err := filepath.Abs(p); err == nil {
			trees = append(trees, abs)
		}
	}
	trees = append(trees, cfg.hotRoots()...)
	if up {
		trees = append(trees, st.HotTrees...)
	}
	slices.Sort(trees)
	trees = slices.Compact(trees)
	if len(trees) == 0 {
		out = append(out, doctor.Finding{Check: doctor.CheckHotTree, Status: doctor.Warning, Detail: "none configured: Strata manages nothing",
			Fix: "add a [[hot]] path to the configuration (or strata run --hot DIR)"})
	}
	for _, p := range trees {
		sup, why := interceptor.Supported(p)
		fs, err := doctorFS(p)
		out = append(out, doctor.HotTree(p, preAccess, sup, why, float64(cfg.Policy.HighWatermark), fs, err)...)
	}
	return out
}

// hasSecrets reports whether the configuration holds a tier's secret.
func hasSecrets(cfg Config) bool {
	for _, t := range cfg.Tiers {
		if t.SecretKey != "" || t.AccessKey != "" || len(t.Env) > 0 {
			return true
		}
	}
	return false
}

// probeTiers checks the configured tiers from the CLI, when no daemon
// runs: each is opened as the daemon would open it and written to.
func probeTiers(ctx context.Context, cfg Config) []doctor.Finding {
	var out []doctor.Finding
	logger := slog.New(slog.DiscardHandler)
	for _, t := range cfg.Tiers {
		var tg tier.Target
		var err error
		switch t.Kind {
		case events.TierDirectory:
			if within(t.Path, cfg.DataDir) {
				if _, serr := os.Stat(t.Path); errors.Is(serr, os.ErrNotExist) {
					out = append(out, doctor.Finding{Check: doctor.CheckTier, Subject: t.Name, Status: doctor.OK,
						Detail: "directory tier " + t.Path + ": not there yet (strata run creates it)"})
					continue
				}
			}
			tg, err = dir.Open(dirConfig(&t), logger)
		case events.TierS3:
			tg, err = s3.Open(s3Config(&t), logger)
		case events.TierRclone:
			f := doctor.Rclone(ctx, t.Name, cmp.Or(t.Binary, "rclone"))
			if f.Status != doctor.OK {
				out = append(out, f)
				continue
			}
			tg, err = rclone.Open(rcloneConfig(&t), logger)
		case events.TierTape:
			f := doctor.Finding{Check: doctor.CheckTier, Subject: t.Name, Status: doctor.OK, Detail: "tape tier " + t.Device + ": checked by the daemon (it holds the drive)"}
			if dev, emu := strings.CutPrefix(t.Device, "emulator:"); !emu {
				if _, serr := os.Stat(dev); serr != nil {
					f.Status, f.Detail, f.Fix = doctor.Problem, "tape tier: "+serr.Error(), "connect the drive (and load the st driver), or fix the tier's device"
				}
			}
			out = append(out, f)
			continue
		}
		if err != nil {
			out = append(out, doctor.Finding{Check: doctor.CheckTier, Subject: t.Name, Status: doctor.Problem, Detail: err.Error(),
				Fix: "fix the tier's configuration: strata run refuses it too"})
			continue
		}
		out = append(out, probeTier(ctx, tg))
	}
	return out
}

// doctorFS measures the filesystem of path as the daemon's Space does.
func doctorFS(path string) (doctor.FS, error) {
	fs, err := pipeline.StatFS(path)
	if err != nil {
		return doctor.FS{}, err
	}
	return doctor.FS{Type: fs.Type, Device: fs.Device, Mount: fs.Mount, Free: fs.Free, Total: fs.Total,
		Reserve: pipeline.Reserve(fs.Total), LowInodes: fs.Inodes > 0 && fs.FreeInodes < 64, FreeText: fs.FreeString()}, nil
}

// probeTier checks one tier: a write probe, or for tape (which a probe
// would cost a bundle) a question about an object no tape holds.
func probeTier(ctx context.Context, tg tier.Target) doctor.Finding {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	var err error
	wrote := tg.Kind() != events.TierTape
	if wrote {
		err = tier.WriteProbe(ctx, tg)
	} else if _, err = tg.Stat(ctx, probeID); errors.Is(err, tier.ErrNotFound) {
		err = nil
	}
	return doctor.Tier(tg.Name(), tg.Kind(), wrote, time.Since(start), err, errors.Is(err, tier.ErrUnavailable))
}

// ctlDoctor is the daemon's side of doctor: a write probe of every tier as
// the daemon has it open (its credentials and environment), the tape
// volumes' states, and the time of the newest event.
func (d *daemon) ctlDoctor(ctx context.Context, _ []byte) (any, error) {
	rep := doctorDaemonReply{Now: time.Now(), Findings: []doctor.Finding{}}
	if info, err := d.js.Stream(ctx, pipeline.StreamEvents); err == nil {
		rep.LastEvent = info.CachedInfo().State.LastTime
	}
	// Every configured tier, and every target open (they are the same
	// set unless one could not be opened).
	names := d.cfg.tierNames()
	for name := range d.stages.targets {
		names = append(names, name)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	found := make([]doctor.Finding, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		tg := d.stages.targets[name]
		if tg == nil {
			found[i] = doctor.Finding{Check: doctor.CheckTier, Subject: name, Status: doctor.Problem, Detail: "not open on this host",
				Fix: "see the daemon's log at start (journalctl -u strata)"}
			continue
		}
		wg.Go(func() { found[i] = probeTier(ctx, tg) })
	}
	wg.Wait()
	rep.Findings = append(rep.Findings, found...)
	for name, tt := range d.stages.tapeTiers {
		for _, v := range tt.Volumes() {
			if v.Error != "" {
				rep.Findings = append(rep.Findings, doctor.Finding{Check: doctor.CheckTier, Subject: name + " volume " + v.Volume, Status: doctor.Problem,
					Detail: fmt.Sprintf("%s since %s: %s", v.State, v.At.Format(time.RFC3339), v.Error),
					Fix:    "load a writable, labelled volume (strata tape label; strata tape ls shows them)"})
			}
		}
	}
	return rep, nil
}

// holderFinding says what guards the stubs of dataDir while no daemon runs.
func holderFinding(dataDir string, cfg Config, up bool) doctor.Finding {
	f := doctor.Finding{Check: doctor.CheckHolder, Subject: holderSocket(dataDir), Status: doctor.OK}
	st, err := interceptor.QueryHolder(holderSocket(dataDir))
	switch {
	case err == nil:
		f.Detail = fmt.Sprintf("holder pid %d: %s", st.PID, describeHolder(st))
		if st.State == "empty" && up {
			f.Status, f.Fix = doctor.Problem, "restart the daemon (systemctl restart strata): it hands its fanotify group to the holder at start"
		}
	case !cfg.Interceptor.HolderOn():
		f.Status = doctor.Warning
		f.Detail = "UNGUARDED: interceptor.holder = false; when the daemon stops or dies, stubs read as zeros"
		f.Fix = "set interceptor.holder = true (the default)"
	default:
		f.Status = doctor.Problem
		f.Detail = "NO HOLDER answers for " + dataDir + ": if the daemon stops or dies, stubs read as zeros"
		f.Fix = "strata run starts one; under systemd: systemctl enable --now strata-holder.service (dist/systemd/strata-holder.service)"
	}
	return f
}

// guardFinding says whether programs that probe holes are stopped.
func guardFinding(cfg Config, up bool) doctor.Finding {
	f := doctor.Finding{Check: doctor.CheckProbeGuard, Subject: probeGuardDir(), Status: doctor.OK}
	st, err := kernelguard.ReadStatus(probeGuardDir())
	switch {
	case err == nil && st.Loaded:
		f.Detail = fmt.Sprintf("guard loaded (%s): %d stubs registered, %d probers stopped, %d probes by kernel threads only recorded",
			st.Action, st.Stubs, st.Counters.ProbesKilled+st.Counters.ProbesLogged, st.Counters.KernelThreads)
	case cfg.Interceptor.ProbeGuard == "off":
		f.Status, f.Detail = doctor.Warning, "off (interceptor.probe_guard = \"off\"): a program that probes a large stub's holes copies it as zeros"
		f.Fix = "set interceptor.probe_guard = \"kill\" (the default)"
	default:
		if serr := kernelguard.Supported(); serr != nil {
			f.Status = doctor.Warning
			f.Detail = "NOT PROTECTED: " + serr.Error() + "; a program that probes a large stub's holes (SEEK_DATA, FIEMAP) and is not in interceptor.whole_file_programs copies it as zeros"
			f.Fix = "boot a kernel with BPF and BTF (CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF), or list such programs in interceptor.whole_file_programs"
		} else if up {
			f.Status, f.Detail = doctor.Problem, "supported by this kernel but not loaded while the daemon runs"
			f.Fix = "see the daemon's log at start (journalctl -u strata | grep 'probe guard')"
		} else {
			f.Detail = "supported by this kernel; loaded when the daemon starts (interceptor.probe_guard)"
		}
	}
	return f
}
