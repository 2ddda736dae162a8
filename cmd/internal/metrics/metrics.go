// Package metrics serves what an operator watches of a running daemon, on
// one HTTP listener (loopback by default): Prometheus metrics at
// /metrics, /healthz (the process answers), /readyz (every stub is
// marked and the stages run), the status page at / (embedded, no
// external assets) and the JSON it polls at /api/status.
//
// Counters of work done (recalls, archives, releases) are derived from
// the event log: Run follows this host's events from the sequence after
// the last one at start, so they count what happened since the daemon
// started, as Prometheus counters do. The rest is read when scraped:
// stage backlogs, catalog counts, hot-tree usage and the interceptor's
// own numbers (State, from Config.Gather), and two latency histograms
// the interceptor feeds through its hooks (Answered, FirstByte). Every
// metric is listed in docs/METRICS.md. Only cmd/strata imports it.
package metrics

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/strata-hsm/strata/events"
)

// DefaultListen is where the daemon serves metrics when nothing is
// configured: loopback only (the page and the metrics have no
// authentication).
const DefaultListen = "127.0.0.1:9750"

// Config configures Metrics.
type Config struct {
	// Host is this host's subject token.
	Host string
	// Version is reported in strata_build_info.
	Version string
	// Tiers are the configured tiers: their series exist (at 0) from the
	// start, so that rates and dashboards need no first event.
	Tiers []string
	// Follow reads this host's events from the log in order from fromSeq,
	// calling fn for each (ev nil: an event that could not be decoded),
	// until ctx ends (pipeline.FollowRecords, filtered on Host).
	Follow func(ctx context.Context, fromSeq uint64, fn func(env events.Envelope, ev events.Event)) error
	// Gather reads the values reported when scraped. It is called once
	// per scrape (and per poll of the status page), from the HTTP
	// handler's goroutine; it should take well under a second.
	Gather func(ctx context.Context) State
	// HotUsage reads the hot trees' usage for the page's history (cheap:
	// a statfs each); sampled every SampleEvery.
	HotUsage    func() []HotTree
	SampleEvery time.Duration // default 10 s
	Logger      *slog.Logger
}

// State is what Gather reports at each scrape. A field left empty is
// reported as absent (no series), not as zero.
type State struct {
	Stages       []Stage
	DeadLetters  uint64
	LastSeq      uint64           // the event log's last sequence
	CatalogLag   uint64           // events the catalog has yet to apply
	Files        map[string]Count // by catalog state (resident, archived, released, …)
	Tiers        []Tier
	Objects      uint64 // objects in the catalog
	BelowCopies  uint64 // objects with fewer good copies than Copies, on the tiers that count
	Copies       int    // release.copies
	HotTrees     []HotTree
	StubsMarked  int  // the interceptor's inode marks
	StubsKnown   bool // StubsMarked was read
	Fanotify     Fanotify
	Rules        []Rule
	Storms       uint64
	TapeVolumes  []TapeVolume
	Conditions   map[string]int // conditions in force by kind (out_of_space, …), every known kind
	WriteWatched uint64         // files the modification watcher marks (0: none)
}

// Stage is one durable consumer's backlog.
type Stage struct {
	Name                           string
	Pending, Lag                   uint64
	InProgress, RedeliveredUnacked int
}

// Count is files and bytes.
type Count struct{ Files, Bytes uint64 }

// Tier is one cold tier's copies in the catalog.
type Tier struct {
	Name, Kind           string
	Objects, StoredBytes uint64 // good copies; their packed bytes
	Corrupt              uint64
}

// HotTree is one hot tree's filesystem usage and its watermarks
// (percent, as configured).
type HotTree struct {
	Path       string
	Size, Used uint64
	High, Low  int
}

// Fanotify is the interceptor's event counts since it opened.
type Fanotify struct{ Events, Allowed, Denied, Overflows uint64 }

// Rule is one recall rule's counters (interceptor.rule).
type Rule struct {
	Name, Action                      string
	Events, Denied, Throttled, Served uint64
	Waited                            time.Duration
}

// TapeVolume is a tape volume's last known state.
type TapeVolume struct{ Tier, Volume, State string }

