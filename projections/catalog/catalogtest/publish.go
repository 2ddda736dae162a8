package catalogtest

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
)

// Publish puts envs on the event stream through js, as host, in order,
// each with its envelope id as Nats-Msg-Id, and waits for every
// acknowledgement.
func Publish(js jetstream.JetStream, host string, envs []events.Envelope) error {
	const window = 5000
	for lo := 0; lo < len(envs); lo += window {
		for _, env := range envs[lo:min(lo+window, len(envs))] {
			subj, err := events.SubjectOf(host, env)
			if err != nil {
				return err
			}
			body, err := events.Encode(env)
			if err != nil {
				return err
			}
			if _, err := js.PublishAsync(subj, body, jetstream.WithMsgID(env.ID)); err != nil {
				return fmt.Errorf("publish %s: %w", env.ID, err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			return fmt.Errorf("publish: no acknowledgement within a minute")
		}
	}
	return nil
}
