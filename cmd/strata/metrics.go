package main

import (
	"context"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/cmd/internal/metrics"
	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
)

// newMetrics builds the daemon's metrics (served by serveMetrics); the
// interceptor's hooks feed it from buildStages on.
func (d *daemon) newMetrics() *metrics.Metrics {
	return metrics.New(metrics.Config{
		Host: d.cfg.Host, Version: version, Tiers: d.cfg.tierNames(),
		Follow: func(ctx context.Context, fromSeq uint64, fn func(events.Envelope, events.Event)) error {
			opt := pipeline.FollowOptions{Filter: []string{events.HostEvents(d.cfg.Host)}, Logger: d.logger.With("component", "metrics")}
			return pipeline.FollowRecords(ctx, d.js, fromSeq, opt, func(batch []pipeline.Record) error {
				for _, r := range batch {
					fn(r.Envelope, r.Event)
				}
				return nil
			})
		},
		Gather: d.gatherMetrics, HotUsage: d.hotUsage,
		Logger: d.logger.With("component", "metrics"),
	})
}

// serveMetrics starts the listener (unless metrics.listen is "off") and
// follows the log from fromSeq. A listener that cannot start is logged,
// not fatal: stubs must stay guarded whatever happens to the page.
func (d *daemon) serveMetrics(ctx context.Context, fromSeq uint64) {
	if d.metrics == nil || d.cfg.Metrics.Listen == metricsOff {
		return
	}
	addr, stop, err := d.metrics.Serve(d.cfg.Metrics.Listen)
	if err != nil {
		d.logger.Error("no metrics, health checks or status page", "err", err)
		return
	}
	d.metricsAddr, d.stopMetrics = addr, stop
	d.logger.Info("metrics and status page", "url", "http://"+addr+"/")
	go func() {
		if err := d.metrics.Run(ctx, fromSeq); err != nil && ctx.Err() == nil {
			d.logger.Error("metrics: stopped following the event log; counters of work no longer move", "err", err)
		}
	}()
}

// gatherMetrics reads what /metrics reports at each scrape.
func (d *daemon) gatherMetrics(ctx context.Context) metrics.State {
	var s metrics.State
	s.Copies = d.cfg.Release.Copies
	s.HotTrees = d.hotUsage()
	s.Conditions = map[string]int{pipeline.KindNoSpace: 0}
	for _, c := range d.srv.Conditions().List() {
		s.Conditions[c.Kind]++
	}
	if st, err := pipeline.StreamStatus(ctx, d.js); err == nil {
		s.DeadLetters, s.LastSeq = st.DeadLetters, st.LastSeq
		if cs, err := pipeline.Consumers(ctx, d.js, d.srv.OwnerToken(), d.cfg.NATS.ReaderDurables); err == nil {
			own := map[string]bool{}
			for _, c := range cs {
				own[c.Name] = c.Owner == "daemon"
			}
			for _, c := range st.Consumers {
				if own[c.Name] {
					s.Stages = append(s.Stages, metrics.Stage{Name: c.Name, Pending: c.Pending, Lag: c.Lag, InProgress: c.AckPending, RedeliveredUnacked: c.Redelivered})
				}
			}
		}
		if seq := d.cat.LastSeq(); st.LastSeq > seq {
			s.CatalogLag = st.LastSeq - seq
		}
	}
	if cs, err := d.cat.Stats(); err == nil {
		s.Files = map[string]metrics.Count{}
		for state, n := range cs.ByState {
			s.Files[state] = metrics.Count{Files: n.Files, Bytes: n.Bytes}
		}
		s.Objects = cs.Objects
		s.Tiers, s.BelowCopies = d.tierCopies(cs.Objects)
	}
	if st := d.stages; st != nil {
		if it := st.interceptor; it != nil {
			if n, err := it.MarkCount(); err == nil {
				s.StubsMarked, s.StubsKnown = n, true
			}
			is := it.Stats()
			s.Fanotify = metrics.Fanotify{Events: is.Events, Allowed: is.Allowed, Denied: is.Denied, Overflows: is.Overflows}
			for _, r := range it.RuleStats() {
				s.Rules = append(s.Rules, metrics.Rule{Name: r.Name, Action: string(r.Action), Events: r.Events, Denied: r.Denied,
					Throttled: r.Throttled, Served: r.Served, Waited: r.Waited})
			}
			s.Storms = it.Storms()
		}
		if st.modwatch != nil {
			s.WriteWatched = uint64(st.modwatch.Stats().Watched)
		}
		for name, tt := range st.tapeTiers {
			for _, v := range tt.Volumes() {
				s.TapeVolumes = append(s.TapeVolumes, metrics.TapeVolume{Tier: name, Volume: v.Volume, State: v.State})
			}
		}
	}
	return s
}

// tierCopies counts the good and corrupt copies on each configured tier,
// and the objects with fewer than release.copies good copies on the tiers
// that count (release.from; every tier when empty). One pass over the
// catalog's copies.
func (d *daemon) tierCopies(objects uint64) ([]metrics.Tier, uint64) {
	type count struct{ good, bytes, corrupt uint64 }
	by := map[string]*count{}
	for _, t := range d.cfg.Tiers {
		by[t.Name] = &count{}
	}
	counts := func(tier string) bool {
		return len(d.cfg.Release.From) == 0 || slices.Contains(d.cfg.Release.From, tier)
	}
	var enough uint64
	cur, good := "", 0
	end := func() {
		if cur != "" && good >= d.cfg.Release.Copies {
			enough++
		}
	}
	_, _ = d.cat.Scan(catalog.ScanFuncs{Copy: func(c *catalog.Copy) error {
		if c.ObjectID != cur {
			end()
			cur, good = c.ObjectID, 0
		}
		n := by[c.Tier]
		if n == nil {
			n = &count{}
			by[c.Tier] = n
		}
		if c.State == catalog.CopyGood {
			n.good++
			n.bytes += uint64(c.PackedSize)
			if counts(c.Tier) {
				good++
			}
		} else {
			n.corrupt++
		}
		return nil
	}})
	end()
	var out []metrics.Tier
	for _, t := range d.cfg.Tiers {
		n := by[t.Name]
		out = append(out, metrics.Tier{Name: t.Name, Kind: t.Kind, Objects: n.good, StoredBytes: n.bytes, Corrupt: n.corrupt})
	}
	var below uint64
	if objects > enough {
		below = objects - enough
	}
	return out, below
}

// hotUsage is each hot tree's filesystem usage and watermarks.
func (d *daemon) hotUsage() []metrics.HotTree {
	var out []metrics.HotTree
	for _, h := range d.cfg.Hot {
		ht := metrics.HotTree{Path: h.Path, High: h.HighWatermark, Low: h.LowWatermark}
		if ht.High == 0 {
			ht.High, ht.Low = d.cfg.Policy.HighWatermark, d.cfg.Policy.LowWatermark
		}
		var fs unix.Statfs_t
		if unix.Statfs(h.Path, &fs) == nil {
			bs := uint64(fs.Bsize)
			// As the watermarks count: blocks reserved for root are not
			// part of the size (scanner).
			ht.Used = (fs.Blocks - fs.Bfree) * bs
			ht.Size = ht.Used + fs.Bavail*bs
		}
		out = append(out, ht)
	}
	return out
}
