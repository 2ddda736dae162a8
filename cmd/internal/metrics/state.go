package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector reports State at each scrape. It is an unchecked
// collector (Describe sends nothing): which series exist depends on the
// configuration (stages, tiers, hot trees, rules).
type stateCollector struct{ m *Metrics }

func (*stateCollector) Describe(chan<- *prometheus.Desc) {}

// gatherTimeout bounds one Gather.
const gatherTimeout = 10 * time.Second

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.cfg.Gather == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), gatherTimeout)
	defer cancel()
	s := c.m.cfg.Gather(ctx)
	e := emitter{ch}
	for _, st := range s.Stages {
		l := []string{"stage"}
		e.gauge("strata_stage_pending_messages", "Events a stage has yet to receive.", l, float64(st.Pending), st.Name)
		e.gauge("strata_stage_in_progress_messages", "Events a stage received and has not acknowledged (in progress or waiting for a retry).", l, float64(st.InProgress), st.Name)
		e.gauge("strata_stage_redelivered_messages", "Events delivered to a stage more than once and not yet acknowledged (retries after a failure or a crash).", l, float64(st.RedeliveredUnacked), st.Name)
		e.gauge("strata_stage_lag_messages", "Pending plus in progress: how far a stage is behind the event log.", l, float64(st.Lag), st.Name)
	}
	e.gauge("strata_dead_letter_messages", "Messages in the dead-letter stream (events no stage could handle; strata events --dead-letters).", nil, float64(s.DeadLetters))
	e.gauge("strata_event_log_last_sequence", "The event log's last sequence.", nil, float64(s.LastSeq))
	e.gauge("strata_catalog_lag_events", "Events the catalog has yet to apply.", nil, float64(s.CatalogLag))
	for state, n := range s.Files {
		e.gauge("strata_catalog_files", "Files in the catalog, by state.", []string{"state"}, float64(n.Files), state)
		e.gauge("strata_catalog_file_bytes", "Bytes of the files in the catalog (their sizes), by state.", []string{"state"}, float64(n.Bytes), state)
	}
	for _, t := range s.Tiers {
		l := []string{"tier", "kind"}
		e.gauge("strata_tier_objects", "Good copies on a cold tier.", l, float64(t.Objects), t.Name, t.Kind)
		e.gauge("strata_tier_stored_bytes", "Bytes of the good copies on a cold tier (compressed, as stored).", l, float64(t.StoredBytes), t.Name, t.Kind)
		e.gauge("strata_tier_corrupt_copies", "Copies on a cold tier marked corrupt (repaired by scrub when another copy is good).", l, float64(t.Corrupt), t.Name, t.Kind)
	}
	e.gauge("strata_catalog_objects", "Objects (file contents) in the catalog.", nil, float64(s.Objects))
	e.gauge("strata_objects_below_copies", "Objects with fewer good copies than release.copies on the tiers that count (not yet releasable, or a copy lost).", nil, float64(s.BelowCopies))
	e.gauge("strata_release_copies", "release.copies: the good copies a file needs before it is released.", nil, float64(s.Copies))
	for _, h := range s.HotTrees {
		l := []string{"tree"}
		e.gauge("strata_hot_tree_size_bytes", "Size of a hot tree's filesystem.", l, float64(h.Size), h.Path)
		e.gauge("strata_hot_tree_used_bytes", "Bytes used on a hot tree's filesystem.", l, float64(h.Used), h.Path)
		e.gauge("strata_hot_tree_high_watermark_ratio", "Usage above which the oldest files are archived whatever their age (0-1).", l, float64(h.High)/100, h.Path)
		e.gauge("strata_hot_tree_low_watermark_ratio", "Usage down to which a watermark archive goes (0-1).", l, float64(h.Low)/100, h.Path)
	}
	if s.StubsKnown {
		e.gauge("strata_stubs_marked", "Inode marks of the interceptor's fanotify group: stubs guarded (a recall fills them).", nil, float64(s.StubsMarked))
	}
	e.counter("strata_fanotify_events_total", "Fanotify events the interceptor read since it opened.", nil, float64(s.Fanotify.Events))
	e.counter("strata_fanotify_answers_total", "Fanotify permission events answered, by answer.", []string{"answer"}, float64(s.Fanotify.Allowed), "allow")
	e.counter("strata_fanotify_answers_total", "Fanotify permission events answered, by answer.", []string{"answer"}, float64(s.Fanotify.Denied), "deny")
	e.counter("strata_fanotify_overflows_total", "Fanotify queue overflows (every stub is marked again).", nil, float64(s.Fanotify.Overflows))
	for _, r := range s.Rules {
		l := []string{"rule", "action"}
		e.counter("strata_recall_rule_events_total", "Accesses to stubs a recall rule matched.", l, float64(r.Events), r.Name, r.Action)
		e.counter("strata_recall_rule_denied_total", "Accesses a recall rule denied (EPERM, nothing recalled).", l, float64(r.Denied), r.Name, r.Action)
		e.counter("strata_recall_rule_throttled_total", "Recalls a throttle rule delayed.", l, float64(r.Throttled), r.Name, r.Action)
		e.counter("strata_recall_rule_served_resident_total", "Accesses a head-only rule served from resident bytes.", l, float64(r.Served), r.Name, r.Action)
		e.counter("strata_recall_rule_wait_seconds_total", "Time programs waited on a throttle rule.", l, r.Waited.Seconds(), r.Name, r.Action)
	}
	e.counter("strata_recall_storms_total", "Recall storms (one process starting many recalls) since start.", nil, float64(s.Storms))
	for _, v := range s.TapeVolumes {
		e.gauge("strata_tape_volume_state", "Always 1: a tape volume's last known state (label state: loaded, full, write_protected, error, …).",
			[]string{"tier", "volume", "state"}, 1, v.Tier, v.Volume, v.State)
	}
	for k, n := range s.Conditions {
		e.gauge("strata_conditions", "Conditions in force an operator must act on (strata status shows where and what to do), by kind.", []string{"kind"}, float64(n), k)
	}
	e.gauge("strata_write_watcher_marks", "Files the modification watcher has a mark on (stubs and clean recalled files).", nil, float64(s.WriteWatched))
}

// emitter sends const metrics, dropping any that cannot be built (a
// label value that is not valid UTF-8).
type emitter struct{ ch chan<- prometheus.Metric }

func (e emitter) gauge(name, help string, labels []string, v float64, values ...string) {
	e.send(name, help, prometheus.GaugeValue, labels, v, values)
}

func (e emitter) counter(name, help string, labels []string, v float64, values ...string) {
	e.send(name, help, prometheus.CounterValue, labels, v, values)
}

func (e emitter) send(name, help string, t prometheus.ValueType, labels []string, v float64, values []string) {
	m, err := prometheus.NewConstMetric(prometheus.NewDesc(name, help, labels, nil), t, v, values...)
	if err != nil {
		return
	}
	e.ch <- m
}
