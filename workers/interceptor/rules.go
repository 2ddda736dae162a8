//go:build linux

package interceptor

// Recall rules: what a program may do with stubs (issue 12 item 5).
//
// Config.Rules are matched, in order, against the process that raised an
// event: by executable, process name, effective uid and cgroup v2 path
// (every key a rule gives must match; a list matches if one item does).
// The first rule that matches decides; a process no rule matches recalls.
//
//	recall     the default: the access recalls what it needs.
//	deny       the access (or the open) fails with Rule.Errno (EPERM by
//	           default) as long as the file is a stub; nothing is recalled.
//	           For backup and indexing jobs (IBM's optimized-recall-only).
//	throttle   recalls of the rule's programs are paced: RecallsPerMin
//	           spaces the starts of the recalls they start, BytesPerSec
//	           the reads from the cold tiers those recalls make (all of
//	           them share one budget; a read waits until the bytes before
//	           it are paid for). Such a recall fetches what its programs
//	           read (range first, no background read-ahead) until a
//	           program the rule does not throttle touches the stub: that
//	           takes the throttle off it, and it is recalled as usual.
//	head-only  accesses to bytes that are already resident (data on disk,
//	           verified: the resident head of a stub, ranges a recall
//	           filled) proceed; anything that needs a recall fails with
//	           Rule.Errno (EPERM by default) and recalls nothing. Mode
//	           pre-access only: in open-perm the open is denied (reads
//	           after an open raise no event). What counts as resident is
//	           decided in one place, Interceptor.resident.
//
// The kernel accepts only a few errnos in a fanotify deny
// (FAN_DENY_ERRNO, Linux 6.13; fanotify(7)): EPERM, EIO, EBUSY, ETXTBSY,
// EAGAIN, ENOSPC, EDQUOT. EACCES is not one of them (TestDenyErrnos shows
// the kernel refuses it), so a denied program sees EPERM ("Operation not
// permitted"), the errno of a plain FAN_DENY and the closest to EACCES.
//
// Matching is cheap: each process is read from /proc (stat, exe, status,
// cgroup) once, cached by pid with its start time, and its rule matched
// once. An event that would start a recall checks the start time (one
// read of /proc/PID/stat) so a reused pid is never taken for the process
// that had it; other events trust the cache for procTTL, after which the
// process is read again (an exec, a setuid or a move to another cgroup is
// seen within procTTL). Resident files raise no event and never get here.
//
// A storm (Config.StormRecalls recalls started by one process within
// Config.StormWindow) is logged and published as recall.storm, at most
// once per stormQuiet per process, whatever its rule. Processes of the
// daemon's own executable (`strata recall --wait`, a bulk recall someone
// asked for) are not counted.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/glob"
	"github.com/strata-hsm/strata/workers/stub"
)

// Action is what a rule does with the accesses of its programs.
type Action string

// Actions.
const (
	ActionRecall   Action = events.RuleRecall
	ActionDeny     Action = events.RuleDeny
	ActionThrottle Action = events.RuleThrottle
	ActionHeadOnly Action = events.RuleHeadOnly
)

// Defaults of the storm detector.
const (
	DefaultStormRecalls = 50
	DefaultStormWindow  = time.Second
	// stormQuiet: a process whose storm was reported is reported again
	// at most this often.
	stormQuiet = time.Minute
	// procTTL: how long a process read from /proc is trusted by events
	// that do not start a recall.
	procTTL = time.Second
	// maxProcs bounds the process cache (entries are a few hundred bytes).
	maxProcs = 8192
	// pacePoll: how often a paced read checks that it is still throttled.
	pacePoll = 50 * time.Millisecond
	// maxStormRecalls bounds StormRecalls (each process that starts
	// recalls keeps that many timestamps).
	maxStormRecalls = 100000
)

// Rule says what the programs it matches may do with stubs. A rule names
// at least one of Exe, Comm, UID and Cgroup; all it names must match.
type Rule struct {
	// Name appears in logs and in recall.storm. Default "rule[N]".
	Name string
	// Exe: patterns of the executable's path (/proc/PID/exe): an absolute
	// path, with path.Match wildcards in a segment and "**" for any
	// number of segments ("/usr/bin/tar", "/opt/backup/**"), or a name
	// without "/", matched against the executable's base name ("tar").
	// The path is the resolved one (symlinks followed: "/bin/tar" is
	// "/usr/bin/tar" on merged-/usr systems). A script matches its
	// interpreter ("/usr/bin/python3.11").
	Exe []string
	// Comm: path.Match patterns of the process name (/proc/PID/comm, at
	// most 15 bytes: the base name it was started as, or what it set).
	Comm []string
	// UID: effective uids (the second field of Uid: in /proc/PID/status).
	UID []int64
	// Cgroup: cgroup v2 paths (the "0::" line of /proc/PID/cgroup, as the
	// daemon's cgroup namespace sees it); a rule matches that cgroup and
	// every cgroup below it ("/system.slice/backup.service"). Wildcards
	// as in Exe.
	Cgroup []string
	// Action: recall (default), deny, throttle or head-only.
	Action Action
	// Errno for deny and head-only (default EPERM): one
	// the kernel accepts in a fanotify deny: EPERM, EIO, EBUSY, ETXTBSY,
	// EAGAIN, ENOSPC, EDQUOT.
	Errno string
	// BytesPerSec and RecallsPerMin: the budget of a throttle rule (at
	// least one; both: the stricter holds).
	BytesPerSec   int64
	RecallsPerMin int64
}

