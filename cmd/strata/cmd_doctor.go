package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/strata-hsm/strata/workers/interceptor"
)

type doctorReport struct {
	Kernel        string       `json:"kernel"`
	PreAccess     bool         `json:"pre_access"`
	ConfiguredFor string       `json:"configured_mode"`
	Mode          string       `json:"mode"`
	HotTrees      []doctorTree `json:"hot_trees"`
}

type doctorTree struct {
	Path       string `json:"path"`
	PreContent bool   `json:"pre_content_marks"`
	Detail     string `json:"detail"`
}

func cmdDoctor(ctx context.Context, e *env, args []string) error {
	fs := newFlags("doctor", "strata doctor [--config FILE] [--hot DIR]... [--json]", "strata doctor --hot /srv/projects")
	configPath := fs.String("config", "", "TOML configuration file")
	var hot multiFlag
	fs.Var(&hot, "hot", "a hot tree to check (repeatable)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	cfg := NewConfig()
	if *configPath != "" {
		var err error
		if cfg, err = LoadConfig(*configPath); err != nil {
			return err
		}
		cfg.EnsureDefaults()
	}
	paths, err := absPaths(hot)
	if err != nil {
		return err
	}
	for _, h := range cfg.Hot {
		paths = append(paths, h.Path)
	}
	ok, rel := interceptor.KernelHasPreAccess()
	r := doctorReport{Kernel: rel, PreAccess: ok, ConfiguredFor: cfg.Interceptor.Mode, HotTrees: []doctorTree{}}
	r.Mode = string(interceptor.ModeOpenPerm)
	if ok && cfg.Interceptor.Mode != string(interceptor.ModeOpenPerm) {
		r.Mode = string(interceptor.ModePreAccess)
	}
	for _, p := range paths {
		sup, detail := interceptor.Supported(p)
		r.HotTrees = append(r.HotTrees, doctorTree{Path: p, PreContent: sup, Detail: detail})
	}
	if *asJSON {
		return printJSON(e, r)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "kernel\t%s (FAN_PRE_ACCESS: %v)\n", r.Kernel, r.PreAccess)
	fmt.Fprintf(w, "mode\t%s (configured: %s)\n", r.Mode, r.ConfiguredFor)
	for _, t := range r.HotTrees {
		verdict := "ok"
		if !t.PreContent {
			verdict = "NOT SUPPORTED"
		}
		fmt.Fprintf(w, "hot tree %s\t%s: %s\n", t.Path, verdict, t.Detail)
	}
	return w.Flush()
}
