package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/scanner"
)

// The command line is one kong grammar: the commandLine struct below, one field per
// subcommand, each a struct in its cmd_<verb>.go with its flags as fields
// and a Run method. Help, completion scripts (completion.go) and anything
// else that describes the command line (man pages) read kong's model of
// this struct, so they cannot drift from what is parsed.
//
// Conventions in the struct tags, besides kong's own:
//   - complete:"dir" or complete:"file" says how a shell completes a flag's
//     value or a positional argument (default: files for arguments, nothing
//     for flag values); an enum:"" tag completes its words.
//   - each command struct has an Example method (shown under "Example:" in
//     its --help).

// commandLine is the grammar of strata's command line.
type commandLine struct {
	globals

	Run     runCmd     `cmd:"" help:"Start the daemon (embedded NATS, catalog, stages)."`
	Status  statusCmd  `cmd:"" help:"Show the daemon's state: uptime, stream and catalog sequence, lag, dead letters."`
	Ls      lsCmd      `cmd:"" help:"List managed files and their state."`
	Archive archiveCmd `cmd:"" help:"Archive files now, whatever their age (--wait: until released)."`
	Recall  recallCmd  `cmd:"" help:"Bring stubs back now (--wait: until every byte is back)."`
	Release releaseCmd `cmd:"" help:"Free the resident ranges of partially recalled stubs again (verified, no upload)."`
	Restore restoreCmd `cmd:"" help:"Write an archived version of a file to a new path."`
	Pin     pinCmd     `cmd:"" help:"Never archive these paths."`
	Unpin   unpinCmd   `cmd:"" help:"Allow these paths to be archived again."`
	Policy  policyCmd  `cmd:"" help:"Policy preview: what the scanner would archive now."`
	Scrub   scrubCmd   `cmd:"" help:"Re-read stored copies, check their BLAKE3 and repair bad ones."`
	Prune   pruneCmd   `cmd:"" help:"Remove objects that retention lets go (dry run unless --apply)."`
	Tape    tapeCmd    `cmd:"" help:"Tape volumes: label, ls, verify, rebuild the catalog from tapes."`
	Tier    tierCmds   `cmd:"" help:"Tiers: drain one before removing it from the configuration."`
	Doctor  doctorCmd  `cmd:"" help:"Check what breaks in practice: daemon, tiers, space, secrets, kernel, clock (exit 1 on a problem)."`
	Events  eventsCmd  `cmd:"" help:"Print events from the log (and follow new ones)."`
	Replay  replayCmd  `cmd:"" help:"Rebuild the catalog from the event log (or verify it)."`
	Export  exportCmd  `cmd:"" help:"Export the catalog to Parquet."`

	Consumers consumersCmd `cmd:"" help:"List and remove the consumers of the event streams (readers', strays)."`
	Cluster   clusterCmds  `cmd:"" help:"Several hosts: create the cluster's CA, issue a host's certificate and bundle."`
	Holder    holderCmds   `cmd:"" help:"The holder that guards stubs while no daemon runs: status, stop."`
	Version   versionCmd   `cmd:"" help:"Print the version."`

	Completion completionCmd `cmd:"" help:"Print a shell completion script (bash, zsh or fish)."`
	Manpages   manpagesCmd   `cmd:"" hidden:"" help:"Write the man pages into a directory (for packaging)."`
}

// globals are the flags every command takes.
type globals struct {
	Help helpFlag `short:"h" help:"Show help (with an example) and exit."`
	Data string   `placeholder:"DIR" complete:"dir" help:"Strata's data directory: catalog, event log, credentials (default: env STRATA_DATA, else /var/lib/strata)."`
}

// dataDir is --data, else STRATA_DATA, else defaultDataDir (config.go).
func (g *globals) dataDir() string {
	if g.Data != "" {
		return g.Data
	}
	if d := os.Getenv("STRATA_DATA"); d != "" {
		return d
	}
	return defaultDataDir
}

// env is what every command gets: its output streams.
type env struct {
	stdout, stderr io.Writer
}

// Exit codes. exitCode maps errors to them; help lists them.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitDiffers     = 3 // replay --verify found a difference; scrub left corruption unrepaired
	exitUnchecked   = 4 // scrub could not check some copies
	exitInterrupted = 130
)

