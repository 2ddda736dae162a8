package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

// The CLI talks to the daemon over NATS request/reply on
// events.ControlSubject(host, verb). A request body is the verb's JSON
// request; the reply is a ctlReply.

// ctlReply is the envelope of every control reply.
type ctlReply struct {
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// ctlHandler answers one verb.
type ctlHandler func(ctx context.Context, req []byte) (any, error)

// daemonInfoFile tells the CLI which host token the daemon on a data
// directory uses (its control subjects contain it).
const daemonInfoFile = "daemon.json"

type daemonInfo struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

// serveControl subscribes the control verbs and returns a function that
// stops answering.
func (d *daemon) serveControl() (func(), error) {
	info, _ := json.Marshal(daemonInfo{Host: d.cfg.Host, PID: os.Getpid(), Started: d.started})
	if err := writeFileAtomic(filepath.Join(d.cfg.DataDir, daemonInfoFile), info, 0o644); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var subs []*nats.Subscription
	stop := func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		cancel()
	}
	for verb, h := range d.controlHandlers() {
		sub, err := d.nc.Subscribe(events.ControlSubject(d.cfg.Host, verb), func(m *nats.Msg) {
			go d.answer(ctx, verb, h, m)
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("subscribe control %s: %w", verb, err)
		}
		subs = append(subs, sub)
	}
	if err := d.nc.Flush(); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

func (d *daemon) answer(ctx context.Context, verb string, h ctlHandler, m *nats.Msg) {
	var rep ctlReply
	res, err := h(ctx, m.Data)
	if err == nil {
		rep.Result, err = json.Marshal(res)
	}
	if err != nil {
		rep.Error = err.Error()
		d.logger.Debug("control request failed", "verb", verb, "err", err)
	}
	b, _ := json.Marshal(rep)
	if err := m.Respond(b); err != nil {
		d.logger.Warn("control reply", "verb", verb, "bytes", len(b), "err", err)
		// Tell the caller instead of letting it wait for its timeout.
		b, _ = json.Marshal(ctlReply{Error: fmt.Sprintf("%s: the reply could not be sent (%d bytes): %v", verb, len(b), err)})
		_ = m.Respond(b)
	}
}

// controlHandlers maps each verb to its handler.
func (d *daemon) controlHandlers() map[string]ctlHandler {
	return map[string]ctlHandler{
		"status":  d.ctlStatus,
		"ls":      d.ctlLs,
		"verify":  d.ctlVerify,
		"export":  d.ctlExport,
		"archive": d.ctlArchive,
		"pin":     d.ctlPin,
		"preview": d.ctlPreview,
		"recall":  d.ctlRecall,
		"restore": d.ctlRestore,

		"tape-rebuild": d.ctlTapeRebuild,
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
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, events.ControlSubject(info.Host, verb), body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%s: the daemon is not answering yet (still starting?): %w", verb, err)
		}
		return fmt.Errorf("%s: %w", verb, err)
	}
	var rep ctlReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("%s: bad reply: %w", verb, err)
	}
	if rep.Error != "" {
		return errors.New(rep.Error)
	}
	if out != nil {
		return json.Unmarshal(rep.Result, out)
	}
	return nil
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
