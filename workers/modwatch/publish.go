package modwatch

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
)

// publisher sends the watcher's events from its own goroutine, so that a
// slow log never holds the reader. Events wait in a queue and are retried
// with their ids until published or until close gives up on them (the
// reconciler then finds those files at the next scan).
type publisher struct {
	em  *pipeline.Emitter
	log *slog.Logger

	mu struct {
		sync.Mutex
		queue   []pending
		closing bool
	}
	wake    chan struct{}
	stopped chan struct{}
	cancel  context.CancelFunc
}

type pending struct {
	ev events.Event
	id []string
}

func newPublisher(em *pipeline.Emitter, log *slog.Logger) *publisher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &publisher{em: em, log: log, wake: make(chan struct{}, 1), stopped: make(chan struct{}), cancel: cancel}
	go p.run(ctx)
	return p
}

func (p *publisher) send(ev events.Event, id []string) {
	p.mu.Lock()
	p.mu.queue = append(p.mu.queue, pending{ev, id})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) run(ctx context.Context) {
	defer close(p.stopped)
	backoff := time.Second
	for {
		p.mu.Lock()
		var next *pending
		if len(p.mu.queue) > 0 {
			next = &p.mu.queue[0]
		}
		closing := p.mu.closing
		p.mu.Unlock()
		if next == nil {
			if closing {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			}
			continue
		}
		if _, err := p.em.Emit(ctx, next.ev, next.id...); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, events.ErrInvalid) {
				p.log.Error("publish file.modified; retrying", "err", err, "in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Minute)
				continue
			}
			p.log.Error("file.modified is invalid; dropped", "err", err)
		}
		backoff = time.Second
		p.mu.Lock()
		p.mu.queue = p.mu.queue[1:]
		p.mu.Unlock()
	}
}

// close publishes what is queued for up to timeout, then stops.
func (p *publisher) close(timeout time.Duration) {
	p.mu.Lock()
	p.mu.closing = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	select {
	case <-p.stopped:
	case <-time.After(timeout):
		p.cancel()
		<-p.stopped
	}
	p.cancel()
	p.mu.Lock()
	n := len(p.mu.queue)
	p.mu.Unlock()
	if n > 0 {
		p.log.Warn("file.modified not published at stop; the next scan finds those files", "events", n)
	}
}
