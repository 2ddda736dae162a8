package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// scrape is one scrape of /metrics: every sample by its series name
// (name{label="value",…}, labels sorted; a histogram as _count and _sum).
type scrape map[string]float64

// get returns the value of a series, or the sum over the series of name
// whose labels include every one of want ("k=v").
func (s scrape) get(name string, want ...string) float64 {
	var sum float64
	for k, v := range s {
		base, labels, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		ok := true
		for _, w := range want {
			kv := strings.SplitN(w, "=", 2)
			if !strings.Contains("{"+labels, `{`+kv[0]+`="`+kv[1]+`"`) && !strings.Contains(labels, `,`+kv[0]+`="`+kv[1]+`"`) {
				ok = false
			}
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// has reports whether a series of name (any labels) is present.
func (s scrape) has(name string) bool {
	for k := range s {
		if base, _, _ := strings.Cut(k, "{"); base == name {
			return true
		}
	}
	return false
}

func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := scrape{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(ls)
			key := func(n string) string {
				if len(ls) == 0 {
					return n
				}
				return n + "{" + strings.Join(ls, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key(name)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key(name)] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key(name+"_count")] = float64(m.GetHistogram().GetSampleCount())
				out[key(name+"_sum")] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

// metricsAddr is where the daemon on data serves metrics (daemon.json).
func metricsAddr(t *testing.T, data string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(data, daemonInfoFile))
	if err != nil {
		t.Fatal(err)
	}
	var info daemonInfo
	if err := json.Unmarshal(b, &info); err != nil || info.Metrics == "" {
		t.Fatalf("daemon.json names no metrics address: %s %v", b, err)
	}
	return info.Metrics
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricsRig is a real daemon (the built binary) on a loop-mounted ext4
// hot tree with a directory tier "cold", an emulated tape tier "tape"
// and a recall rule "nope" that denies the program named metricsdeny.
type metricsRig struct {
	data, hot, cold, addr string
	bin                   string
	files                 map[string][]byte
	total                 int64
}

func startMetricsRig(t *testing.T) *metricsRig {
	t.Helper()
	stratatest.NeedRoot(t)
	r := &metricsRig{bin: buildStrata(t), hot: stratatest.LoopMount(t, "ext4", 200<<20), data: t.TempDir(), cold: t.TempDir()}
	lib := t.TempDir()
	if out, errs, code := cli(t, "tape", "label", "emulator:"+lib, "--volume", "V1", "--pool", "p", "--capacity", "1GiB"); code != 0 {
		t.Fatalf("tape label: %s%s", out, errs)
	}
	cfg := fmt.Sprintf(`data_dir = %q
host = "metrics"
[[hot]]
path = %q
[[tier]]
name = "cold"
kind = "directory"
path = %q
require_mount = false
[[tier]]
name = "tape"
kind = "tape"
device = "emulator:%s"
pool = "p"
bundle_age = "1s"
[release]
copies = 1
from = ["cold"]
[[interceptor.rule]]
name = "nope"
comm = ["metricsdeny"]
action = "deny"
`, r.data, r.hot, r.cold, lib)
	cfgPath := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startStrataArgs(t, r.bin, r.data, "", "--config", cfgPath)
	r.addr = metricsAddr(t, r.data)
	rnd := rand.New(rand.NewPCG(15, 1))
	r.files = map[string][]byte{}
	for i, n := range []int{3<<20 + 17, 200 << 10, 1 << 20} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rnd.Uint32())
		}
		p := filepath.Join(r.hot, fmt.Sprintf("f%d.bin", i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		r.files[p] = b
		r.total += int64(n)
	}
	return r
}

// archive archives and releases every file of the rig.
func (r *metricsRig) archive(t *testing.T) {
	t.Helper()
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", r.data, r.hot)
	if sum.Released != len(r.files) {
		t.Fatalf("archive: %+v", sum)
	}
}

// recall reads every stub with cat: bytes equal the originals.
func (r *metricsRig) recall(t *testing.T) {
	t.Helper()
	for p, want := range r.files {
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat %s: %d bytes (want %d), %v", p, len(got), len(want), err)
		}
	}
}

// waitScrape scrapes until cond holds (the follower counts events a
// moment after they are published).
func waitScrape(t *testing.T, addr string, what string, cond func(s scrape) bool) scrape {
	t.Helper()
	var s scrape
	deadline := time.Now().Add(30 * time.Second)
	for {
		s = scrapeMetrics(t, addr)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics: %s did not come true within 30s; last scrape:\n%s", what, s.dump("strata_"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s scrape) dump(prefix string) string {
	var ks []string
	for k := range s {
		if strings.HasPrefix(k, prefix) {
			ks = append(ks, fmt.Sprintf("%s %g", k, s[k]))
		}
	}
	sort.Strings(ks)
	return strings.Join(ks, "\n")
}

// TestMetrics scrapes a running daemon (the real binary, a loop-mounted
// ext4 hot tree, a directory tier and an emulated tape), archives and
// releases three files, reads them back with cat, has a denied program
// touch a stub, and checks each metric moved by what was done: files and
// bytes released, objects and bytes stored per tier, stubs marked (the
// interceptor's marks only: the modification watcher marks the same
// files in its own group), recalls and their bytes and latencies by
// tier, the denied access, fanotify answers against the answer-latency
// histogram. Then it checks /healthz and /readyz, and that every metric
// the Grafana dashboard in docs/ uses is in the scrape.
func TestMetrics(t *testing.T) {
	r := startMetricsRig(t)
	if code, body := httpGet(t, "http://"+r.addr+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+r.addr+"/readyz"); code != 200 {
		t.Fatalf("/readyz of a ready daemon: %d %q", code, body)
	}
	s0 := scrapeMetrics(t, r.addr)
	for _, name := range []string{"strata_stubs_marked", "strata_released_files_total", "strata_ready", "strata_hot_tree_used_bytes", "strata_stage_lag_messages", "strata_tier_objects"} {
		if !s0.has(name) {
			t.Errorf("first scrape lacks %s", name)
		}
	}
	if s0.get("strata_stubs_marked") != 0 || s0.get("strata_ready") != 1 {
		t.Errorf("before any work: stubs_marked %g, ready %g", s0.get("strata_stubs_marked"), s0.get("strata_ready"))
	}
	if hw := s0.get("strata_hot_tree_high_watermark_ratio", "tree="+r.hot); hw != 0.9 {
		t.Errorf("high watermark ratio %g, want 0.9 (the default 90%%)", hw)
	}
	n := float64(len(r.files))
	total := float64(r.total)

	r.archive(t)
	s1 := waitScrape(t, r.addr, "released files counted", func(s scrape) bool {
		return s.get("strata_released_files_total") >= n && s.get("strata_archived_objects_total", "tier=tape") >= n &&
			s.get("strata_tier_objects", "tier=tape") >= n && s.get("strata_catalog_files", "state=released") >= n
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"strata_released_files_total", nil, n},
		{"strata_released_bytes_total", nil, total},
		{"strata_archived_objects_total", []string{"tier=cold"}, n},
		{"strata_archived_bytes_total", []string{"tier=cold"}, total},
		{"strata_archived_objects_total", []string{"tier=tape"}, n},
		{"strata_archived_bytes_total", []string{"tier=tape"}, total},
		{"strata_files_selected_total", []string{"reason=manual"}, n},
		{"strata_tier_objects", []string{"tier=cold"}, n},
		{"strata_tier_objects", []string{"tier=tape"}, n},
		{"strata_stubs_marked", nil, n},
		{"strata_catalog_files", []string{"state=released"}, n},
		{"strata_catalog_file_bytes", []string{"state=released"}, total},
		{"strata_objects_below_copies", nil, 0},
		{"strata_recalls_total", nil, 0},
	} {
		if got := s1.get(c.name, c.labels...) - s0.get(c.name, c.labels...); got != c.want {
			t.Errorf("after archiving: %s%v moved by %g, want %g", c.name, c.labels, got, c.want)
		}
	}
	if got := s1.get("strata_archived_stored_bytes_total", "tier=cold"); got < total || got > total*1.01+4096 {
		t.Errorf("stored bytes on cold: %g for %g bytes of random data", got, total)
	}
	if got := s1.get("strata_tier_stored_bytes", "tier=cold"); got != s1.get("strata_archived_stored_bytes_total", "tier=cold") {
		t.Errorf("strata_tier_stored_bytes{cold} %g, strata_archived_stored_bytes_total{cold} %g: one catalog, one log, same copies", got, s1.get("strata_archived_stored_bytes_total", "tier=cold"))
	}
	if s1.get("strata_write_watcher_marks") < n {
		t.Logf("write watcher marks %g (the watcher marks stubs in its own group)", s1.get("strata_write_watcher_marks"))
	}
	if !s1.has("strata_tape_volume_state") {
		t.Errorf("no strata_tape_volume_state after writing to tape")
	}

	// A denied program: EPERM, nothing recalled, counted by its rule.
	deny := filepath.Join(t.TempDir(), "metricsdeny")
	catBin, _ := exec.LookPath("cat")
	if b, err := os.ReadFile(catBin); err != nil || os.WriteFile(deny, b, 0o755) != nil {
		t.Fatal(err)
	}
	var one string
	for p := range r.files {
		one = p
		break
	}
	if out, err := exec.Command(deny, one).CombinedOutput(); err == nil || !strings.Contains(string(out), "not permitted") {
		t.Fatalf("metricsdeny on a stub: %v %s (want EPERM)", err, out)
	}
	s2 := scrapeMetrics(t, r.addr)
	if got := s2.get("strata_recall_rule_denied_total", "rule=nope") - s1.get("strata_recall_rule_denied_total", "rule=nope"); got < 1 {
		t.Errorf("denied access not counted by rule nope: moved by %g", got)
	}
	if got := s2.get("strata_fanotify_answers_total", "answer=deny") - s1.get("strata_fanotify_answers_total", "answer=deny"); got < 1 {
		t.Errorf("deny answers moved by %g", got)
	}

	r.recall(t)
	s3 := waitScrape(t, r.addr, "recalls counted and stubs unmarked", func(s scrape) bool {
		return s.get("strata_recalls_total", "outcome=completed") >= n && s.get("strata_stubs_marked") == 0 &&
			s.get("strata_catalog_files", "state=released") == 0
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"strata_recalls_total", []string{"tier=cold", "outcome=completed"}, n},
		{"strata_recalls_total", []string{"outcome=failed"}, 0},
		{"strata_recall_bytes_total", []string{"tier=cold"}, total},
		{"strata_recall_duration_seconds_count", []string{"tier=cold", "outcome=completed"}, n},
		{"strata_recall_first_byte_seconds_count", []string{"tier=cold", "outcome=allowed"}, n},
		{"strata_recall_requests_total", []string{"reason=access"}, n},
		{"strata_stubs_marked", nil, -n},
		{"strata_catalog_files", []string{"state=released"}, -n},
	} {
		if got := s3.get(c.name, c.labels...) - s2.get(c.name, c.labels...); got != c.want {
			t.Errorf("after cat: %s%v moved by %g, want %g", c.name, c.labels, got, c.want)
		}
	}
	if s3.get("strata_recall_duration_seconds_sum") <= 0 || s3.get("strata_recall_first_byte_seconds_sum") <= 0 {
		t.Errorf("recall latencies sum to nothing: %g %g", s3.get("strata_recall_duration_seconds_sum"), s3.get("strata_recall_first_byte_seconds_sum"))
	}
	// Every answer is timed once: the histogram counts what the
	// interceptor counts (the daemon is idle now).
	answers := s3.get("strata_fanotify_answers_total")
	if timed := s3.get("strata_fanotify_answer_duration_seconds_count"); timed != answers || answers < n {
		t.Errorf("fanotify answers %g, timed answers %g (want equal, >= %g)", answers, timed, n)
	}
	for _, st := range []string{"compressor", "releaser", "store-cold", "store-tape"} {
		if !s3.has("strata_stage_lag_messages") || s3.get("strata_stage_lag_messages", "stage="+st) != 0 {
			t.Errorf("stage %s: lag %g at rest (want a series at 0)", st, s3.get("strata_stage_lag_messages", "stage="+st))
		}
	}
	checkDashboard(t, s3)
}

// checkDashboard: every metric the Grafana dashboard queries is in the
// scrape (histograms by their _bucket, _count or _sum).
func checkDashboard(t *testing.T, s scrape) {
	t.Helper()
	b, err := os.ReadFile("../../docs/grafana-strata.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("docs/grafana-strata.json: %v", err)
	}
	names := map[string]bool{}
	re := regexp.MustCompile(`\bstrata_[a-z_]+`)
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "expr" {
					for _, n := range re.FindAllString(s, -1) {
						names[n] = true
					}
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	if len(names) < 15 {
		t.Fatalf("the dashboard queries only %d strata metrics", len(names))
	}
	var missing []string
	for n := range names {
		base := n
		if h, ok := strings.CutSuffix(n, "_bucket"); ok {
			base = h + "_count"
		}
		if !s.has(base) {
			missing = append(missing, n)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics the daemon does not export: %v", missing)
	}
}
