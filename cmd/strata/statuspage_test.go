package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// pageView is what TestStatusPage reads from the page's DOM.
type pageView struct {
	Polls   int                `json:"polls"`
	Ready   string             `json:"ready"`
	Figs    map[string]float64 `json:"figs"`
	Tiers   map[string]float64 `json:"tiers"`   // tier → good copies shown
	Stages  map[string]float64 `json:"stages"`  // stage → lag shown
	Bars    float64            `json:"bars"`    // sum of the histogram's bars
	Hist    float64            `json:"hist"`    // the count under it
	Recent  map[string]string  `json:"recent"`  // path → outcome
	Points  int                `json:"points"`  // points of the first fill line
	Ratios  []float64          `json:"ratios"`  // watermark lines drawn
	Trees   map[string]float64 `json:"trees"`   // tree → used bytes shown
	Visible bool               `json:"visible"` // the charts have a size
}

const readPage = `(() => {
  const v = {polls: +document.getElementById("updated").dataset.polls, ready: document.getElementById("ready").textContent,
    figs: {}, tiers: {}, stages: {}, recent: {}, trees: {}, ratios: [], bars: 0};
  for (const f of document.querySelectorAll(".fig")) v.figs[f.id.slice(4)] = +f.dataset.value;
  for (const r of document.querySelectorAll("#tiers tbody tr")) v.tiers[r.dataset.tier] = +r.children[2].dataset.value;
  for (const r of document.querySelectorAll("#stages tbody tr")) v.stages[r.dataset.stage] = +r.children[4].dataset.value;
  for (const b of document.querySelectorAll("#hist .bar")) v.bars += +b.dataset.count;
  v.hist = +document.getElementById("hist-note").dataset.count;
  for (const r of document.querySelectorAll("#recent tbody tr")) v.recent[r.dataset.path] = r.dataset.outcome;
  const line = document.querySelector("#fill .fill-line");
  v.points = line ? +line.dataset.points : 0;
  for (const w of document.querySelectorAll("#fill .watermark")) v.ratios.push(+w.dataset.ratio);
  for (const t of document.querySelectorAll("#fill-legend .tree")) v.trees[t.dataset.tree] = +t.dataset.used;
  const r = document.getElementById("fill").getBoundingClientRect();
  v.visible = r.width > 100 && r.height > 100;
  return v;
})()`

