package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/modwatch"
)

// statusReply is the daemon's answer to `strata status`.
type statusReply struct {
	Host          string          `json:"host"`
	Version       string          `json:"version"`
	PID           int             `json:"pid"`
	Started       time.Time       `json:"started"`
	UptimeSeconds float64         `json:"uptime_seconds"`
	NATS          string          `json:"nats_url"`
	Stream        pipeline.Status `json:"stream"`
	CatalogSeq    uint64          `json:"catalog_seq"`
	CatalogLag    uint64          `json:"catalog_lag"`
	Catalog       catalog.Stats   `json:"catalog"`
	HotTrees      []string        `json:"hot_trees"`
	Tiers         []string        `json:"tiers"`
	TierState     []tierStatus    `json:"tier_state"` // per tier: store stage, copies, reachability
	// Readers counts the consumers of outside subscribers; Stray names the
	// durables nobody may keep (removed at the next sweep).
	Readers int      `json:"reader_consumers"`
	Stray   []string `json:"stray_consumers,omitempty"`
	// Conditions are the states an operator must act on (a full data
	// directory, …), oldest first.
	Conditions []pipeline.Condition `json:"conditions"`
	// StreamError and CatalogError say why the event log or the catalog
	// could not be read (their fields are then empty): status answers
	// with the conditions even then.
	StreamError  string `json:"stream_error,omitempty"`
	CatalogError string `json:"catalog_error,omitempty"`
	// RecallRules are the counters of interceptor.rule, in order;
	// RecallStorms the storms reported since the daemon started.
	RecallRules  []interceptor.RuleStats `json:"recall_rules,omitempty"`
	RecallStorms uint64                  `json:"recall_storms"`
	// WriteWatcher counts the modification watcher's work (nil: none
	// runs, writes into archived files are found at the next scan).
	WriteWatcher *modwatch.Stats `json:"write_watcher,omitempty"`
}

func (d *daemon) ctlStatus(ctx context.Context, _ []byte) (any, error) {
	r := statusReply{
		Host: d.cfg.Host, Version: version, PID: os.Getpid(), Started: d.started,
		UptimeSeconds: time.Since(d.started).Seconds(), NATS: d.srv.ClientURL(),
		CatalogSeq: d.cat.LastSeq(), Tiers: d.cfg.tierNames(), Conditions: d.srv.Conditions().List(),
	}
	for _, h := range d.cfg.Hot {
		r.HotTrees = append(r.HotTrees, h.Path)
	}
	if it := d.stages.interceptor; it != nil {
		r.RecallRules, r.RecallStorms = it.RuleStats(), it.Storms()
	}
	if d.stages != nil && d.stages.modwatch != nil {
		ws := d.stages.modwatch.Stats()
		r.WriteWatcher = &ws
	}
	cs, err := d.cat.Stats()
	if err != nil {
		if len(r.Conditions) == 0 {
			return nil, err
		}
		r.CatalogError = err.Error()
	}
	r.Catalog = cs
	st, err := pipeline.StreamStatus(ctx, d.js)
	if err != nil {
		if len(r.Conditions) == 0 {
			return nil, err
		}
		r.StreamError = err.Error() // e.g. JetStream restarting once there is room
		return r, nil
	}
	r.Stream = st
	// Only the daemon's durables are stages; the rest are readers'.
	consumers, err := pipeline.Consumers(ctx, d.js, d.srv.OwnerToken(), d.cfg.NATS.ReaderDurables)
	if err != nil {
		return nil, err
	}
	own := map[string]bool{}
	for _, c := range consumers {
		switch c.Owner {
		case "daemon":
			own[c.Name] = true
		case "stray":
			r.Stray = append(r.Stray, c.Stream+"/"+c.Name)
			r.Readers++
		default:
			r.Readers++
		}
	}
	r.Stream.Consumers = slices.DeleteFunc(r.Stream.Consumers, func(c pipeline.ConsumerLag) bool { return !own[c.Name] })
	r.TierState = d.tierStatuses(ctx, st)
	if st.LastSeq > r.CatalogSeq {
		r.CatalogLag = st.LastSeq - r.CatalogSeq
	}
	return r, nil
}

// writeConditions prints the conditions in force, each with where, since
// when, its last error, what Strata does and what to do.
func writeConditions(w io.Writer, conds []pipeline.Condition) {
	for _, c := range conds {
		label := strings.ToUpper(strings.ReplaceAll(c.Kind, "_", " "))
		fmt.Fprintf(w, "%s\t%s %s since %s (%s ago)", label, c.Place, c.Path, c.Since.Local().Format(time.TimeOnly), time.Since(c.Since).Round(time.Second))
		if c.FS.Mount != "" {
			fmt.Fprintf(w, ": %s %s mounted at %s, %s", c.FS.Type, c.FS.Device, c.FS.Mount, c.FS.FreeString())
		}
		fmt.Fprintln(w)
		if c.LastError != "" {
			fmt.Fprintf(w, "\tlast error (%s ago): %s\n", time.Since(c.LastAt).Round(time.Second), c.LastError)
		}
		fmt.Fprintf(w, "\tmeanwhile: %s\n", c.Effect)
		fmt.Fprintf(w, "\tto do: %s\n", c.Hint)
	}
}

