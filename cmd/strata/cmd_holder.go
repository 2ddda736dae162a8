package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/strata-hsm/strata/workers/interceptor"
)

// The holder keeps the interceptor's fanotify group — the marks on stubs
// and the programs waiting on them — while no daemon runs (crash or
// stop). These commands show it and, to stop guarding stubs for good,
// stop it.

type holderCmds struct {
	Status holderStatusCmd `cmd:"" default:"withargs" help:"Show what the holder does: a daemon holds the group, programs wait for one, or are denied."`
	Stop   holderStopCmd   `cmd:"" help:"Stop the holder while no daemon runs: stubs are then unguarded and read as zeros."`
}

func (*holderCmds) Example() string { return "strata holder status\nstrata holder stop --unguard" }

// holderSocket is where the daemon of dataDir keeps its holder (stages.go).
func holderSocket(dataDir string) string {
	return filepath.Join(dataDir, "interceptor", "holder.sock")
}

type holderStatusCmd struct {
	JSON bool `name:"json" help:"Print JSON."`
}

func (*holderStatusCmd) Example() string { return "strata holder status --json" }

func (c *holderStatusCmd) Run(e *env, g *globals) error {
	st, err := interceptor.QueryHolder(holderSocket(g.dataDir()))
	if err != nil {
		return fmt.Errorf("no holder answers for %s (%w): stubs are guarded only while the daemon runs", g.dataDir(), err)
	}
	if c.JSON {
		return printJSON(e, st)
	}
	fmt.Fprintf(e.stdout, "holder pid %d: %s\n", st.PID, describeHolder(st))
	return nil
}

// describeHolder says in words what a holder in state st does.
func describeHolder(st interceptor.HolderState) string {
	since := st.Since.Format(time.RFC3339)
	switch st.State {
	case "session":
		return "a daemon holds the fanotify group (since " + since + ")"
	case "waiting":
		return fmt.Sprintf("no daemon since %s; programs touching stubs wait for one, then get EIO after %s", since, st.Grace)
	case "denying":
		return fmt.Sprintf("no daemon; programs touching stubs get EIO (since %s; %d denied)", since, st.Denied)
	case "empty":
		return "holds no fanotify group: stubs are unguarded until a daemon starts"
	}
	return st.State
}

type holderStopCmd struct {
	Unguard bool `help:"Confirm that stubs will read as zeros, without an error, until a daemon starts."`
}

func (*holderStopCmd) Example() string { return "strata holder stop --unguard" }

func (c *holderStopCmd) Run(e *env, g *globals) error {
	sock := holderSocket(g.dataDir())
	st, err := interceptor.QueryHolder(sock)
	if err != nil {
		return fmt.Errorf("no holder answers for %s: %w", g.dataDir(), err)
	}
	if st.State == "session" {
		return errors.New("a daemon holds the fanotify group: stop the daemon first (the holder then keeps stubs guarded)")
	}
	if !c.Unguard && st.State != "empty" {
		return fmt.Errorf("%w: the holder guards stubs while no daemon runs (%s); stopping it lets every stub read as zeros — add --unguard to do it anyway, or recall the files first (strata recall --wait)", errUsage, describeHolder(st))
	}
	if err := interceptor.StopHolder(sock); err != nil {
		if strings.Contains(err.Error(), "busy") {
			return errors.New("a daemon took the fanotify group meanwhile: stop the daemon first")
		}
		return err
	}
	fmt.Fprintf(e.stderr, "strata: stopped the holder (pid %d): stubs are unguarded until a daemon starts\n", st.PID)
	return nil
}
