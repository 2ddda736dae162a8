package pipeline

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Condition kinds.
const (
	// KindNoSpace: a filesystem Strata writes to is full (or below the
	// room Strata keeps free, or over a quota).
	KindNoSpace = "out_of_space"
)

// DefaultRemind is how often a condition that lasts is logged again.
const DefaultRemind = 10 * time.Minute

// Condition is a state of the daemon that an operator has to act on —
// today a full filesystem — as `strata status` and `strata doctor` show
// it. Whoever sees it sets it (Conditions.Set) and clears it when it ends;
// a condition is keyed by the place it concerns, so two components that
// see the same full filesystem set one condition.
type Condition struct {
	// Key names the condition uniquely, e.g. "space:data",
	// "space:tier:cold", "space:hot:/srv/projects".
	Key string `json:"key"`
	// Kind is one of the Kind* constants.
	Kind string `json:"kind"`
	// Place says what the operator knows it as: "data directory",
	// "staging", "tier cold", "hot tree /srv/projects".
	Place string `json:"place"`
	// Path is the directory concerned.
	Path string `json:"path"`
	// FS is the filesystem Path is on, as last seen.
	FS FSInfo `json:"fs"`
	// Since is when the condition began.
	Since time.Time `json:"since"`
	// LastError is the last error that reported it, and LastAt when.
	LastError string    `json:"last_error,omitempty"`
	LastAt    time.Time `json:"last_at"`
	// Effect says what Strata does meanwhile; Hint what to do about it.
	Effect string `json:"effect"`
	Hint   string `json:"hint"`
}

// Title is the condition's one-line name in logs and status, e.g. "out
// of space: data directory".
func (c Condition) Title() string {
	switch c.Kind {
	case KindNoSpace:
		return "out of space: " + c.Place
	}
	return strings.ReplaceAll(c.Kind, "_", " ") + ": " + c.Place
}

// clearedTitle is the log message when the condition ends.
func (c Condition) clearedTitle() string {
	switch c.Kind {
	case KindNoSpace:
		return "space is back: " + c.Place
	}
	return "cleared: " + c.Title()
}

// Conditions holds the conditions in force and logs them: once when one
// begins (Error), once when it ends (Info), and while it lasts a reminder
// at most every Remind (Warn). A condition that begins again within Remind
// of its end is not logged again (a flapping filesystem logs once per
// Remind, not once per retry). Safe for concurrent use; the zero value is
// not usable, see NewConditions.
type Conditions struct {
	logger *slog.Logger
	// Remind is the least time between two log lines about one condition
	// (default DefaultRemind).
	remind time.Duration
	now    func() time.Time

	mu struct {
		sync.Mutex
		// active holds the conditions in force, by key.
		active map[string]*condState
		// lastLog is when a line about each key was last logged (kept
		// after a clear, for the flapping rule).
		lastLog map[string]time.Time
		// changed is closed and replaced on every Set of a new condition
		// and every Clear.
		changed chan struct{}
	}
}

type condState struct {
	c Condition
	// logged says the beginning was logged, so its end is too.
	logged bool
}

// NewConditions returns an empty set that logs to logger (nil: discard).
func NewConditions(logger *slog.Logger) *Conditions {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Conditions{logger: logger, remind: DefaultRemind, now: time.Now}
	c.mu.active = map[string]*condState{}
	c.mu.lastLog = map[string]time.Time{}
	c.mu.changed = make(chan struct{})
	return c
}

// Set records that cond holds now. A new condition gets Since = now and is
// logged (unless it flapped, see Conditions); one already in force keeps
// its Since and takes cond's other fields, and is logged again only as a
// reminder, at most every Remind.
func (cs *Conditions) Set(cond Condition) {
	now := cs.now()
	cs.mu.Lock()
	st, ok := cs.mu.active[cond.Key]
	var log func()
	if !ok {
		cond.Since = now
		if cond.LastAt.IsZero() {
			cond.LastAt = now
		}
		st = &condState{c: cond}
		cs.mu.active[cond.Key] = st
		if last, seen := cs.mu.lastLog[cond.Key]; !seen || now.Sub(last) >= cs.remind {
			st.logged = true
			cs.mu.lastLog[cond.Key] = now
			log = func() { cs.logger.Error(cond.Title(), cs.attrs(cond, now)...) }
		}
		close(cs.mu.changed)
		cs.mu.changed = make(chan struct{})
	} else {
		since := st.c.Since
		if cond.LastError == "" {
			cond.LastError, cond.LastAt = st.c.LastError, st.c.LastAt
		}
		st.c = cond
		st.c.Since = since
		if now.Sub(cs.mu.lastLog[cond.Key]) >= cs.remind {
			st.logged = true
			cs.mu.lastLog[cond.Key] = now
			c := st.c
			log = func() { cs.logger.Warn("still "+c.Title(), cs.attrs(c, now)...) }
		}
	}
	cs.mu.Unlock()
	if log != nil {
		log()
	}
}

// Clear ends the condition key, if it is in force, and logs its end if its
// beginning was logged.
func (cs *Conditions) Clear(key string) {
	now := cs.now()
	cs.mu.Lock()
	st, ok := cs.mu.active[key]
	if ok {
		delete(cs.mu.active, key)
		if st.logged {
			cs.mu.lastLog[key] = now
		}
		close(cs.mu.changed)
		cs.mu.changed = make(chan struct{})
	}
	cs.mu.Unlock()
	if ok && st.logged {
		cs.logger.Info(st.c.clearedTitle(), "path", st.c.Path, "lasted", now.Sub(st.c.Since).Round(time.Second).String())
	}
}

// Get returns the condition key if it is in force.
func (cs *Conditions) Get(key string) (Condition, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st, ok := cs.mu.active[key]
	if !ok {
		return Condition{}, false
	}
	return st.c, true
}

// List returns the conditions in force, oldest first.
func (cs *Conditions) List() []Condition {
	cs.mu.Lock()
	out := make([]Condition, 0, len(cs.mu.active))
	for _, st := range cs.mu.active {
		out = append(out, st.c)
	}
	cs.mu.Unlock()
	slices.SortFunc(out, func(a, b Condition) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

// Changed returns a channel closed at the next change (a condition begins
// or ends).
func (cs *Conditions) Changed() <-chan struct{} {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.mu.changed
}

func (cs *Conditions) attrs(c Condition, now time.Time) []any {
	a := []any{"path", c.Path}
	if c.FS.Mount != "" {
		a = append(a, "filesystem", c.FS.Device, "mounted_at", c.FS.Mount, "free", c.FS.FreeString())
	}
	if !now.Equal(c.Since) {
		a = append(a, "since", c.Since.Format(time.RFC3339))
	}
	if c.LastError != "" {
		a = append(a, "err", c.LastError)
	}
	return append(a, "effect", c.Effect, "hint", c.Hint)
}
