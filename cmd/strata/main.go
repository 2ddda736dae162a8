// Command strata is Strata's one binary: `strata run` is the daemon, every
// other subcommand is a CLI that talks to a running daemon over NATS
// request/reply (or, for replay and export, works on the data directory).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/strata-hsm/strata/workers/interceptor"
)

func main() {
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

// exitCode maps an error to the process exit code, printing it as one line.
func exitCode(err error, stderr io.Writer) int {
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "strata: interrupted")
		return 130
	case errors.As(err, &ee):
		fmt.Fprintln(stderr, "strata:", ee.err)
		return ee.code
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "strata:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "strata:", err)
		return 1
	}
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

// env is what every command gets: its output streams.
type env struct {
	stdout, stderr io.Writer
}

func commands() []command {
	return []command{
		{"run", "start the daemon (embedded NATS, catalog, stages)", cmdRun},
		{"status", "show the daemon's state: uptime, stream and catalog sequence, lag, dead letters", cmdStatus},
		{"ls", "list managed files and their state", cmdLs},
		{"archive", "archive files now, whatever their age (--wait: until released)", cmdArchive},
		{"recall", "bring stubs back now (--wait: until every byte is back)", cmdRecall},
		{"restore", "write an archived version of a file to a new path", cmdRestore},
		{"pin", "never archive these paths", cmdPin},
		{"unpin", "allow these paths to be archived again", cmdUnpin},
		{"policy", "policy preview: what the scanner would archive now", cmdPolicy},
		{"scrub", "re-read stored copies, check their BLAKE3 and repair bad ones", cmdScrub},
		{"prune", "remove objects that retention lets go (dry run unless --apply)", cmdPrune},
		{"tape", "tape volumes: label, ls, verify, rebuild the catalog from tapes", cmdTape},
		{"doctor", "check the kernel and the hot trees' filesystems", cmdDoctor},
		{"events", "print events from the log (and follow new ones)", cmdEvents},
		{"replay", "rebuild the catalog from the event log (or verify it)", cmdReplay},
		{"export", "export the catalog to Parquet", cmdExport},
		{"version", "print the version", cmdVersion},
	}
}

// version is set with -ldflags "-X main.version=…".
var version = "dev"

func cmdVersion(_ context.Context, e *env, args []string) error {
	fs := newFlags("version", "strata version", "strata version")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "strata", version)
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return fmt.Errorf("%w: no command given", errUsage)
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	if args[0] == interceptor.DefaultHolderSubcommand {
		return cmdHolder(ctx, e, args[1:])
	}
	usage(stderr)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "strata — a transparent hierarchical storage manager\n\nUsage: strata <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nEvery command takes --help, --data DIR (default /var/lib/strata, env STRATA_DATA) and --json where it prints.")
}

// newFlags returns a flag set whose usage shows synopsis and an example.
func newFlags(name, synopsis, example string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\nExample:\n  %s\n\nFlags:\n", synopsis, example)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args; errors become usage errors, --help prints usage to
// stdout and returns flag.ErrHelp (exit 0).
func parse(fs *flag.FlagSet, args []string, e *env) error {
	fs.SetOutput(e.stderr)
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(e.stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %s: %w", errUsage, fs.Name(), err)
	}
	return nil
}

// dataDirFlag adds --data with its default from STRATA_DATA.
func dataDirFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("STRATA_DATA")
	if def == "" {
		def = "/var/lib/strata"
	}
	return fs.String("data", def, "Strata's data directory: catalog, event log, credentials (env STRATA_DATA)")
}

// cmdHolder is the hidden subcommand the daemon starts (interceptor.holder
// = true) to keep its fanotify group alive across a crash. It ends on
// SIGTERM, or when the daemon stops cleanly and releases it.
func cmdHolder(ctx context.Context, e *env, args []string) error {
	fs := newFlags(interceptor.DefaultHolderSubcommand, "strata "+interceptor.DefaultHolderSubcommand+" --socket PATH",
		"(started by strata run; not for direct use)")
	socket := fs.String("socket", "", "unix socket the daemon hands the fanotify group over")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if *socket == "" {
		return fmt.Errorf("%w: --socket is required", errUsage)
	}
	// Only SIGTERM stops the holder: a Ctrl-C meant for the daemon's
	// terminal must not take the guard away with it.
	hctx, stop := signal.NotifyContext(context.WithoutCancel(ctx), syscall.SIGTERM)
	defer stop()
	signal.Ignore(os.Interrupt)
	return interceptor.HolderMain(hctx, *socket, newLogger(false, slog.LevelInfo).With("component", "holder"))
}
