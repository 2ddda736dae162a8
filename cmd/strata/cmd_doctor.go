package main

import (
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

type doctorCmd struct {
	Config string   `placeholder:"FILE" complete:"file" help:"TOML configuration file: check its hot trees and interceptor mode."`
	Hot    []string `sep:"none" placeholder:"DIR" complete:"dir" help:"A hot tree to check (repeatable)."`
	JSON   bool     `name:"json" help:"Print JSON."`
}

func (*doctorCmd) Example() string { return "strata doctor --hot /srv/projects" }

func (c *doctorCmd) Run(e *env) error {
	cfg := NewConfig()
	if c.Config != "" {
		var err error
		if cfg, err = LoadConfig(c.Config); err != nil {
			return err
		}
		cfg.EnsureDefaults()
	}
	paths, err := absPaths(c.Hot)
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
	if c.JSON {
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