type statusCmd struct {
	JSON bool `name:"json" help:"Print JSON."`
}

func (*statusCmd) Example() string { return "strata status --json" }

func (c *statusCmd) Run(ctx context.Context, e *env, g *globals) error {
	var r statusReply
	if err := request(ctx, g.dataDir(), "status", struct{}{}, &r, 10*time.Second); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, r)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "host\t%s (pid %d, strata %s)\n", r.Host, r.PID, r.Version)
	fmt.Fprintf(w, "uptime\t%s (since %s)\n", time.Duration(r.UptimeSeconds*float64(time.Second)).Round(time.Second), r.Started.Format(time.RFC3339))
	writeConditions(w, r.Conditions)
	fmt.Fprintf(w, "nats\t%s\n", r.NATS)
	if r.StreamError != "" {
		fmt.Fprintf(w, "event log\tUNREADABLE: %s\n", r.StreamError)
	} else {
		fmt.Fprintf(w, "event log\tseq %d, %d events, %s\n", r.Stream.LastSeq, r.Stream.Events, progress.Bytes(int64(r.Stream.Bytes)))
	}
	fmt.Fprintf(w, "catalog\tseq %d (lag %d)", r.CatalogSeq, r.CatalogLag)
	if r.CatalogError != "" {
		fmt.Fprintf(w, "; UNREADABLE: %s", r.CatalogError)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "dead letters\t%d\n", r.Stream.DeadLetters)
	fmt.Fprintf(w, "reader consumers\t%d", r.Readers)
	if len(r.Stray) > 0 {
		fmt.Fprintf(w, " (stray, to be removed: %s)", strings.Join(r.Stray, ", "))
	}
	fmt.Fprintln(w)
	for _, c := range r.Stream.Consumers {
		fmt.Fprintf(w, "stage %s\tlag %d (pending %d, in progress %d, redelivered %d)\n", c.Name, c.Lag, c.Pending, c.AckPending, c.Redelivered)
	}
	states := make([]string, 0, len(r.Catalog.ByState))
	for s := range r.Catalog.ByState {
		states = append(states, s)
	}
	sort.Strings(states)
	for _, s := range states {
		c := r.Catalog.ByState[s]
		if c.Files > 0 {
			fmt.Fprintf(w, "files %s\t%d (%s)\n", s, c.Files, progress.Bytes(int64(c.Bytes)))
		}
	}
	fmt.Fprintf(w, "objects\t%d (%d copies, %d corrupt)\n", r.Catalog.Objects, r.Catalog.Copies, r.Catalog.CorruptCopies)
	for _, h := range r.HotTrees {
		fmt.Fprintf(w, "hot tree\t%s\n", h)
	}
	for _, rs := range r.RecallRules {
		fmt.Fprintf(w, "recall rule %s\t%s: %d events, %d denied", rs.Name, rs.Action, rs.Events, rs.Denied)
		if rs.Action == interceptor.ActionHeadOnly {
			fmt.Fprintf(w, ", %d served from resident bytes", rs.Served)
		}
		if rs.Action == interceptor.ActionThrottle {
			fmt.Fprintf(w, ", %d waits (%s), %s fetched", rs.Throttled, rs.Waited.Round(time.Millisecond), progress.Bytes(int64(rs.Bytes)))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "recall storms\t%d since start\n", r.RecallStorms)
	switch {
	case r.WriteWatcher != nil:
		fmt.Fprintf(w, "write watcher\t%d archived files watched; %d writes reported as file.modified\n", r.WriteWatcher.Watched, r.WriteWatcher.Reported)
	case len(r.HotTrees) > 0:
		fmt.Fprintf(w, "write watcher\tOFF: writes into archived files are found at the next scan (see the log)\n")
	}
	for _, t := range r.TierState {
		reach := "reachable"
		if !t.Reachable {
			reach = "UNREACHABLE: " + t.Probe
		}
		fmt.Fprintf(w, "tier %s\t%s, cost %d, %s; %d objects (%d corrupt), lag %d", t.Name, t.Kind, t.Cost, reach, t.Objects, t.Corrupt, t.Lag)
		if t.LastError != "" && t.LastErrAt.After(t.LastOK) {
			fmt.Fprintf(w, "; last error %s ago: %s", time.Since(t.LastErrAt).Round(time.Second), t.LastError)
		}
		if note := t.stuckNote(); note != "" {
			fmt.Fprintf(w, "; %s", note)
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

// stuckNote says how many objects the tier could not store and why, or "".
func (t tierStatus) stuckNote() string {
	if t.Failing+t.GaveUp == 0 {
		return ""
	}
	return fmt.Sprintf("%d objects not stored (%d being retried, %d given up), latest: %s", t.Failing+t.GaveUp, t.Failing, t.GaveUp, t.LastFailure)
}

func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