// TestStatusPage opens the status page in headless Chromium against a
// real daemon (the metrics rig: a loop-mounted ext4 hot tree, a
// directory tier and an emulated tape) that archived, released and
// recalled files, and checks that the page shows what /metrics says:
// recalls, files released, copies stored, stubs marked, copies per tier,
// lag per stage, the recall-latency histogram's count, the recent recalls
// by path, the hot tree's fill and its watermarks. Then it archives and
// recalls one more file while the page stays open, and waits for the page
// to show it without a reload. No console error or warning, no uncaught
// exception, no request anywhere but the daemon's own address.
func TestStatusPage(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		stratatest.Skip(t, "needs chromium on PATH (Debian package chromium; scripts/setup.sh installs it)")
	}
	r := startMetricsRig(t)
	n := float64(len(r.files))
	r.archive(t)
	r.recall(t)
	waitScrape(t, r.addr, "recalls counted and stubs unmarked", func(s scrape) bool {
		return s.get("strata_recalls_total", "outcome=completed") >= n && s.get("strata_stubs_marked") == 0
	})

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1000))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()

	var mu sync.Mutex
	var problems, requests []string
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning || e.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range e.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				problems = append(problems, fmt.Sprintf("console.%s: %s", e.Type, strings.Join(args, " ")))
			}
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			desc := ""
			if d.Exception != nil {
				desc = d.Exception.Description
			}
			problems = append(problems, fmt.Sprintf("exception at %s:%d: %s %s", d.URL, d.LineNumber, d.Text, desc))
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.EntryLevelError || e.Entry.Level == cdplog.EntryLevelWarning {
				problems = append(problems, fmt.Sprintf("log %s: %s %s", e.Entry.Level, e.Entry.Text, e.Entry.URL))
			}
		case *network.EventRequestWillBeSent:
			requests = append(requests, e.Request.URL)
		}
	}); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	page := "http://" + r.addr + "/"
	// chromedp enables the runtime, log and network domains itself.
	if _, err := chromedp.Run(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s in chromium: %v", page, err)
	}
	read := func() pageView {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[pageView](readPage))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		return v
	}
	// waitPage reads the page until cond holds on it and a scrape taken
	// just before (the daemon is idle: both stand still once counted).
	waitPage := func(what string, cond func(v pageView, s scrape) bool) (pageView, scrape) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for {
			s := scrapeMetrics(t, r.addr)
			v := read()
			if cond(v, s) {
				return v, s
			}
			if time.Now().After(deadline) {
				t.Fatalf("status page: %s not shown within 45s; page %+v\nscrape:\n%s", what, v, s.dump("strata_"))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	same := func(v pageView, s scrape) []string {
		var diff []string
		for fig, m := range map[string]float64{
			"recalls-completed": s.get("strata_recalls_total", "outcome=completed"),
			"recalls-failed":    s.get("strata_recalls_total", "outcome=failed"),
			"recall-bytes":      s.get("strata_recall_bytes_total"),
			"released-files":    s.get("strata_released_files_total"),
			"released-bytes":    s.get("strata_released_bytes_total"),
			"archived-objects":  s.get("strata_archived_objects_total"),
			"stubs-marked":      s.get("strata_stubs_marked"),
			"denied":            s.get("strata_recall_rule_denied_total"),
			"dead-letters":      s.get("strata_dead_letter_messages"),
		} {
			if got, ok := v.Figs[fig]; !ok || got != m {
				diff = append(diff, fmt.Sprintf("figure %s: page %g, /metrics %g", fig, got, m))
			}
		}
		for _, tier := range []string{"cold", "tape"} {
			if got, m := v.Tiers[tier], s.get("strata_tier_objects", "tier="+tier); got != m {
				diff = append(diff, fmt.Sprintf("tier %s copies: page %g, /metrics %g", tier, got, m))
			}
		}
		for _, st := range []string{"compressor", "releaser", "store-cold", "store-tape"} {
			if got, ok := v.Stages[st]; !ok || got != s.get("strata_stage_lag_messages", "stage="+st) {
				diff = append(diff, fmt.Sprintf("stage %s lag: page %g (shown %v), /metrics %g", st, got, ok, s.get("strata_stage_lag_messages", "stage="+st)))
			}
		}
		if m := s.get("strata_recall_duration_seconds_count"); v.Bars != m || v.Hist != m {
			diff = append(diff, fmt.Sprintf("latency histogram: bars sum to %g, count %g; /metrics count %g", v.Bars, v.Hist, m))
		}
		if got, m := v.Trees[r.hot], s.get("strata_hot_tree_used_bytes", "tree="+r.hot); got == 0 || m == 0 {
			diff = append(diff, fmt.Sprintf("hot tree %s: page used %g, /metrics %g", r.hot, got, m))
		}
		return diff
	}

	v, s := waitPage("the numbers /metrics shows", func(v pageView, s scrape) bool {
		return v.Polls >= 1 && v.Figs["recalls-completed"] == n && len(same(v, s)) == 0
	})
	if v.Ready != "ready" {
		t.Errorf("page says %q, daemon is ready", v.Ready)
	}
	for p := range r.files {
		if v.Recent[p] != "completed" {
			t.Errorf("recent recalls on the page: %s is %q (want completed); shown %v", p, v.Recent[p], v.Recent)
		}
	}
	if len(v.Ratios) != 2 || v.Ratios[0] != s.get("strata_hot_tree_high_watermark_ratio", "tree="+r.hot) || v.Ratios[1] != s.get("strata_hot_tree_low_watermark_ratio", "tree="+r.hot) {
		t.Errorf("watermark lines %v; /metrics high %g low %g", v.Ratios, s.get("strata_hot_tree_high_watermark_ratio"), s.get("strata_hot_tree_low_watermark_ratio"))
	}
	if v.Points < 1 || !v.Visible {
		t.Errorf("hot-tree fill chart: %d points, visible %v", v.Points, v.Visible)
	}

	// Live: one more file archived and recalled while the page is open.
	extra := filepath.Join(r.hot, "live.bin")
	b := bytes.Repeat([]byte("strata status page "), 40000)
	if err := os.WriteFile(extra, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", r.data, extra)
	if sum.Released != 1 {
		t.Fatalf("archive %s: %+v", extra, sum)
	}
	if got, err := exec.Command("cat", extra).Output(); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("cat %s: %d bytes, %v", extra, len(got), err)
	}
	polls := v.Polls
	v, _ = waitPage("the new recall, live", func(v pageView, s scrape) bool {
		return v.Figs["recalls-completed"] == n+1 && v.Recent[extra] == "completed" && len(same(v, s)) == 0
	})
	if v.Polls <= polls {
		t.Errorf("page polls %d then %d: not updated live", polls, v.Polls)
	}
	points := v.Points
	time.Sleep(5 * time.Second)
	if v := read(); v.Points <= points {
		t.Errorf("hot-tree fill chart: %d points, then %d after 5 s (want a point every 2 s)", points, v.Points)
	}

	// STRATA_STATUS_SHOT=FILE.png keeps a picture of the page, to look at.
	if shot := os.Getenv("STRATA_STATUS_SHOT"); shot != "" {
		if png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err == nil {
			os.WriteFile(shot, png, 0o644)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
	for _, u := range requests {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "data" && pu.Host != r.addr) {
			t.Errorf("the page requested %s: not the daemon's own address (assets must be embedded)", u)
		}
	}
	if len(requests) < 3 {
		t.Errorf("the page made %d requests (%v): it does not poll", len(requests), requests)
	}
}
