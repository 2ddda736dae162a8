package main

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/alecthomas/kong"

	"github.com/strata-hsm/strata/cmd/internal/completion"
	"github.com/strata-hsm/strata/cmd/internal/manpage"
)

// Completion scripts are generated from kong's model of the commandLine
// struct (package cmd/internal/completion); the interceptor holder is
// hidden, so it is left out.

type completionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"The shell: bash, zsh or fish."`
}

// Help is shown under the usage line of strata completion --help.
func (*completionCmd) Help() string {
	return "Load it in the current shell, or save it where the shell finds completions:\n\n" +
		"  bash: source <(strata completion bash)      /usr/share/bash-completion/completions/strata\n" +
		"  zsh:  source <(strata completion zsh)       _strata in a directory of $fpath (after compinit)\n" +
		"  fish: strata completion fish | source       ~/.config/fish/completions/strata.fish"
}

func (*completionCmd) Example() string {
	return "strata completion bash > /usr/share/bash-completion/completions/strata"
}

func (c *completionCmd) Run(e *env, kctx *kong.Context) error {
	err := completion.Write(e.stdout, kctx.Model, c.Shell)
	if errors.Is(err, completion.ErrShell) {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return err
}

// manpagesCmd writes strata(1) and one page per command, generated from
// the grammar like the completion scripts (go tool task package runs it).
type manpagesCmd struct {
	Dir  string `required:"" placeholder:"DIR" complete:"dir" help:"Directory to write strata.1 and strata-COMMAND.1 into."`
	Date string `placeholder:"YYYY-MM-DD" help:"Date printed on the pages (default: today)."`
}

func (*manpagesCmd) Example() string { return "strata manpages --dir build/man" }

func (c *manpagesCmd) Run(e *env, kctx *kong.Context) error {
	opts := manpage.Options{
		Version: version, Date: cmp.Or(c.Date, time.Now().UTC().Format(time.DateOnly)),
		Example: exampleOf,
		SeeAlso: []string{"systemctl(1)", "journalctl(1)", "zstd(1)", "b3sum(1)"},
		Summary: "a transparent hierarchical storage manager",
		Sections: []manpage.Section{
			{Title: "Files", Items: [][2]string{
				{"/etc/strata/strata.toml", "the configuration the packaged unit reads (every key is documented in /etc/strata/strata.example.toml)"},
				{"/var/lib/strata", "the data directory: event log, catalog, credentials.json, staged objects"},
				{"strata.service, strata-holder.service", "the daemon, and the holder that keeps stubs guarded while it is down (systemctl status strata)"},
			}},
			{Title: "Environment", Items: [][2]string{{"STRATA_DATA", "the data directory when --data is not given (default /var/lib/strata)"}}},
		},
	}
	for _, x := range exitCodes {
		opts.ExitCodes = append(opts.ExitCodes, manpage.ExitCode{Code: x.code, Meaning: x.meaning})
	}
	paths, err := manpage.WriteAll(c.Dir, kctx.Model, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %d man pages into %s\n", len(paths), c.Dir)
	return nil
}
