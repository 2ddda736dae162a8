package pipeline

import (
	"context"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
)

// Outcomes records what a stage's handler did, for status displays: how
// many messages it handled since start, when the last succeeded, and the
// last error. The zero value is ready to use; it is safe for concurrent
// use.
type Outcomes struct {
	mu struct {
		sync.Mutex
		ok        uint64
		lastOK    time.Time
		lastErr   string
		lastErrAt time.Time
	}
}

// OutcomeCounts is a snapshot of Outcomes.
type OutcomeCounts struct {
	OK        uint64    `json:"ok_since_start"`
	LastOK    time.Time `json:"last_ok,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	LastErrAt time.Time `json:"last_error_at,omitzero"`
}

// Track wraps h so that its results are recorded. An error caused by the
// stage stopping (ctx done) is not.
func (o *Outcomes) Track(h Handler) Handler {
	return func(ctx context.Context, env events.Envelope, ev events.Event) error {
		err := h(ctx, env, ev)
		if ctx.Err() != nil && err != nil {
			return err
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		if err != nil {
			o.mu.lastErr, o.mu.lastErrAt = err.Error(), time.Now()
		} else {
			o.mu.ok++
			o.mu.lastOK = time.Now()
		}
		return err
	}
}

// Counts returns a snapshot.
func (o *Outcomes) Counts() OutcomeCounts {
	o.mu.Lock()
	defer o.mu.Unlock()
	return OutcomeCounts{OK: o.mu.ok, LastOK: o.mu.lastOK, LastError: o.mu.lastErr, LastErrAt: o.mu.lastErrAt}
}
