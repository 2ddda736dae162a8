package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/scanner"
)

// daemonInfoFile tells the CLI which host token the daemon on a data
// directory uses (its control subjects contain it).
const daemonInfoFile = "daemon.json"

type daemonInfo struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	// Metrics is the address of the metrics and status page listener
	// (empty: none).
	Metrics string `json:"metrics,omitempty"`
}

// serveControl writes the daemon info file, subscribes the control verbs
// and returns a function that stops answering.
func (d *daemon) serveControl(ctx context.Context) (func(), error) {
	info, _ := json.Marshal(daemonInfo{Host: d.cfg.Host, PID: os.Getpid(), Started: d.started, Metrics: d.metricsAddr})
	if err := writeFileAtomic(filepath.Join(d.cfg.DataDir, daemonInfoFile), info, 0o600); err != nil {
		return nil, err
	}
	return pipeline.ServeControl(ctx, d.nc, d.cfg.Host, d.controlHandlers(), d.logger)
}

// controlHandlers maps each verb to its handler.
func (d *daemon) controlHandlers() map[string]pipeline.ControlHandler {
	h := map[string]pipeline.ControlHandler{
		"status":       d.ctlStatus,
		"verify":       d.ctlVerify,
		"export":       d.ctlExport,
		"recall":       interceptor.RecallVerb(pipeline.NewEmitter(d.js, d.cfg.Host, "recall"), d.cfg.hotRoots(), d.placer()),
		"restore":      recall.RestoreVerb(d.stages.reader, d.cat),
		"tape-rebuild": d.ctlTapeRebuild,
		"doctor":       d.ctlDoctor,
	}
	pol := d.cfg.scanPolicy()
	pol.Pinned = scanner.PinnedByCatalog(d.cat)
	verbs := scanner.Verbs{Policy: pol, Catalog: d.cat, JS: d.js, Host: d.cfg.Host, Failpoints: failpoint.New()}
	maps.Copy(h, verbs.Handlers())
	maps.Copy(h, pipeline.ConsumerVerbs(d.js, d.srv.OwnerToken(), d.cfg.NATS.ReaderDurables))
	d.refuseWhenFull(h, "archive", "pin") // not recall: reading stubs must go on
	return h
}

// placer tells the recall verb where each object is read from.
func (d *daemon) placer() interceptor.Placer {
	return func(objectID string) (string, int, *events.TapePosition, error) {
		p, err := d.stages.reader.Placement(objectID)
		return p.Tier, p.Cost, p.Tape, err
	}
}

// errDaemonRunning is returned by commands that need the data directory to
// themselves.
var errDaemonRunning = errors.New("the strata daemon is running on this data directory")

// request sends one control request to the daemon on dataDir and decodes
// the result into out.
func request(ctx context.Context, dataDir, verb string, req, out any, timeout time.Duration) error {
	nc, err := pipeline.Dial(ctx, dataDir)
	if err != nil {
		return err
	}
	defer nc.Close()
	return requestOn(ctx, nc, dataDir, verb, req, out, timeout)
}

func requestOn(ctx context.Context, nc *nats.Conn, dataDir, verb string, req, out any, timeout time.Duration) error {
	b, err := os.ReadFile(filepath.Join(dataDir, daemonInfoFile))
	if err != nil {
		return fmt.Errorf("daemon info: %w (is the daemon still starting?)", err)
	}
	var info daemonInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return fmt.Errorf("daemon info %s: %w", daemonInfoFile, err)
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return pipeline.Request(rctx, nc, info.Host, verb, req, out)
}

// writeFileAtomic writes b to path through a temp file, fsync and rename.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