// Storm describes a process that started many recalls in a short time
// (Config.OnStorm; published as recall.storm).
type Storm struct {
	PID     int32
	Process string // /proc/PID/comm
	Exe     string
	UID     uint32
	Cgroup  string
	Recalls int           // recalls started within Within
	Within  time.Duration // how long they took (at most Window)
	Window  time.Duration // Config.StormWindow
	Total   int64         // recalls this process started since it was first seen
	Rule    string        // the rule that matched it ("": none)
	Action  Action        // recall or throttle
	Path    string        // the stub whose recall crossed the threshold
}

// RuleStats are the counters of one rule since Open.
type RuleStats struct {
	Name      string        `json:"name"`
	Action    Action        `json:"action"`
	Events    uint64        `json:"events"`    // events of processes it matched
	Denied    uint64        `json:"denied"`    // accesses it denied (deny, head-only)
	Served    uint64        `json:"served"`    // head-only: accesses served from resident bytes, without a recall
	Throttled uint64        `json:"throttled"` // throttle: recall starts and reads that had to wait
	Waited    time.Duration `json:"waited_ns"` // throttle: total wait
	Bytes     uint64        `json:"bytes"`     // throttle: bytes fetched for recalls its programs started
}

// denyErrnos are the errnos the kernel accepts in FAN_DENY_ERRNO
// (fs/notify/fanotify/fanotify_user.c; fanotify(7), "FAN_DENY_ERRNO").
var denyErrnos = map[string]unix.Errno{
	"EPERM": unix.EPERM, "EIO": unix.EIO, "EBUSY": unix.EBUSY, "ETXTBSY": unix.ETXTBSY,
	"EAGAIN": unix.EAGAIN, "ENOSPC": unix.ENOSPC, "EDQUOT": unix.EDQUOT,
}

func denyErrnoNames() string {
	return "EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC or EDQUOT"
}

// validateRules checks Config.Rules and the storm settings; errors name
// the key: rule[N].action, storm_recalls, ...
func (c *Config) validateRules() error {
	bad := pipeline.BadConfig
	names := map[string]bool{}
	for n, r := range c.Rules {
		key := func(k string) string { return fmt.Sprintf("rule[%d].%s", n, k) }
		if r.Name != "" {
			if strings.ContainsFunc(r.Name, func(c rune) bool { return c < ' ' || c == 0x7f }) {
				return bad(key("name"), r.Name, "want printable characters")
			}
			if names[r.Name] {
				return bad(key("name"), r.Name, "used by another rule")
			}
			names[r.Name] = true
		}
		if len(r.Exe)+len(r.Comm)+len(r.UID)+len(r.Cgroup) == 0 {
			return bad(key("exe"), nil, "a rule names at least one of exe, comm, uid and cgroup (a rule for every program would hold the daemon's own tools too)")
		}
		for j, p := range r.Exe {
			if strings.Contains(p, "/") && !strings.HasPrefix(p, "/") {
				return bad(fmt.Sprintf("%s[%d]", key("exe"), j), p, "want an absolute path or a name without \"/\"")
			}
			if err := glob.Check(p); err != nil {
				return pipeline.NewConfigError(fmt.Sprintf("%s[%d]", key("exe"), j), p, err)
			}
		}
		for j, p := range r.Comm {
			if _, err := path.Match(p, ""); err != nil || p == "" || strings.Contains(p, "/") {
				return bad(fmt.Sprintf("%s[%d]", key("comm"), j), p, "want a process name or a path.Match pattern of one, without \"/\"")
			}
			if len(strings.ReplaceAll(p, "\\", "")) > 15 && !strings.ContainsAny(p, "*?[") {
				return bad(fmt.Sprintf("%s[%d]", key("comm"), j), p, "longer than 15 bytes: the kernel cuts process names there; match the executable with exe")
			}
		}
		for j, u := range r.UID {
			if u < 0 || u > 1<<32-2 {
				return bad(fmt.Sprintf("%s[%d]", key("uid"), j), u, "want a uid from 0 to 4294967294")
			}
		}
		for j, p := range r.Cgroup {
			if !strings.HasPrefix(p, "/") {
				return bad(fmt.Sprintf("%s[%d]", key("cgroup"), j), p, "want a cgroup v2 path from the root, like /system.slice/backup.service")
			}
			if err := glob.Check(p); err != nil {
				return pipeline.NewConfigError(fmt.Sprintf("%s[%d]", key("cgroup"), j), p, err)
			}
		}
		switch r.Action {
		case "", ActionRecall, ActionDeny, ActionThrottle, ActionHeadOnly:
		default:
			return bad(key("action"), string(r.Action), "want %q, %q, %q or %q", ActionRecall, ActionDeny, ActionThrottle, ActionHeadOnly)
		}
		if r.Errno != "" {
			if r.Action != ActionDeny && r.Action != ActionHeadOnly {
				return bad(key("errno"), r.Errno, "only for action deny or head-only")
			}
			if _, ok := denyErrnos[r.Errno]; !ok {
				why := ""
				if r.Errno == "EACCES" {
					why = " (the kernel refuses EACCES in a fanotify deny; EPERM is the closest)"
				}
				return bad(key("errno"), r.Errno, "want %s%s", denyErrnoNames(), why)
			}
		}
		if r.BytesPerSec < 0 {
			return bad(key("bytes_per_sec"), r.BytesPerSec, "want a positive rate")
		}
		if r.RecallsPerMin < 0 {
			return bad(key("recalls_per_min"), r.RecallsPerMin, "want a positive rate")
		}
		if r.Action == ActionThrottle && r.BytesPerSec == 0 && r.RecallsPerMin == 0 {
			return bad(key("bytes_per_sec"), nil, "a throttle rule needs bytes_per_sec or recalls_per_min")
		}
		if r.Action != ActionThrottle && (r.BytesPerSec != 0 || r.RecallsPerMin != 0) {
			k := "bytes_per_sec"
			if r.BytesPerSec == 0 {
				k = "recalls_per_min"
			}
			return bad(key(k), nil, "only for action throttle")
		}
	}
	if c.StormRecalls > maxStormRecalls {
		return bad("storm_recalls", c.StormRecalls, "want at most %d (0 or less: no storm detection)", maxStormRecalls)
	}
	if c.StormWindow < 0 {
		return bad("storm_window", c.StormWindow, "want a positive duration")
	}
	return nil
}

