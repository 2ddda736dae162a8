// Command strata is Strata's one binary: `strata run` is the daemon, every
// other subcommand is a CLI that talks to a running daemon over NATS
// request/reply (or, for replay and export, works on the data directory).
// The command line is defined in cli.go.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/cmd/internal/sdnotify"
	"github.com/strata-hsm/strata/workers/interceptor"
)

func main() {
	// Everything Strata creates (the data directory and all in it: the
	// catalog's file names, credentials, staged copies of files; cold-tier
	// objects) is its owner's alone, whatever the caller's umask.
	unix.Umask(0o077)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// The first signal drains in order; a second one exits at once.
		<-ctx.Done()
		stop()
	}()
	os.Exit(exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}

// errUsage marks an error in how strata was called (exit code 2).
var errUsage = errors.New("usage")

// exitError carries an explicit exit code (e.g. replay --verify found a
// difference).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode maps an error to the process exit code (the table exitCodes in
// cli.go), printing it as one line.
func exitCode(err error, stderr io.Writer) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "strata: interrupted")
		return exitInterrupted
	case errors.As(err, &ee):
		fmt.Fprintln(stderr, "strata:", ee.err)
		return ee.code
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "strata:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "strata:", err)
		return exitFailure
	}
}

// version is set with -ldflags "-X main.version=…".
var version = "dev"

type versionCmd struct {
	JSON bool `name:"json" help:"Print JSON."`
}

func (*versionCmd) Example() string { return "strata version --json" }

// versionReply is `strata version --json`.
type versionReply struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
}

func (c *versionCmd) Run(e *env) error {
	if c.JSON {
		return printJSON(e, versionReply{Version: version, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH})
	}
	fmt.Fprintln(e.stdout, "strata", version)
	return nil
}

// holderCmd is the hidden subcommand the daemon starts (interceptor.holder
// = true) to keep its fanotify group alive while no daemon runs. It ends on
// SIGTERM, or on `strata holder stop`.
type holderCmd struct {
	Socket string `required:"" placeholder:"PATH" help:"Unix socket the daemon hands the fanotify group over."`
}

func (*holderCmd) Example() string {
	return "strata interceptor-holder --socket /var/lib/strata/interceptor/holder.sock   # started by strata run, not by hand"
}

func (c *holderCmd) Run(ctx context.Context) error {
	// Only SIGTERM stops the holder: a Ctrl-C meant for the daemon's
	// terminal must not take the guard away with it.
	hctx, stop := signal.NotifyContext(context.WithoutCancel(ctx), syscall.SIGTERM)
	defer stop()
	// Nor a closed stderr: the daemon that started it may have written to
	// a pipe that is gone (a log to stderr would otherwise kill it).
	signal.Ignore(os.Interrupt, syscall.SIGPIPE)
	// The OOM killer takes the daemon before the holder: the holder is a
	// few MiB, and while it lives stubs never read as zeros.
	logger := newLogger(false, slog.LevelInfo).With("component", "holder")
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		logger.Warn("cannot keep the OOM killer away from the holder (needs CAP_SYS_RESOURCE)", "err", err)
	}
	// Under systemd (strata-holder.service, Type=notify): ready once this
	// process answers on its socket, so that strata.service, ordered
	// after it, finds it instead of starting a holder of its own.
	notify, err := sdnotify.FromEnv()
	if err != nil {
		logger.Warn("not telling systemd how the holder starts", "err", err)
	}
	if notify != nil {
		go func() {
			for hctx.Err() == nil {
				if st, err := interceptor.QueryHolder(c.Socket); err == nil && st.PID == os.Getpid() {
					_ = notify.Notify("READY=1", "STATUS=listening on "+c.Socket)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	err = interceptor.HolderMain(hctx, c.Socket, logger)
	_ = notify.Notify("STOPPING=1")
	return err
}