// exitCodes is the table shown under "Exit codes:" in every --help.
var exitCodes = []struct {
	code    int
	meaning string
}{
	{exitOK, "success"},
	{exitFailure, "error (a one-line message on stderr)"},
	{exitUsage, "usage error: unknown command or flag, missing argument, bad value"},
	{exitDiffers, "replay --verify found a difference; scrub found corruption it could not repair"},
	{exitUnchecked, "scrub could not check some copies (a tier was unreachable)"},
	{exitInterrupted, "interrupted (SIGINT or SIGTERM)"},
}

// errHelp is returned after --help printed the help: exit code 0.
var errHelp = errors.New("help requested")

// helpFlag is --help: it prints the help of the command it follows and
// ends parsing.
type helpFlag bool

// BeforeReset runs as soon as kong has seen --help, before it checks for
// missing arguments, so that `strata restore --help` shows help.
func (helpFlag) BeforeReset(ctx *kong.Context) error {
	if err := ctx.PrintUsage(false); err != nil {
		return err
	}
	return errHelp
}

// newParser builds the parser for one run, writing help to e.stdout.
func newParser(e *env) (*kong.Kong, *commandLine, error) {
	var c commandLine
	k, err := kong.New(&c,
		kong.Name("strata"),
		kong.Description("Strata — a transparent hierarchical storage manager.\n\n"+
			"Flags may stand anywhere on the line, before or after arguments; -- ends them. "+
			"Every command takes --help, --data DIR and, where it prints, --json. strata --version prints the version."),
		kong.NoDefaultHelp(),
		kong.Help(printHelp),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true, NoExpandSubcommands: true}),
		kong.Writers(e.stdout, e.stderr),
		kong.Exit(func(int) {}), // never exit the process from inside run
		kong.Vars{"ls_limit": strconv.Itoa(scanner.LsLimit)},
		kong.DynamicCommand(interceptor.DefaultHolderSubcommand,
			"Keep the interceptor's fanotify group across a daemon crash (started by strata run).", "",
			&holderCmd{}, `hidden:""`),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("command line grammar: %w", err)
	}
	return k, &c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr}
	k, c, err := newParser(e)
	if err != nil {
		return err
	}
	switch {
	case len(args) == 0:
		if err := printRootHelp(k); err != nil {
			return err
		}
		return fmt.Errorf("%w: no command given (see strata --help)", errUsage)
	case len(args) == 1 && args[0] == "--version":
		// Only as the whole line: restore has a --version N of its own.
		fmt.Fprintln(stdout, "strata", version)
		return nil
	case args[0] == "help": // strata help [COMMAND...]
		args = append(args[1:len(args):len(args)], "--help")
	}
	args, err = intersperse(k.Model, args)
	if err != nil {
		return err
	}
	kctx, err := k.Parse(args)
	if err != nil {
		return usageError(err)
	}
	kctx.BindTo(ctx, (*context.Context)(nil))
	return kctx.Run(e, &c.globals)
}

// printRootHelp prints `strata --help`.
func printRootHelp(k *kong.Kong) error {
	kctx, err := kong.Trace(k, nil)
	if err != nil {
		return err
	}
	return kctx.PrintUsage(false)
}

// usageError turns a parse error into a one-line usage error naming the
// command, or errHelp after --help.
func usageError(err error) error {
	if errors.Is(err, errHelp) {
		return errHelp
	}
	msg := err.Error()
	path := "strata"
	var pe *kong.ParseError
	if errors.As(err, &pe) && pe.Context != nil {
		if n := pe.Context.Selected(); n != nil {
			path = n.FullPath()
		} else if rest, ok := strings.CutPrefix(msg, "unexpected argument "); ok {
			msg = "unknown command " + rest
		}
	}
	return fmt.Errorf("%w: %s (see %s --help)", errUsage, msg, path)
}