// compiledRule is a Rule ready to match, with its throttle state and
// counters.
type compiledRule struct {
	Rule
	exe, cgroup glob.Set
	uids        []uint32
	errno       unix.Errno

	mu struct {
		sync.Mutex
		nextRecall time.Time // throttle: the next recall may start then
		nextBytes  time.Time // throttle: the bytes charged are paid back then
	}
	events, denied, served, throttled, waitedNS, bytes atomic.Uint64
}

func compileRules(rs []Rule) []*compiledRule {
	out := make([]*compiledRule, 0, len(rs))
	for n, r := range rs {
		c := &compiledRule{Rule: r}
		c.Name = cmp.Or(c.Name, fmt.Sprintf("rule[%d]", n))
		c.Action = cmp.Or(c.Action, ActionRecall)
		// Validated: the patterns compile.
		c.exe, _ = glob.Compile(r.Exe)
		var cg []string
		for _, p := range r.Cgroup {
			cg = append(cg, p, strings.TrimSuffix(p, "/")+"/**")
		}
		c.cgroup, _ = glob.Compile(cg)
		for _, u := range r.UID {
			c.uids = append(c.uids, uint32(u))
		}
		switch {
		case r.Errno != "":
			c.errno = denyErrnos[r.Errno]
		default:
			c.errno = unix.EPERM
		}
		out = append(out, c)
	}
	return out
}

// matches reports whether the process s is one of the rule's.
func (c *compiledRule) matches(s *procSnap) bool {
	if len(c.Exe) > 0 && (s.exe == "" || !c.exe.MatchName(strings.TrimPrefix(s.exe, "/"), path.Base(s.exe))) {
		return false
	}
	if len(c.Comm) > 0 && !slices.ContainsFunc(c.Comm, func(p string) bool { ok, _ := path.Match(p, s.comm); return ok }) {
		return false
	}
	if len(c.uids) > 0 && (!s.uidOK || !slices.Contains(c.uids, s.uid)) {
		return false
	}
	if len(c.Cgroup) > 0 && (s.cgroup == "" || !c.cgroup.Match(strings.Trim(s.cgroup, "/"))) {
		return false
	}
	return true
}

