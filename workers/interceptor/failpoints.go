//go:build linux

package interceptor

import "github.com/strata-hsm/strata/workers/failpoint"

// Failpoints of a recall, armed through Config.Failpoints (package
// workers/failpoint, env STRATA_FAILPOINTS): when the interceptor reaches
// an armed one, the process kills itself with SIGKILL. Crash tests use them
// to kill the daemon at each step of a recall while a program is held on a
// stub (cmd/strata/recall_crash_test.go). Only accesses of other processes
// reach them, never the daemon's own (its reads of a file it is releasing,
// for example).
var (
	// FailAfterEvent: an access event that needs a fill was read and
	// journaled; nothing of its range is filled yet and its program is
	// held.
	FailAfterEvent = failpoint.Define("interceptor.after-event", "an access event that needs a fill was read and journaled; nothing of its range is filled yet and its program is held.")
	// FailAfterFill: the range of an event is filled and verified; its
	// program is still held (not answered yet).
	FailAfterFill = failpoint.Define("interceptor.after-fill", "the range of an event is filled and verified; its program is still held (not answered yet).")
	// FailAfterAnswer: an event was answered (its program goes on) and its
	// journal slot still holds the answer; no later event was read.
	FailAfterAnswer = failpoint.Define("interceptor.after-answer", "an event was answered (its program goes on) and its journal slot still holds the answer; no later event was read.")
	// FailInFinish: the whole file is back and its xattrs say archived
	// (resident); its mark is still on and its completion not reported.
	FailInFinish = failpoint.Define("interceptor.in-finish", "the whole file is back and its xattrs say archived (resident); its mark is still on and its completion not reported.")
	// FailStoreFaulted: a store into a stub faulted below EOF and no
	// space could be allocated for it: pages of its segment are faulted
	// in writable and partly copied (zeros that look like data), the
	// segment's journal slot names them, and nothing is punched back yet.
	FailStoreFaulted = failpoint.Define("interceptor.store-faulted", "a store into a stub faulted below EOF and no space could be allocated for it: pages of its segment are faulted in writable and partly copied (zeros that look like data), the segment's journal slot names them, and nothing is punched back yet.")
)

// failpoint kills the process at name if it is armed and pid, the process
// whose access is being served, is not this one.
func (i *Interceptor) failpoint(name string, pid int32) {
	if pid != i.pid {
		i.cfg.Failpoints.Hit(name)
	}
}
