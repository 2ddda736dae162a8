package metrics

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

//go:embed web
var webFS embed.FS

// IsLoopback reports whether addr (host:port) listens on loopback only.
// A host name other than localhost, or an empty host (every address), is
// not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Serve listens on addr and serves until the returned stop is called. It
// returns the address it listens on (a port 0 is chosen by the kernel).
func (m *Metrics) Serve(addr string) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics: listen on %s: %w (set metrics.listen to a free address, or \"off\")", addr, err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("metrics server", "err", err)
		}
	}()
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// Handler serves /metrics, /healthz, /readyz, /api/status and the page.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !m.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", m.notYet.Load())
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /api/status", m.serveStatus)
	sub, _ := fs.Sub(webFS, "web")
	mux.Handle("GET /", http.FileServerFS(sub))
	return mux
}

// StatusJSON is /api/status: every metric of a scrape (the same
// registry, so the page shows the numbers /metrics shows), the recent
// recalls and the hot trees' usage over time.
type StatusJSON struct {
	Time    time.Time               `json:"time"`
	Ready   bool                    `json:"ready"`
	Metrics map[string][]SeriesJSON `json:"metrics"`
	Recent  []Recent                `json:"recent"`
	History []Sample                `json:"history"`
}

// SeriesJSON is one series: its labels and value (counters and gauges),
// or its count, sum and cumulative buckets (histograms).
type SeriesJSON struct {
	Labels  map[string]string `json:"labels,omitempty"`
	Value   float64           `json:"value"`
	Count   uint64            `json:"count,omitempty"`
	Sum     float64           `json:"sum,omitempty"`
	Buckets []BucketJSON      `json:"buckets,omitempty"`
}

// BucketJSON is one cumulative histogram bucket (le is +Inf for the last).
type BucketJSON struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

// MarshalJSON writes +Inf as the string "+Inf" (JSON has no infinity).
func (b BucketJSON) MarshalJSON() ([]byte, error) {
	if math.IsInf(b.LE, 1) {
		return fmt.Appendf(nil, `{"le":"+Inf","count":%d}`, b.Count), nil
	}
	type plain BucketJSON
	return json.Marshal(plain(b))
}

func (m *Metrics) serveStatus(w http.ResponseWriter, _ *http.Request) {
	out := StatusJSON{Time: time.Now(), Ready: m.ready.Load(), Metrics: map[string][]SeriesJSON{}}
	fams, err := m.reg.Gather()
	if err != nil && len(fams) == 0 {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for _, f := range fams {
		var list []SeriesJSON
		for _, mt := range f.GetMetric() {
			s := SeriesJSON{}
			if lp := mt.GetLabel(); len(lp) > 0 {
				s.Labels = map[string]string{}
				for _, l := range lp {
					s.Labels[l.GetName()] = l.GetValue()
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.Value = mt.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.Value = mt.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := mt.GetHistogram()
				s.Count, s.Sum, s.Value = h.GetSampleCount(), h.GetSampleSum(), float64(h.GetSampleCount())
				for _, b := range h.GetBucket() {
					s.Buckets = append(s.Buckets, BucketJSON{LE: b.GetUpperBound(), Count: b.GetCumulativeCount()})
				}
				s.Buckets = append(s.Buckets, BucketJSON{LE: math.Inf(1), Count: h.GetSampleCount()})
			default:
				continue // summaries and untyped: none of ours
			}
			list = append(list, s)
		}
		out.Metrics[f.GetName()] = list
	}
	m.mu.Lock()
	out.Recent = append([]Recent(nil), m.mu.recent...)
	out.History = append([]Sample(nil), m.mu.history...)
	m.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}