// admit waits until the rule's budget lets one more recall start (or ctx
// ends), and reports how long it waited.
func (c *compiledRule) admit(ctx context.Context) time.Duration {
	now := time.Now()
	at := now
	c.mu.Lock()
	if c.RecallsPerMin > 0 {
		at = latest(at, c.mu.nextRecall)
		c.mu.nextRecall = at.Add(time.Minute / time.Duration(c.RecallsPerMin))
	}
	if c.BytesPerSec > 0 {
		at = latest(at, c.mu.nextBytes)
	}
	c.mu.Unlock()
	wait := at.Sub(now)
	if wait <= 0 {
		return 0
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	waited := time.Since(now)
	c.throttled.Add(1)
	c.waitedNS.Add(uint64(waited))
	return waited
}

// pace reserves n bytes of the rule's byte budget and waits until they
// are due: the budget is a schedule, each read starting when the bytes
// reserved before it are paid for at BytesPerSec (the first read of an
// idle rule starts at once, so the rule's programs get at most one read
// ahead of the rate). It stops waiting when ctx ends or still() turns
// false (checked every pacePoll).
func (c *compiledRule) pace(ctx context.Context, n int, still func() bool) {
	if c.BytesPerSec <= 0 {
		return
	}
	d := time.Duration(float64(n) / float64(c.BytesPerSec) * float64(time.Second))
	now := time.Now()
	c.mu.Lock()
	at := latest(now, c.mu.nextBytes)
	c.mu.nextBytes = at.Add(d)
	c.mu.Unlock()
	if !at.After(now) {
		return
	}
	c.throttled.Add(1)
	t := time.NewTicker(pacePoll)
	defer t.Stop()
	for time.Now().Before(at) && ctx.Err() == nil && still() {
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	c.waitedNS.Add(uint64(time.Since(now)))
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// procSnap is what the rules know of a process: an immutable snapshot.
type procSnap struct {
	start  uint64 // clock ticks after boot (/proc/PID/stat field 22): with the pid, names the process
	comm   string
	exe    string // "" for a kernel thread, or when unreadable
	uid    uint32 // effective
	uidOK  bool
	cgroup string // cgroup v2 path, "" if none
	rule   *compiledRule
	loaded time.Time
}

// proc is one process seen by the rules (one pid and start time).
type proc struct {
	pid   int32
	start uint64
	snap  atomic.Pointer[procSnap]

	mu struct {
		sync.Mutex
		// ring holds the start times of the last StormRecalls recalls
		// this process started (next: the oldest).
		ring     []time.Time
		next     int
		total    int64
		reported time.Time
		logged   map[*compiledRule]bool // first denial logged
	}
}

// rules is the rule engine of one Interceptor.
type rules struct {
	list     []*compiledRule
	stormN   int
	stormWin time.Duration
	throttle bool // some rule throttles: the Source is wrapped to count bytes
	// selfExe is the daemon's executable: its other processes (`strata
	// recall --wait`, a bulk recall asked for) are never a storm.
	selfExe string
	// needs: which /proc files the rules match on.
	needs procNeeds

	procs struct {
		sync.Mutex
		m map[int32]*proc
	}
	// charges maps a recall (file id, release id) to the throttle rule
	// whose program started it: its bytes are charged to that rule.
	charges struct {
		sync.Mutex
		m map[string]charge
	}
	storms atomic.Uint64
}

type charge struct {
	rule  *compiledRule
	since time.Time
}

// newRules returns the engine for cfg, or nil when there is nothing to do
// (no rule, no storm detection): then decide pays one nil check. With a
// throttle rule it wraps cfg.OnComplete (cfg is the Interceptor's own).
func newRules(cfg *Config) *rules {
	if len(cfg.Rules) == 0 && cfg.StormRecalls <= 0 {
		return nil
	}
	ru := &rules{list: compileRules(cfg.Rules), stormN: max(cfg.StormRecalls, 0), stormWin: cfg.StormWindow}
	ru.selfExe, _ = os.Executable()
	for _, c := range ru.list {
		ru.needs.exe = ru.needs.exe || len(c.Exe) > 0
		ru.needs.uid = ru.needs.uid || len(c.UID) > 0
		ru.needs.cgroup = ru.needs.cgroup || len(c.Cgroup) > 0
	}
	for _, c := range ru.list {
		ru.throttle = ru.throttle || c.Action == ActionThrottle
	}
	ru.procs.m = map[int32]*proc{}
	ru.charges.m = map[string]charge{}
	if ru.throttle {
		// A recall that completes is charged no more.
		done := cfg.OnComplete
		cfg.OnComplete = func(c Completion) {
			ru.charges.Lock()
			delete(ru.charges.m, c.FileID+"\x00"+c.ReleaseID)
			ru.charges.Unlock()
			if done != nil {
				done(c)
			}
		}
	}
	return ru
}

// source wraps src so that the bytes of throttled recalls are charged to
// their rule (only when a rule throttles).
func (ru *rules) source(src Source) Source {
	if ru == nil || !ru.throttle {
		return src
	}
	return chargingSource{src, ru}
}

type chargingSource struct {
	Source
	ru *rules
}

// ReadVerified paces the reads of a recall a throttle rule's program
// started: each waits until the rule's byte budget has room for it (the
// reads of all its programs' recalls share one budget), then reads at full
// speed. The wait ends early when the charge is dropped (a program that
// may recall freely wants the stub) or ctx ends.
func (s chargingSource) ReadVerified(ctx context.Context, st stub.Info, p []byte, off int64) (string, error) {
	key := chargeKey(st)
	if c := s.ru.chargeOf(key); c != nil {
		c.pace(ctx, len(p), func() bool { return s.ru.chargeOf(key) == c })
	}
	tier, err := s.Source.ReadVerified(ctx, st, p, off)
	if err == nil {
		if c := s.ru.chargeOf(key); c != nil {
			c.bytes.Add(uint64(len(p)))
		}
	}
	return tier, err
}

// chargeOf returns the throttle rule the recall key is charged to, or nil.
func (ru *rules) chargeOf(key string) *compiledRule {
	ru.charges.Lock()
	defer ru.charges.Unlock()
	return ru.charges.m[key].rule
}

// throttled reports whether the recall of st is charged to a throttle
// rule: only throttled programs have touched it since it started. decide
// then starts no background fill for it (a background fill waiting for the
// budget would hold one of the BackgroundFills slots every stub shares):
// such a recall fetches what its programs read, at the rule's pace.
func (ru *rules) throttled(st stub.Info) bool {
	return ru != nil && ru.throttle && ru.chargeOf(chargeKey(st)) != nil
}

func chargeKey(st stub.Info) string { return st.FileID + "\x00" + st.ReleaseID }

func (ru *rules) setCharge(st stub.Info, c *compiledRule) {
	now := time.Now()
	ru.charges.Lock()
	defer ru.charges.Unlock()
	if len(ru.charges.m) >= 4096 {
		// Recalls that complete are dropped (newRules); forget old
		// partial ones too (one that is still used is then no longer
		// charged).
		for k, v := range ru.charges.m {
			if now.Sub(v.since) > time.Hour {
				delete(ru.charges.m, k)
			}
		}
	}
	ru.charges.m[chargeKey(st)] = charge{c, now}
}

func (ru *rules) dropCharge(st stub.Info) {
	if !ru.throttle {
		return
	}
	ru.charges.Lock()
	delete(ru.charges.m, chargeKey(st))
	ru.charges.Unlock()
}

// lookup returns the process pid with what the rules know of it. With
// validate, the cached process is checked to be still the one with that
// pid (its start time). A process that is gone gives a snapshot that
// matches no rule.
func (ru *rules) lookup(pid int32, validate bool) (*proc, *procSnap) {
	now := time.Now()
	ru.procs.Lock()
	p := ru.procs.m[pid]
	ru.procs.Unlock()
	if p != nil {
		s := p.snap.Load()
		if now.Sub(s.loaded) < procTTL {
			if !validate {
				return p, s
			}
			if start, comm, err := readStat(pid); err == nil && start == p.start && comm == s.comm {
				return p, s
			}
		}
	}
	s, err := readProc(pid, ru.needs)
	if err != nil {
		return nil, &procSnap{loaded: now}
	}
	s.loaded = now
	for _, c := range ru.list {
		if c.matches(s) {
			s.rule = c
			break
		}
	}
	if p == nil || p.start != s.start {
		p = &proc{pid: pid, start: s.start}
		ru.procs.Lock()
		if len(ru.procs.m) >= maxProcs {
			for k, q := range ru.procs.m {
				if now.Sub(q.snap.Load().loaded) > time.Minute {
					delete(ru.procs.m, k)
				}
			}
			if len(ru.procs.m) >= maxProcs {
				clear(ru.procs.m)
			}
		}
		ru.procs.m[pid] = p
		ru.procs.Unlock()
	}
	p.snap.Store(s)
	return p, s
}

// started counts a recall process p starts, and reports a storm when the
// last StormRecalls of them started within StormWindow.
func (i *Interceptor) recallStarted(p *proc, s *procSnap, ev event) {
	ru := i.rules
	if ru.stormN <= 0 || p == nil {
		return
	}
	now := time.Now()
	p.mu.Lock()
	if p.mu.ring == nil {
		p.mu.ring = make([]time.Time, ru.stormN)
	}
	p.mu.ring[p.mu.next] = now
	p.mu.next = (p.mu.next + 1) % len(p.mu.ring)
	oldest := p.mu.ring[p.mu.next] // the first of the last StormRecalls recalls, this one included
	p.mu.total++
	total := p.mu.total
	within := now.Sub(oldest)
	fire := !oldest.IsZero() && within <= ru.stormWin &&
		(p.mu.reported.IsZero() || now.Sub(p.mu.reported) >= max(stormQuiet, ru.stormWin))
	if fire {
		p.mu.reported = now
	}
	p.mu.Unlock()
	if !fire {
		return
	}
	if s = describe(p.pid, s); ru.selfExe != "" && s.exe == ru.selfExe {
		return // the daemon's own tools: a bulk recall someone asked for
	}
	ru.storms.Add(1)
	st := Storm{PID: p.pid, Process: s.comm, Exe: s.exe, UID: s.uid, Cgroup: s.cgroup, Recalls: ru.stormN,
		Within: within, Window: ru.stormWin, Total: total, Action: ActionRecall, Path: fdPath(ev.fd)}
	if s.rule != nil {
		st.Rule, st.Action = s.rule.Name, s.rule.Action
	}
	i.log.Warn("recall storm: one process started many recalls", "pid", st.PID, "process", st.Process, "exe", st.Exe,
		"uid", st.UID, "cgroup", st.Cgroup, "recalls", st.Recalls, "within", st.Within, "total", st.Total,
		"rule", st.Rule, "action", string(st.Action), "path", st.Path)
	i.pub.storm(st)
	if i.cfg.OnStorm != nil {
		i.cfg.OnStorm(st)
	}
}

// storm publishes recall.storm. Safe on a nil publisher.
func (p *publisher) storm(s Storm) {
	if p == nil || s.Path == "" {
		return
	}
	p.send(&events.RecallStorm{PID: s.PID, Process: s.Process, Exe: s.Exe, UID: s.UID, Cgroup: s.Cgroup,
		Recalls: int64(s.Recalls), WithinNS: s.Within.Nanoseconds(), WindowNS: s.Window.Nanoseconds(), Total: s.Total,
		Rule: s.Rule, Action: string(s.Action), Path: s.Path}, "storm", p.boot, strconv.FormatUint(p.nth.Add(1), 10))
}

// programRule applies the rules to one event. decide calls it once, after
// a release in progress is waited for and before a recall is looked up or
// started; r is the recall of the stub if one is known. done reports that
// errno is the answer (0: allow, nothing recalled); otherwise decide goes
// on as for any program.
func (i *Interceptor) programRule(ev event, st *unix.Stat_t, key inodeKey, r *recall) (errno unix.Errno, done bool) {
	ru := i.rules
	if ru == nil || ev.pid == i.pid || ev.pid <= 0 || (r != nil && len(ru.list) == 0) {
		return 0, false
	}
	// Only a rule's decision needs the pid checked before a recall starts:
	// the storm detector alone trusts it for procTTL.
	p, s := ru.lookup(ev.pid, r == nil && len(ru.list) > 0)
	c := s.rule
	if c == nil {
		if r == nil {
			i.recallStarted(p, s, ev)
		} else {
			ru.dropCharge(r.info) // a program that may recall wants it: no throttle on it
		}
		return 0, false
	}
	c.events.Add(1)
	switch c.Action {
	case ActionRecall:
		if r != nil {
			ru.dropCharge(r.info) // a program that may recall wants it: no throttle on it
		} else {
			i.recallStarted(p, s, ev)
		}
		return 0, false
	case ActionThrottle:
		if r != nil {
			return 0, false // it joins a recall that runs anyway
		}
		info, err := stub.Read(ev.fd)
		if err != nil || info.State != stub.Released {
			return 0, false // decide deals with it
		}
		if w := c.admit(i.bgCtx); w > 0 {
			i.log.Debug("throttled recall", "rule", c.Name, "pid", ev.pid, "process", s.comm, "waited", w)
		}
		ru.setCharge(info, c)
		i.recallStarted(p, s, ev)
		return 0, false
	case ActionDeny:
		if !i.isStub(ev, r) {
			return 0, false
		}
		i.ruleDenied(p, s, c, ev, "deny")
		return c.errno, true
	case ActionHeadOnly:
		return i.headOnly(ev, st, key, p, s, c)
	}
	return 0, false
}

// isStub reports whether the file of ev still needs a recall: a recall of
// it is under way and not done, or its xattrs say released.
func (i *Interceptor) isStub(ev event, r *recall) bool {
	if r != nil {
		r.mu.Lock()
		done := r.mu.done
		r.mu.Unlock()
		return !done
	}
	info, err := stub.Read(ev.fd)
	return err == nil && info.State == stub.Released
}

func (i *Interceptor) ruleDenied(p *proc, s *procSnap, c *compiledRule, ev event, why string) {
	c.denied.Add(1)
	first := false
	if p != nil {
		p.mu.Lock()
		if p.mu.logged == nil {
			p.mu.logged = map[*compiledRule]bool{}
		}
		first = !p.mu.logged[c]
		p.mu.logged[c] = true
		p.mu.Unlock()
	}
	if first {
		s = describe(ev.pid, s)
		i.log.Info("recall rule denies a program access to stubs (its further denials are logged at debug level)",
			"rule", c.Name, "action", string(c.Action), "pid", ev.pid, "process", s.comm, "exe", s.exe, "uid", s.uid,
			"cgroup", s.cgroup, "errno", c.errno.Error(), "why", why, "path", fdPath(ev.fd))
		return
	}
	i.log.Debug("recall rule denied an access", "rule", c.Name, "pid", ev.pid, "process", s.comm, "why", why,
		"off", ev.off, "count", ev.count)
}

// headOnly answers an event of a head-only program: bytes that are
// resident are served, anything that needs a recall is denied.
func (i *Interceptor) headOnly(ev event, st *unix.Stat_t, key inodeKey, p *proc, s *procSnap, c *compiledRule) (unix.Errno, bool) {
	if ev.mask&unix.FAN_OPEN_PERM != 0 {
		switch {
		case i.mode != ModePreAccess:
			// Reads after this open raise no event: nothing could stop
			// one from reading a hole.
			i.ruleDenied(p, s, c, ev, "head-only needs mode pre-access: in open-perm reads raise no event")
			return c.errno, true
		case slices.ContainsFunc(i.cfg.WholeFilePrograms, func(n string) bool { return n == s.comm || (s.exe != "" && n == path.Base(s.exe)) }):
			// It looks for data with SEEK_DATA before it reads, which
			// raises no event: it would take the holes for zeros.
			i.ruleDenied(p, s, c, ev, "a program that probes for holes cannot be served part of a stub")
			return c.errno, true
		case st.Size < i.cfg.WholeFileBelow && i.cfg.Guard == nil:
			// Such stubs are recalled whole at open so that no unknown
			// hole prober copies zeros; without a probe guard, serving
			// part of one would lose that protection.
			i.ruleDenied(p, s, c, ev, "a stub below whole_file_below is served whole or not at all without a probe guard")
			return c.errno, true
		}
		return 0, true // its reads raise events that decide what they get
	}
	lo, hi := ev.off, ev.off+ev.count
	switch {
	case !ev.hasRange:
		lo, hi = 0, st.Size
	case ev.count == 0:
		hi = st.Size // a truncate or a clone from off: the clone reads the rest
	}
	hi = min(hi, st.Size)
	if lo < hi && !i.residentNow(ev.fd, key, lo, hi) {
		i.ruleDenied(p, s, c, ev, fmt.Sprintf("bytes %d-%d are not resident", lo, hi))
		return c.errno, true
	}
	// An append arrives as the fd's position, not at EOF, and writes into
	// the last block: if that block is a hole, the bytes of it below EOF
	// would become zeros on disk. Serve a writer only when it is resident.
	blk := max(int64(st.Blksize), 4096)
	if tail := st.Size / blk * blk; st.Size%blk != 0 && !i.residentNow(ev.fd, key, tail, st.Size) && writesFile(ev.pid, st.Dev, st.Ino) {
		i.ruleDenied(p, s, c, ev, "the program may write the file and its last block is not resident")
		return c.errno, true
	}
	c.served.Add(1)
	return 0, true
}

// resident reports whether bytes [lo, hi) of the stub key are data on
// disk that needs no recall: chunks a recall of it has filled (verified
// and stored whole) or the stored first part of a chunk it is filling,
// or, with no recall, data (SEEK_HOLE) in no segment a crashed fill left
// half written. This is the one place head-only asks (the resident head
// of a stub is such data). When the bytes are verified and being stored
// right now (the rest of a chunk whose first part is stored), wait is
// closed once that store ends: ask again then. It is decided under i.mu,
// so that no recall can start storing into the range meanwhile (a store
// in flight makes data of pages that may still hold zeros). A release
// cannot punch the range under the program either: the releaser needs a
// write lease, which no file another process holds open gets.
func (i *Interceptor) resident(fd int, key inodeKey, lo, hi int64) (ok bool, wait <-chan struct{}) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.mu.releasing[key] != nil {
		return false, nil
	}
	r := i.mu.recalls[key]
	if r != nil {
		if ok, wait := r.filled(lo, hi); !ok {
			return false, wait
		}
	}
	if h, err := unix.Seek(fd, lo, unix.SEEK_HOLE); err != nil || h < hi {
		return false, nil
	}
	return r != nil || !i.jr.hasPartial(key), nil
}

// filled reports whether every byte of [lo, hi) is in a chunk that is
// filled, or in the first part of a chunk being filled that is already
// stored (fillChunkFirst: verified, and it stays even if the rest fails).
// For bytes of such a chunk past its first part, wait is the fill's done
// channel: they are verified and being stored.
func (r *recall) filled(lo, hi int64) (ok bool, wait <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := lo / r.chunk; k <= (hi-1)/r.chunk && k < int64(len(r.mu.state)); k++ {
		switch r.mu.state[k] {
		case chunkFilled:
			continue
		case chunkFilling:
			op := r.mu.ops[k]
			if op == nil || op.first == nil || !op.first.isStored() {
				return false, nil
			}
			if s, e := max(lo, k*r.chunk), min(hi, (k+1)*r.chunk); s < op.first.lo || e > op.first.hi {
				return false, op.done
			}
		default:
			return false, nil
		}
	}
	return true, nil
}

// residentNow is resident, waiting for a store of verified bytes that is
// under way (milliseconds: the bytes are read, only written to disk is
// left), never for a read from a tier.
func (i *Interceptor) residentNow(fd int, key inodeKey, lo, hi int64) bool {
	for {
		ok, wait := i.resident(fd, key, lo, hi)
		if ok || wait == nil {
			return ok
		}
		select {
		case <-wait:
		case <-i.fgCtx.Done():
			return false
		}
	}
}

// hasPartial reports whether a crashed fill left segments of key half
// written (not yet punched by a recall). Safe on a nil journal.
func (j *journal) hasPartial(key inodeKey) bool {
	if j == nil {
		return false
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.mu.partial[key]) > 0
}

// writesFile reports whether process pid holds the file (dev, ino) open
// for writing. When it cannot tell, it says yes.
func writesFile(pid int32, dev, ino uint64) bool {
	dir := "/proc/" + strconv.Itoa(int(pid)) + "/fd/"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	var buf [256]byte
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat(dir+e.Name(), &st) != nil || st.Dev != dev || st.Ino != ino {
			continue
		}
		n, err := readSmall("/proc/"+strconv.Itoa(int(pid))+"/fdinfo/"+e.Name(), buf[:])
		if err != nil {
			return true
		}
		flags, ok := fdinfoFlags(buf[:n])
		if !ok || flags&unix.O_ACCMODE != unix.O_RDONLY {
			return true
		}
	}
	return false
}

// fdinfoFlags parses the "flags:" line of /proc/PID/fdinfo/N (octal).
func fdinfoFlags(b []byte) (int, bool) {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("flags:")); ok {
			f, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 8, 64)
			return int(f), err == nil
		}
	}
	return 0, false
}