// printHelp is kong's help followed by the command's example and the exit
// codes.
func printHelp(options kong.HelpOptions, ctx *kong.Context) error {
	if err := kong.DefaultHelpPrinter(options, ctx); err != nil {
		return err
	}
	node := ctx.Selected()
	if node == nil {
		node = ctx.Model.Node
	}
	w := ctx.Stdout
	if ex := exampleOf(node); ex != "" {
		fmt.Fprintf(w, "\nExample:\n  %s\n", strings.ReplaceAll(ex, "\n", "\n  "))
	}
	fmt.Fprintln(w, "\nExit codes:")
	for _, c := range exitCodes {
		fmt.Fprintf(w, "  %-4d %s\n", c.code, c.meaning)
	}
	return nil
}

// exampler is a command that shows an example in its help.
type exampler interface{ Example() string }

// exampleOf is node's example, or "" if it has none.
func exampleOf(node *kong.Node) string {
	if !node.Target.IsValid() || !node.Target.CanAddr() {
		return ""
	}
	if ex, ok := node.Target.Addr().Interface().(exampler); ok {
		return ex.Example()
	}
	return ""
}

// Example is the root's example (strata --help).
func (*commandLine) Example() string {
	return "strata run --hot /srv/projects --cold /mnt/archive\n" +
		"strata ls /srv/projects/2019 --json"
}

// intersperse rewrites args so that flags may stand anywhere: kong stops a
// list of positional arguments (PATH...) at the first flag, and reads a
// value that starts with '-' (--port -1) as a flag. It walks args along
// kong's model: words naming subcommands build the command path, every
// flag (with its value, joined as --name=value) goes right after the path,
// and the positional arguments follow after a "--", with any that stood
// after the user's own "--". Go's single-dash long flags (-data DIR) become
// --data. Unknown flags pass through for kong to report; a flag missing
// its value at the end of the line is a usage error.
func intersperse(app *kong.Application, args []string) ([]string, error) {
	node := app.Node
	var cmds, flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) > 1 && a[0] == '-' {
			name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
			f := findFlag(node, name, !strings.HasPrefix(a, "--"))
			if f == nil {
				flags = append(flags, a)
				continue
			}
			tok := "--" + f.Name
			if f.Name != name { // a short flag (-h)
				tok = a
			}
			switch {
			case hasValue:
				tok += "=" + value
			case f.IsBool() || f.IsCounter():
			case i+1 < len(args):
				i++
				tok += "=" + args[i]
			default:
				return nil, fmt.Errorf("%w: --%s: missing value (see %s --help)", errUsage, f.Name, strings.Join(append([]string{"strata"}, cmds...), " "))
			}
			flags = append(flags, tok)
			continue
		}
		if len(pos) == 0 {
			if child := findCommand(node, a); child != nil {
				node = child
				cmds = append(cmds, a)
				continue
			}
		}
		pos = append(pos, a)
	}
	out := append(cmds, flags...)
	if len(pos) > 0 {
		out = append(append(out, "--"), pos...)
	}
	return out, nil
}

// findFlag finds the flag name (without dashes) of node or an ancestor;
// single says it had one dash, where a one-letter name is a short flag.
func findFlag(node *kong.Node, name string, single bool) *kong.Flag {
	for _, group := range node.AllFlags(false) {
		for _, f := range group {
			if single && len(name) == 1 {
				if f.Short == rune(name[0]) {
					return f
				}
				continue
			}
			if f.Name == name {
				return f
			}
		}
	}
	return nil
}

// findCommand finds node's subcommand called name.
func findCommand(node *kong.Node, name string) *kong.Node {
	for _, c := range node.Children {
		if c.Type != kong.CommandNode {
			continue
		}
		if c.Name == name {
			return c
		}
		for _, a := range c.Aliases {
			if a == name {
				return c
			}
		}
	}
	return nil
}

// command is one visible subcommand of strata.
type command struct {
	name    string
	summary string
}

// commands lists strata's visible subcommands, from the grammar.
func commands() []command {
	k, _, err := newParser(&env{stdout: io.Discard, stderr: io.Discard})
	if err != nil {
		panic(err) // the grammar is static: a test catches this
	}
	var out []command
	for _, n := range k.Model.Children {
		if n.Type == kong.CommandNode && !n.Hidden {
			out = append(out, command{name: n.Name, summary: n.Help})
		}
	}
	return out
}
