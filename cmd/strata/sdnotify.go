package main

import (
	"fmt"
	"time"
)

// What the daemon tells systemd (Type=notify units, dist/systemd): STATUS
// while it starts (systemctl status shows the step), READY=1 only once
// every stub is marked and the stages run (what /readyz says), STOPPING=1
// as soon as a stop begins, and WATCHDOG=1 every half WatchdogSec while
// its event server answers. Outside systemd d.notify is nil and these do
// nothing.

// status sends STATUS=s.
func (d *daemon) status(s string) { d.sdNotify("STATUS=" + s) }

// notifyReady sends READY=1 with the number of stubs marked.
func (d *daemon) notifyReady() {
	st := "STATUS=ready"
	if d.stages != nil && d.stages.interceptor != nil {
		if n, err := d.stages.interceptor.MarkCount(); err == nil {
			st = fmt.Sprintf("STATUS=ready: %d stubs marked", n)
		}
	}
	d.sdNotify("READY=1", st)
}

// notifyStopping sends STOPPING=1, once.
func (d *daemon) notifyStopping() {
	d.stopOnce.Do(func() {
		d.sdNotify("STOPPING=1", "STATUS=stopping: draining the stages, parking stubs with the holder")
	})
}

func (d *daemon) sdNotify(assignments ...string) {
	if err := d.notify.Notify(assignments...); err != nil {
		d.logger.Warn("cannot notify systemd (NOTIFY_SOCKET)", "err", err)
	}
}

// watchdog sends WATCHDOG=1 every half of the interval systemd asks for
// (WatchdogSec), as long as the in-process connection to the event
// server is up: a daemon whose event server is gone, or that is stuck so
// badly this goroutine cannot run, is restarted (Restart=on-failure; the
// holder keeps the stubs guarded meanwhile). It returns the stop.
func (d *daemon) watchdog() (stop func()) {
	every := d.notify.Watchdog() / 2
	if every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if d.nc != nil && d.nc.IsConnected() {
				d.sdNotify("WATCHDOG=1")
			} else {
				d.logger.Warn("watchdog: the event server does not answer; not telling systemd we are alive")
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done) }
}