// Storms returns how many recall storms were reported since Open.
func (i *Interceptor) Storms() uint64 {
	if i.rules == nil {
		return 0
	}
	return i.rules.storms.Load()
}

// RuleStats returns the counters of each rule, in order.
func (i *Interceptor) RuleStats() []RuleStats {
	if i.rules == nil {
		return nil
	}
	var out []RuleStats
	for _, c := range i.rules.list {
		out = append(out, RuleStats{Name: c.Name, Action: c.Action, Events: c.events.Load(), Denied: c.denied.Load(),
			Served: c.served.Load(), Throttled: c.throttled.Load(), Waited: time.Duration(c.waitedNS.Load()), Bytes: c.bytes.Load()})
	}
	return out
}

// ---- /proc ----

var errProcFormat = errors.New("unexpected /proc format")

// readSmall reads a small /proc file into buf (without the os.File
// machinery: one open, one read, one close).
func readSmall(name string, buf []byte) (int, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// readStat returns the start time and name of process pid from
// /proc/PID/stat.
func readStat(pid int32) (start uint64, comm string, err error) {
	var buf [1024]byte
	n, err := readSmall("/proc/"+strconv.Itoa(int(pid))+"/stat", buf[:])
	if err != nil {
		return 0, "", err
	}
	return parseStat(buf[:n])
}

// parseStat parses /proc/PID/stat: "pid (comm) state ppid ...", the
// start time being field 22. comm may hold spaces and parentheses: it
// ends at the last ')'.
func parseStat(b []byte) (start uint64, comm string, err error) {
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return 0, "", errProcFormat
	}
	comm = string(b[i+1 : j])
	f := bytes.Fields(b[j+1:])
	if len(f) < 20 {
		return 0, "", errProcFormat
	}
	start, err = strconv.ParseUint(string(f[19]), 10, 64) // f[0] is field 3 (state)
	if err != nil {
		return 0, "", errProcFormat
	}
	return start, comm, nil
}

