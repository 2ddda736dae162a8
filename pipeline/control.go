package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/strata-hsm/strata/events"
)

// The CLI talks to the daemon over NATS request/reply on
// events.ControlSubject(host, verb) (no stream: a request is not an event).
// A request body is the verb's JSON request; the reply is a controlReply.
// Each stage package that answers verbs exports its handlers; cmd/strata
// subscribes them with ServeControl.

// ControlHandler answers one control verb: req is the request's JSON body,
// the result is sent back as JSON. It runs on its own goroutine and must
// honour ctx (cancelled when the daemon stops).
type ControlHandler func(ctx context.Context, req []byte) (any, error)

// Verb adapts a handler of a typed request: the body is decoded into Req
// (a malformed body is an error naming the verb).
func Verb[Req any](verb string, fn func(ctx context.Context, req Req) (any, error)) ControlHandler {
	return func(ctx context.Context, body []byte) (any, error) {
		var req Req
		if len(body) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, fmt.Errorf("%s: bad request: %w", verb, err)
			}
		}
		return fn(ctx, req)
	}
}

// controlReply is the envelope of every control reply.
type controlReply struct {
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// ServeControl subscribes handlers (by verb) on host's control subjects of
// nc until stop is called; ctx is the context every handler gets.
func ServeControl(ctx context.Context, nc *nats.Conn, host string, handlers map[string]ControlHandler, logger *slog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var subs []*nats.Subscription
	stop = func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		cancel()
	}
	for verb, h := range handlers {
		sub, err := nc.Subscribe(events.ControlSubject(host, verb), func(m *nats.Msg) {
			go answer(ctx, verb, h, m, logger)
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("subscribe control %s: %w", verb, err)
		}
		subs = append(subs, sub)
	}
	if err := nc.Flush(); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

func answer(ctx context.Context, verb string, h ControlHandler, m *nats.Msg, logger *slog.Logger) {
	var rep controlReply
	res, err := h(ctx, m.Data)
	if err == nil {
		rep.Result, err = json.Marshal(res)
	}
	if err != nil {
		rep.Error = err.Error()
		logger.Debug("control request failed", "verb", verb, "err", err)
	}
	b, _ := json.Marshal(rep)
	if err := m.Respond(b); err != nil {
		logger.Warn("control reply", "verb", verb, "bytes", len(b), "err", err)
		// Tell the caller instead of letting it wait for its timeout.
		b, _ = json.Marshal(controlReply{Error: fmt.Sprintf("%s: the reply could not be sent (%d bytes): %v", verb, len(b), err)})
		_ = m.Respond(b)
	}
}

// Request sends one control request for verb to the daemon of host and
// decodes the result into out (if not nil). The daemon's error comes back
// as the error.
func Request(ctx context.Context, nc *nats.Conn, host, verb string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	msg, err := nc.RequestWithContext(ctx, events.ControlSubject(host, verb), body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%s: the daemon is not answering yet (still starting?): %w", verb, err)
		}
		return fmt.Errorf("%s: %w", verb, err)
	}
	var rep controlReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("%s: bad reply: %w", verb, err)
	}
	if rep.Error != "" {
		return errors.New(rep.Error)
	}
	if out != nil {
		return json.Unmarshal(rep.Result, out)
	}
	return nil
}
