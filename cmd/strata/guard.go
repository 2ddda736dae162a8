package main

import (
	"cmp"
	"context"
	"errors"
	"os"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/kernelguard"
	"github.com/strata-hsm/strata/workers/stub"
)

// The probe guard (workers/kernelguard) stops a program that asks a stub
// where its data is (SEEK_DATA, SEEK_HOLE, FIEMAP, FIBMAP) before it can
// copy the hole as zeros: those calls raise no fanotify event. The daemon
// loads it, exempts itself (it probes its own stubs), registers every stub
// through the interceptor, and recalls whole each stub a program was
// stopped on, so that the program's retry gets the bytes.

// guardDirEnv overrides the guard's bpffs directory (tests give each run
// its own).
const guardDirEnv = "STRATA_PROBE_GUARD_DIR"

// probeGuardDir is where the guard is pinned.
func probeGuardDir() string { return cmp.Or(os.Getenv(guardDirEnv), kernelguard.DefaultPinDir) }

// loadProbeGuard loads the guard as [interceptor] probe_guard says; nil
// when it is off or this kernel cannot run it (said loudly: programs that
// probe holes and are not in whole_file_programs then copy large stubs as
// zeros).
func (d *daemon) loadProbeGuard() *kernelguard.Guard {
	mode := d.cfg.Interceptor.ProbeGuard
	if mode == probeGuardOff {
		d.logger.Warn("interceptor.probe_guard = off: a program that probes a large stub's holes (SEEK_DATA, FIEMAP) and is not in whole_file_programs copies it as zeros")
		return nil
	}
	action := kernelguard.ActionKill
	if mode == probeGuardLog {
		action = kernelguard.ActionLog
	}
	g, err := kernelguard.Load(kernelguard.Config{PinDir: probeGuardDir(), Action: action})
	if err == nil {
		err = g.Exempt(os.Getpid())
		if err != nil {
			g.Close()
		}
	}
	if err != nil {
		d.logger.Error("probe guard not loaded: a program that probes a large stub's holes (SEEK_DATA, FIEMAP) and is not in whole_file_programs copies it as zeros (strata doctor)", "err", err)
		return nil
	}
	d.logger.Info("probe guard loaded", "dir", probeGuardDir(), "action", string(action))
	return g
}

// serveProbeRecords logs each program the guard stopped and asks for a
// whole recall of its stub, until ctx ends.
func (d *daemon) serveProbeRecords(ctx context.Context, g *kernelguard.Guard) error {
	rd, err := g.Records()
	if err != nil {
		d.logger.Error("probe guard records: stopped programs are not logged and their stubs not recalled", "err", err)
		return nil
	}
	defer rd.Close()
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "interceptor")
	for ctx.Err() == nil {
		rd.SetDeadline(time.Now().Add(time.Second))
		r, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				d.logger.Error("probe guard records", "err", err)
			}
			return nil
		}
		d.probed(ctx, em, r)
	}
	return nil
}

// probed handles one record: the stub is found in the catalog by its
// device and inode, and a whole recall of it requested (PrefetchStage).
func (d *daemon) probed(ctx context.Context, em *pipeline.Emitter, r kernelguard.Record) {
	var f *catalog.File
	err := d.cat.Stubs(func(x catalog.File) error {
		if x.Stat.Dev == r.Dev && x.Stat.Inode == r.Ino {
			f = &x
			return errStopWalk
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopWalk) {
		d.logger.Error("probe guard: look the stub up", "record", r.String(), "err", err)
		return
	}
	var info stub.Info
	if f != nil {
		info, err = stub.ReadPath(f.Path)
	}
	if f == nil || err != nil || info.FileID != f.ID || info.State != stub.Released {
		d.logger.Warn("probe guard stopped a program on a file that is no stub the catalog knows", "record", r.String())
		return
	}
	d.logger.Warn("probe guard stopped a program asking where a stub's data is; recalling the stub whole so that a retry gets its bytes",
		"path", f.Path, "process", r.Comm, "pid", r.TGID, "op", r.Op.String(), "killed", r.Killed)
	_, err = em.Emit(ctx, &events.RecallRequested{FileID: info.FileID, Path: f.Path, ObjectID: info.ObjectID, Length: info.Size,
		PID: int32(r.TGID), Process: r.Comm, Reason: events.RecallProbe}, info.FileID, info.ObjectID, info.ReleaseID, events.RecallProbe)
	if err != nil {
		d.logger.Error("probe guard: request the recall", "path", f.Path, "err", err)
	}
}

var errStopWalk = errors.New("stop")