// procNeeds says which /proc files the rules match on (comm and the
// start time, from stat, are always read).
type procNeeds struct{ exe, uid, cgroup bool }

var allProc = procNeeds{true, true, true}

// readProc reads what need asks of process pid.
func readProc(pid int32, need procNeeds) (*procSnap, error) {
	start, comm, err := readStat(pid)
	if err != nil {
		return nil, err
	}
	s := &procSnap{start: start, comm: comm}
	if need == (procNeeds{}) {
		return s, nil
	}
	dir := "/proc/" + strconv.Itoa(int(pid)) + "/"
	if need.exe {
		if exe, err := os.Readlink(dir + "exe"); err == nil {
			s.exe = strings.TrimSuffix(exe, " (deleted)")
		}
	}
	var buf [4096]byte
	if need.uid {
		if n, err := readSmall(dir+"status", buf[:]); err == nil {
			s.uid, s.uidOK = parseStatusUID(buf[:n])
		}
	}
	if need.cgroup {
		if n, err := readSmall(dir+"cgroup", buf[:]); err == nil {
			s.cgroup = parseCgroup(buf[:n])
		}
	}
	// The pid may have been reused while it was read: the start time
	// read first must still be the process's.
	if again, _, err := readStat(pid); err != nil || again != start {
		return nil, fmt.Errorf("process %d changed while it was read", pid)
	}
	return s, nil
}

// describe returns s with everything a log line or a recall.storm names
// of the process (exe, uid, cgroup), read now if the rules did not need
// it; s itself if the process is gone or another one has its pid.
func describe(pid int32, s *procSnap) *procSnap {
	if s.exe != "" && s.uidOK && s.cgroup != "" {
		return s
	}
	full, err := readProc(pid, allProc)
	if err != nil || full.start != s.start {
		return s
	}
	full.rule, full.loaded = s.rule, s.loaded
	return full
}

// parseStatusUID returns the effective uid of a /proc/PID/status.
func parseStatusUID(b []byte) (uint32, bool) {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := bytes.Fields(v)
			if len(f) < 2 {
				return 0, false
			}
			u, err := strconv.ParseUint(string(f[1]), 10, 32)
			return uint32(u), err == nil
		}
	}
	return 0, false
}

// parseCgroup returns the cgroup v2 path of a /proc/PID/cgroup (its
// "0::" line), or "".
func parseCgroup(b []byte) string {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(v)
		}
	}
	return ""
}
