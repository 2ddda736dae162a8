package pipeline

import "time"

// SetHoldTimes shortens the stage runner's hold backoff and the Space's
// least hold for a test, and returns the function that restores them.
func SetHoldTimes(backoff []time.Duration, hold time.Duration) (restore func()) {
	ob, oh := holdBackoff, spaceHold
	holdBackoff, spaceHold = backoff, hold
	return func() { holdBackoff, spaceHold = ob, oh }
}
