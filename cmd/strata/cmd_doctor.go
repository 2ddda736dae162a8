package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/pipeline"
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
	// Spaces are the data directory, and staging when it is a
	// filesystem of its own: free room against the reserve.
	Spaces []doctorSpace `json:"spaces"`
	// Conditions are those a running daemon reports (none if no daemon
	// answers).
	Conditions []pipeline.Condition `json:"conditions,omitempty"`
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

// doctorSpace is one place Strata writes to, as doctor sees it.
type doctorSpace struct {
	Place      string          `json:"place"`
	Path       string          `json:"path"`
	FS         pipeline.FSInfo `json:"fs"`
	Reserve    uint64          `json:"reserve_bytes"`
	OutOfSpace bool            `json:"out_of_space"`
	Detail     string          `json:"detail"`
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

func (c *doctorCmd) Run(ctx context.Context, e *env, g *globals) error {
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
	dataDir := g.dataDir()
	if c.Config != "" && g.Data == "" && cfg.DataDir != "" {
		dataDir = cfg.DataDir
	}
	r.Holder = checkHolder(dataDir, cfg)
	r.ProbeGuard = checkProbeGuard()
	r.Spaces = doctorSpaces(dataDir)
	r.Conditions = daemonConditions(ctx, dataDir)
	problem := doctorProblem(r)
	if c.JSON {
		if err := printJSON(e, r); err != nil {
			return err
		}
		return problem
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
	for _, sp := range r.Spaces {
		verdict := "ok"
		if sp.OutOfSpace {
			verdict = "OUT OF SPACE"
		}
		fmt.Fprintf(w, "%s %s\t%s: %s\n", sp.Place, sp.Path, verdict, sp.Detail)
	}
	if len(r.Conditions) > 0 {
		fmt.Fprintln(w, "the running daemon reports:")
		writeConditions(w, r.Conditions)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return problem
}

// doctorSpaces looks at the data directory's filesystem (and staging's if
// it is another one) as the daemon does: out of space below the reserve.
func doctorSpaces(dataDir string) []doctorSpace {
	places := []struct{ place, path string }{{"data directory", dataDir}}
	staging := filepath.Join(dataDir, "staging")
	var a, b unix.Stat_t
	if unix.Stat(dataDir, &a) == nil && unix.Stat(staging, &b) == nil && a.Dev != b.Dev {
		places = append(places, struct{ place, path string }{"staging", staging})
	}
	var out []doctorSpace
	for _, p := range places {
		ds := doctorSpace{Place: p.place, Path: p.path}
		fs, err := pipeline.StatFS(p.path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			ds.Detail = "does not exist yet (strata run creates it)"
		case err != nil:
			ds.Detail = err.Error()
		default:
			ds.FS, ds.Reserve = fs, pipeline.Reserve(fs.Total)
			ds.OutOfSpace = fs.Free < ds.Reserve || (fs.Inodes > 0 && fs.FreeInodes < 64)
			ds.Detail = fmt.Sprintf("%s %s mounted at %s, %s (Strata keeps %s free)", fs.Type, fs.Device, fs.Mount, fs.FreeString(), progress.Bytes(int64(ds.Reserve)))
			if ds.OutOfSpace {
				ds.Detail += "; no new work starts until there is room: free space on " + fs.Device + " mounted at " + fs.Mount
			}
		}
		out = append(out, ds)
	}
	return out
}

// daemonConditions asks a running daemon for its conditions; none if no
// daemon answers within a few seconds.
func daemonConditions(ctx context.Context, dataDir string) []pipeline.Condition {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var r statusReply
	if err := request(ctx, dataDir, "status", struct{}{}, &r, 3*time.Second); err != nil {
		return nil
	}
	return r.Conditions
}

// doctorProblem is the error doctor exits with when a place is out of
// space, or nil.
func doctorProblem(r doctorReport) error {
	var bad []string
	for _, sp := range r.Spaces {
		if sp.OutOfSpace {
			bad = append(bad, "the "+sp.Place+" "+sp.Path+" is out of space")
		}
	}
	for _, c := range r.Conditions {
		if c.Kind == pipeline.KindNoSpace && !strings.Contains(strings.Join(bad, "\n"), c.Path+" ") {
			bad = append(bad, c.Title()+" "+c.Path)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("doctor: %s", strings.Join(bad, "; "))
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
