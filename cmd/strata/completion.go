package main

import (
	"errors"
	"fmt"

	"github.com/alecthomas/kong"

	"github.com/strata-hsm/strata/cmd/internal/completion"
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
