// Package doctor holds the checks of `strata doctor`: what breaks a Strata
// host in practice (a daemon that does not answer, a tier that cannot be
// written, a full disk, a hot tree whose filesystem cannot carry stubs'
// marks, a readable secret, a wrong clock). Each check returns Findings;
// every finding that is not OK says what to do. The checks take plain
// values (paths, addresses, an open tier.Target) so that the CLI runs the
// ones it can do itself and the daemon the ones that need what it holds
// open (its tiers). Only cmd/strata imports it.
package doctor

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Status is how bad a finding is.
type Status string

// Statuses. Any Problem makes doctor exit non-zero.
const (
	OK      Status = "ok"
	Warning Status = "warning" // works, but worse than it could (say why)
	Problem Status = "problem" // something breaks, or will: fix it
)

// Checks, as Finding.Check names them.
const (
	CheckDaemon      = "daemon"
	CheckTier        = "tier"
	CheckHotTree     = "hot tree"
	CheckSpace       = "space"
	CheckCredentials = "credentials"
	CheckNATS        = "nats"
	CheckHolder      = "holder"
	CheckProbeGuard  = "probe guard"
	CheckKernel      = "kernel"
	CheckClock       = "clock"
	CheckConfig      = "config"
	CheckCondition   = "condition"
)

// Finding is one thing doctor looked at.
type Finding struct {
	Check   string `json:"check"`             // one of the Check constants
	Subject string `json:"subject,omitempty"` // what it looked at: a path, a tier's name, an address
	Status  Status `json:"status"`
	Detail  string `json:"detail"`        // what it saw
	Fix     string `json:"fix,omitempty"` // what to do (every finding that is not OK has one)
}

// Report is every finding of one run.
type Report struct {
	Findings []Finding `json:"findings"`
	Problems int       `json:"problems"`
	Warnings int       `json:"warnings"`
}

// ErrProblems is wrapped by Report.Err when a finding is a Problem.
var ErrProblems = errors.New("doctor: problems found")

// Add appends findings and counts them.
func (r *Report) Add(fs ...Finding) {
	for _, f := range fs {
		switch f.Status {
		case Problem:
			r.Problems++
		case Warning:
			r.Warnings++
		}
		r.Findings = append(r.Findings, f)
	}
}

// Err is nil when no finding is a Problem, else an error naming them.
func (r *Report) Err() error {
	if r.Problems == 0 {
		return nil
	}
	var names []string
	for _, f := range r.Findings {
		if f.Status == Problem {
			names = append(names, strings.TrimSpace(f.Check+" "+f.Subject))
		}
	}
	noun := "problems"
	if r.Problems == 1 {
		noun = "problem"
	}
	return fmt.Errorf("%w: %d %s (%s)", ErrProblems, r.Problems, noun, strings.Join(names, "; "))
}

// Write prints the report for a person: one line per finding, the fix
// indented below a finding that needs one, and a last line of totals.
func (r *Report) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range r.Findings {
		label := "ok"
		switch f.Status {
		case Problem:
			label = "PROBLEM"
		case Warning:
			label = "warning"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", label, strings.TrimSpace(f.Check+" "+f.Subject), f.Detail)
		if f.Fix != "" && f.Status != OK {
			fmt.Fprintf(tw, "\t\t→ %s\n", f.Fix)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d checks: %d problems, %d warnings\n", len(r.Findings), r.Problems, r.Warnings)
	return err
}