// Metrics holds the registry and the counters fed from the event log and
// the interceptor.
type Metrics struct {
	cfg Config
	reg *prometheus.Registry
	log *slog.Logger

	recalls        *prometheus.CounterVec   // tier, outcome
	recallBytes    *prometheus.CounterVec   // tier
	recallDuration *prometheus.HistogramVec // tier, outcome
	firstByte      *prometheus.HistogramVec // tier, outcome
	requested      *prometheus.CounterVec   // reason
	answerLatency  *prometheus.HistogramVec // answer
	archivedObj    *prometheus.CounterVec   // tier
	archivedBytes  *prometheus.CounterVec   // tier
	archivedPacked *prometheus.CounterVec   // tier
	storeFailures  *prometheus.CounterVec   // tier
	selected       *prometheus.CounterVec   // reason
	releasedFiles  prometheus.Counter
	releasedBytes  prometheus.Counter
	skipped        prometheus.Counter
	modified       prometheus.Counter
	corrupt        *prometheus.CounterVec // tier
	eventsSeen     prometheus.Counter
	// released: the stubs released since start (file id → object id),
	// so that a repeated file.released is not counted twice. Only Run's
	// goroutine uses it.
	released    map[string]string
	followedSeq atomic.Uint64

	ready  atomic.Bool
	notYet atomic.Value // string: why not ready

	mu struct {
		sync.Mutex
		recent  []Recent // newest last, at most recentMax
		history []Sample // oldest first, at most historyMax
	}
}

