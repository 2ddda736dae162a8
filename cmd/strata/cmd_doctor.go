package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/kernelguard"
)

type doctorReport struct {
	Kernel        string       `json:"kernel"`
	PreAccess     bool         `json:"pre_access"`
	ConfiguredFor string       `json:"configured_mode"`
	Mode          string       `json:"mode"`
	HotTrees      []doctorTree `json:"hot_trees"`
	// What keeps stubs right when no daemon runs, and against programs
	// that probe holes.
	Holder     doctorHolder `json:"holder"`
	ProbeGuard doctorGuard  `json:"probe_guard"`
}

type doctorHolder struct {
	Running bool                     `json:"running"`
	State   *interceptor.HolderState `json:"state,omitempty"`
	Detail  string                   `json:"detail"`
}

type doctorGuard struct {
	Supported bool                `json:"supported"`
	Loaded    bool                `json:"loaded"`
	Status    *kernelguard.Status `json:"status,omitempty"`
	Detail    string              `json:"detail"`
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

func (c *doctorCmd) Run(e *env, g *globals) error {
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
	r.Holder = checkHolder(g.dataDir(), cfg)
	r.ProbeGuard = checkProbeGuard()
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
	fmt.Fprintf(w, "while no daemon runs\t%s\n", r.Holder.Detail)
	fmt.Fprintf(w, "hole probers\t%s\n", r.ProbeGuard.Detail)
	return w.Flush()
}

// checkHolder says what guards the stubs of dataDir while no daemon runs.
func checkHolder(dataDir string, cfg Config) doctorHolder {
	st, err := interceptor.QueryHolder(holderSocket(dataDir))
	if err == nil {
		return doctorHolder{Running: true, State: &st, Detail: fmt.Sprintf("holder pid %d: %s", st.PID, describeHolder(st))}
	}
	if !cfg.Interceptor.HolderOn() {
		return doctorHolder{Detail: "UNGUARDED: interceptor.holder = false; when the daemon stops or dies, stubs read as zeros"}
	}
	return doctorHolder{Detail: "NO HOLDER answers for " + dataDir + ": unless a daemon runs, stubs read as zeros now; strata run starts one (under systemd: dist/systemd/strata-holder.service), which keeps them guarded across stops and crashes"}
}

// checkProbeGuard says whether programs that probe holes are stopped.
func checkProbeGuard() doctorGuard {
	if st, err := kernelguard.ReadStatus(probeGuardDir()); err == nil && st.Loaded {
		return doctorGuard{Supported: true, Loaded: true, Status: &st, Detail: fmt.Sprintf(
			"guard loaded (%s): %d stubs registered, %d probers stopped, %d probes by kernel threads only recorded",
			st.Action, st.Stubs, st.Counters.ProbesKilled+st.Counters.ProbesLogged, st.Counters.KernelThreads)}
	}
	if err := kernelguard.Supported(); err != nil {
		return doctorGuard{Detail: "NOT PROTECTED: " + err.Error() + "; a program that probes a large stub's holes (SEEK_DATA, FIEMAP) and is not in interceptor.whole_file_programs copies it as zeros"}
	}
	return doctorGuard{Supported: true, Detail: "supported by this kernel; loaded when the daemon starts (interceptor.probe_guard)"}
}
