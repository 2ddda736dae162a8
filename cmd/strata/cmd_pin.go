package main

import (
	"context"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/workers/scanner"
)

func cmdPin(ctx context.Context, e *env, args []string) error   { return pinCmd(ctx, e, args, false) }
func cmdUnpin(ctx context.Context, e *env, args []string) error { return pinCmd(ctx, e, args, true) }

func pinCmd(ctx context.Context, e *env, args []string, unpin bool) error {
	verb := "pin"
	if unpin {
		verb = "unpin"
	}
	fs := newFlags(verb, "strata "+verb+" [--data DIR] PATH...", "strata "+verb+" /srv/projects/active")
	data := dataDirFlag(fs)
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: %s needs at least one PATH", errUsage, verb)
	}
	paths, err := absPaths(fs.Args())
	if err != nil {
		return err
	}
	if err := request(ctx, *data, "pin", scanner.PinRequest{Paths: paths, Unpin: unpin}, nil, time.Minute); err != nil {
		return err
	}
	for _, p := range paths {
		fmt.Fprintf(e.stdout, "%sned %s\n", verb, p)
	}
	return nil
}