// Recent is one recall outcome on the status page.
type Recent struct {
	Time    time.Time `json:"time"`
	Path    string    `json:"path"`
	Outcome string    `json:"outcome"` // completed, failed, tier_error
	Tier    string    `json:"tier"`
	Bytes   int64     `json:"bytes,omitempty"`
	Seconds float64   `json:"seconds,omitempty"`
	Process string    `json:"process,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// Sample is the hot trees' usage at one time (the page's fill chart).
type Sample struct {
	Time time.Time `json:"time"`
	Hot  []HotJSON `json:"hot"`
}

// HotJSON is one hot tree in a Sample.
type HotJSON struct {
	Path string `json:"path"`
	Size uint64 `json:"size"`
	Used uint64 `json:"used"`
}

const (
	recentMax  = 50
	historyMax = 360
)

// Recall outcomes (label outcome).
const (
	OutcomeCompleted = "completed"
	OutcomeFailed    = "failed"     // no tier could produce the bytes: the program got EIO
	OutcomeTierError = "tier_error" // one tier's copy failed; the next is tried
	OutcomeAllowed   = "allowed"    // first byte: the access was answered ALLOW
	OutcomeDenied    = "denied"     // first byte: the access was denied
)

// NoTier is the tier label of a recall no tier served (it failed, or its
// first bytes were resident).
const NoTier = "none"

// New builds the registry. Nothing runs until Run and Serve.
func New(cfg Config) *Metrics {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = 10 * time.Second
	}
	m := &Metrics{cfg: cfg, reg: prometheus.NewRegistry(), log: cfg.Logger, released: map[string]string{}}
	m.notYet.Store("starting")
	f := promFactory{m.reg}
	m.recalls = f.counterVec("strata_recalls_total", "Recalls finished, by the tier that served them and outcome (completed; failed: the program got EIO; tier_error: one tier's copy failed and the next was tried).", "tier", "outcome")
	m.recallBytes = f.counterVec("strata_recall_bytes_total", "Bytes brought back by completed recalls, by tier.", "tier")
	m.recallDuration = f.histogramVec("strata_recall_duration_seconds", "Time from the access that started a recall to the whole file being back and verified, by tier and outcome.",
		prometheus.ExponentialBucketsRange(0.005, 3600, 16), "tier", "outcome")
	m.firstByte = f.histogramVec("strata_recall_first_byte_seconds", "Time from the access that started a recall to its answer (the program gets its first bytes), by the tier they came from and outcome (allowed, denied).",
		prometheus.ExponentialBucketsRange(0.0005, 600, 16), "tier", "outcome")
	m.requested = f.counterVec("strata_recall_requests_total", "Recalls requested, by reason (access, prefetch, restore, probe).", "reason")
	m.answerLatency = f.histogramVec("strata_fanotify_answer_duration_seconds", "Time from reading a fanotify permission event to answering it, by answer (allow, deny).",
		prometheus.ExponentialBucketsRange(0.00001, 60, 16), "answer")
	m.archivedObj = f.counterVec("strata_archived_objects_total", "Objects copied to a cold tier (object.stored), by tier.", "tier")
	m.archivedBytes = f.counterVec("strata_archived_bytes_total", "Uncompressed bytes of the objects copied to a cold tier, by tier.", "tier")
	m.archivedPacked = f.counterVec("strata_archived_stored_bytes_total", "Compressed (stored) bytes of the objects copied to a cold tier, by tier.", "tier")
	m.storeFailures = f.counterVec("strata_store_failures_total", "Copies to a cold tier that failed (object.store_failed), by tier.", "tier")
	m.selected = f.counterVec("strata_files_selected_total", "Files selected for archiving, by reason (policy, watermark, manual).", "reason")
	m.releasedFiles = f.counter("strata_released_files_total", "Files released (their blocks freed, a stub left).")
	m.releasedBytes = f.counter("strata_released_bytes_total", "Bytes of the files released (their size).")
	m.skipped = f.counter("strata_release_skipped_total", "Files not released (changed while archived, unreadable, …).")
	m.modified = f.counter("strata_files_modified_total", "Archived files found written (file.modified).")
	m.corrupt = f.counterVec("strata_corrupt_copies_found_total", "Copies found corrupt (object.corrupt), by tier.", "tier")
	m.eventsSeen = f.counter("strata_events_total", "Events of this host read from the event log since start.")
	m.zeroes()
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strata_ready", Help: "1 once every stub is marked and the stages run (/readyz)."},
		func() float64 { return b2f(m.ready.Load()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strata_build_info", Help: "Always 1; labels name the version.", ConstLabels: prometheus.Labels{"version": cfg.Version}},
		func() float64 { return 1 }))
	m.reg.MustRegister(&stateCollector{m: m})
	return m
}

// zeroes creates the series of the known label values.
func (m *Metrics) zeroes() {
	for _, t := range append(slices.Clone(m.cfg.Tiers), NoTier) {
		for _, o := range []string{OutcomeCompleted, OutcomeFailed, OutcomeTierError} {
			if t != NoTier || o == OutcomeFailed {
				m.recalls.WithLabelValues(t, o)
			}
		}
		for _, o := range []string{OutcomeAllowed, OutcomeDenied} {
			m.firstByte.WithLabelValues(t, o)
		}
		if t == NoTier {
			continue
		}
		m.recallBytes.WithLabelValues(t)
		m.recallDuration.WithLabelValues(t, OutcomeCompleted)
		m.archivedObj.WithLabelValues(t)
		m.archivedBytes.WithLabelValues(t)
		m.archivedPacked.WithLabelValues(t)
		m.storeFailures.WithLabelValues(t)
		m.corrupt.WithLabelValues(t)
	}
	for _, r := range []string{events.RecallAccess, events.RecallPrefetch, events.RecallRestore, events.RecallProbe} {
		m.requested.WithLabelValues(r)
	}
	for _, r := range []string{events.ReasonPolicy, events.ReasonWatermark, events.ReasonManual} {
		m.selected.WithLabelValues(r)
	}
	m.answerLatency.WithLabelValues("allow")
	m.answerLatency.WithLabelValues("deny")
}

// Registry is the registry served at /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetReady makes /readyz answer ready (every stub marked, stages run).
func (m *Metrics) SetReady() { m.ready.Store(true) }

// SetNotReady makes /readyz answer 503 with why (stopping, …).
func (m *Metrics) SetNotReady(why string) {
	m.notYet.Store(why)
	m.ready.Store(false)
}

// Answered records one fanotify answer (the interceptor's OnAnswer).
func (m *Metrics) Answered(latency time.Duration, denied bool) {
	a := "allow"
	if denied {
		a = "deny"
	}
	m.answerLatency.WithLabelValues(a).Observe(latency.Seconds())
}

// FirstByte records the answer to the access that started a recall (the
// interceptor's OnFirstByte).
func (m *Metrics) FirstByte(tier string, latency time.Duration, denied bool) {
	if tier == "" {
		tier = NoTier
	}
	o := OutcomeAllowed
	if denied {
		o = OutcomeDenied
	}
	m.firstByte.WithLabelValues(tier, o).Observe(latency.Seconds())
}

// Run follows the event log from fromSeq and samples the hot trees until ctx ends.
func (m *Metrics) Run(ctx context.Context, fromSeq uint64) error {
	go m.sample(ctx)
	return m.cfg.Follow(ctx, fromSeq, m.apply)
}

// FollowedSeq is the last event sequence counted (tests wait for it).
func (m *Metrics) FollowedSeq() uint64 { return m.followedSeq.Load() }

// apply counts one event.
func (m *Metrics) apply(r events.Envelope, ev events.Event) {
	defer m.followedSeq.Store(r.Seq)
	if ev == nil {
		return
	}
	m.eventsSeen.Inc()
	switch e := ev.(type) {
	case *events.RecallRequested:
		m.requested.WithLabelValues(e.Reason).Inc()
	case *events.RecallCompleted:
		delete(m.released, e.FileID)
		tier := orNone(e.SourceTier)
		m.recalls.WithLabelValues(tier, OutcomeCompleted).Inc()
		m.recallBytes.WithLabelValues(tier).Add(float64(e.Bytes))
		d := time.Duration(e.DurationNS)
		m.recallDuration.WithLabelValues(tier, OutcomeCompleted).Observe(d.Seconds())
		m.remember(Recent{Time: r.Time, Path: e.Path, Outcome: OutcomeCompleted, Tier: tier, Bytes: e.Bytes, Seconds: d.Seconds(), Process: e.Process})
	case *events.RecallFailed:
		o := OutcomeFailed
		if e.Tier != "" {
			o = OutcomeTierError
		}
		tier := orNone(e.Tier)
		m.recalls.WithLabelValues(tier, o).Inc()
		m.remember(Recent{Time: r.Time, Path: e.Path, Outcome: o, Tier: tier, Process: e.Process, Reason: e.Reason})
	case *events.ObjectStored:
		m.archivedObj.WithLabelValues(e.Tier).Inc()
		m.archivedBytes.WithLabelValues(e.Tier).Add(float64(e.Size))
		m.archivedPacked.WithLabelValues(e.Tier).Add(float64(e.PackedSize))
	case *events.ObjectStoreFailed:
		m.storeFailures.WithLabelValues(e.Tier).Inc()
	case *events.FileSelected:
		m.selected.WithLabelValues(e.Reason).Inc()
	case *events.FileReleased:
		// The releaser may publish file.released again for a stub when
		// a later copy lands (nothing more is freed): count a file once
		// per stub, until it is recalled, written or deleted.
		if m.released[e.FileID] == e.ObjectID {
			return
		}
		m.released[e.FileID] = e.ObjectID
		m.releasedFiles.Inc()
		m.releasedBytes.Add(float64(e.Stat.Size))
	case *events.FileReleaseSkipped:
		m.skipped.Inc()
	case *events.FileModified:
		delete(m.released, e.FileID)
		m.modified.Inc()
	case *events.FileDeleted:
		delete(m.released, e.FileID)
	case *events.ObjectCorrupt:
		m.corrupt.WithLabelValues(e.Tier).Inc()
	}
}

func (m *Metrics) remember(r Recent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.recent = append(m.mu.recent, r)
	if len(m.mu.recent) > recentMax {
		m.mu.recent = append(m.mu.recent[:0], m.mu.recent[len(m.mu.recent)-recentMax:]...)
	}
}

// sample records the hot trees' usage every SampleEvery.
func (m *Metrics) sample(ctx context.Context) {
	if m.cfg.HotUsage == nil {
		return
	}
	t := time.NewTicker(m.cfg.SampleEvery)
	defer t.Stop()
	for {
		s := Sample{Time: time.Now()}
		for _, h := range m.cfg.HotUsage() {
			s.Hot = append(s.Hot, HotJSON{Path: h.Path, Size: h.Size, Used: h.Used})
		}
		m.mu.Lock()
		m.mu.history = append(m.mu.history, s)
		if len(m.mu.history) > historyMax {
			m.mu.history = append(m.mu.history[:0], m.mu.history[len(m.mu.history)-historyMax:]...)
		}
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return NoTier
	}
	return s
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promFactory registers metrics as it makes them.
type promFactory struct{ reg *prometheus.Registry }

func (f promFactory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f promFactory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f promFactory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(h)
	return h
}
