// Package pipeline runs Strata's event log: the embedded NATS server with
// JetStream, its streams and users, publishing with deduplication, the
// stage runner that feeds durable consumers to workers, and readers of the
// log for projections, replay and status.
//
// # Topology
//
// One embedded nats-server per daemon (Open), JetStream store in
// DataDir/jetstream, owned exclusively through a flock on DataDir/strata.lock
// (the lock file holds the daemon's pid).
//
//	stream STRATA_EVENTS     subjects strata.>      (events.AllEvents)
//	                         strata.<host>.<aggregate>.<event>
//	                         file storage, Limits retention, kept forever,
//	                         dedup by Nats-Msg-Id = envelope id (Config.DedupWindow)
//	stream STRATA_DEADLETTER subjects strata_dlq.>  (events.AllDeadLetters)
//	                         strata_dlq.<host>.<stage>: original bytes + headers
//	                         Strata-Reason, -Stage, -Subject, -Stream-Seq, -Deliveries
//	control (no stream)      strata_ctl.<host>.<verb>: CLI request/reply
//	                         (ServeControl, Request; a request is not an event)
//
// Each stage has one durable pull consumer on STRATA_EVENTS named after the
// stage (explicit ack, its filter subjects, MaxDeliver = Stage.MaxDeliver+1,
// AckWait). Readers (projection, replay, `strata events`) use ephemeral
// ordered consumers.
//
// # Users and permissions
//
//	strata  the daemon itself: every permission; IN_PROCESS connections only;
//	        a random password per boot, never written anywhere.
//	cli     what the strata CLI uses (credentials.json, Dial): publish
//	        strata_ctl.> requests; subscribe strata.> and _INBOX_cli.>; read
//	        both streams through ordered consumers (STREAM.INFO,
//	        CONSUMER.CREATE, CONSUMER.MSG.NEXT), consumer info and list.
//	reader  read-only for external tools (credentials.json): subscribe
//	        strata.> and _INBOX_ro.>; publish only $JS.API.INFO,
//	        STREAM.NAMES, STREAM.INFO/CONSUMER.CREATE/CONSUMER.MSG.NEXT of
//	        STRATA_EVENTS.
//
// Neither cli nor reader may publish to strata.>, delete or purge a stream,
// or create, update or pull from the daemon's durables (Config.Durables are
// denied by name; CREATE is create-or-update). Both passwords are generated
// on first start and stored in DataDir/credentials.json (0600, written
// atomically) with the client URL; later starts reuse them. The listener is
// on 127.0.0.1 by default; Port -1 starts no listener at all.
//
// # Guarantees
//
// Publishing: Publish waits for the stream's acknowledgement. Transient
// failures are retried with the same Msg-Id, so an event is stored at most
// once per dedup window however often it is retried; a republish returns
// the original sequence. Event ids come from events.NewID, deterministic for
// a piece of work, so a stage that redoes work after a crash publishes the
// same ids.
//
// Ordering: the stream orders events by sequence. A stage with
// Concurrency 1 receives its messages in stream order, except that a
// message whose handler failed comes back after its backoff, behind newer
// ones. With Concurrency n, up to n messages are handled at once in no
// particular order. Readers (Follow) see every message in sequence order,
// each exactly once, with no gaps other than the decoding failures they are
// told about.
//
// Redelivery (at-least-once): a message is acknowledged only after Handle
// returns nil, so handlers must be idempotent and return only when their
// effects are durable. A handler error is retried after Stage.Backoff (a
// Nak with delay); a Permanent error, a message that is malformed, fails the
// Validate hook or has an unknown type, a panic, and a message whose
// deliveries are used up are copied to the stage's dead-letter subject and
// terminated, so the stage moves on. A process that dies mid-handler gets
// its messages back after AckWait; while a handler runs, the runner sends
// progress acks every AckWait/3, so long work is not redelivered. The
// consumer allows one delivery beyond Stage.MaxDeliver: when that extra
// delivery arrives (the last attempt died with its process), the message is
// dead-lettered instead of being handled again. Dead-letter copies carry a
// Msg-Id derived from the stage and stream sequence, so a repeated attempt
// does not store a second copy within the dedup window. If a dead letter
// cannot be stored the message is Nak'd, never dropped.
//
// Backpressure: a stage pulls at most as many messages as it has free
// handler slots (Concurrency), so nothing waits in a client-side buffer
// with a running ack timer; unprocessed events wait in the stream, which is
// kept forever, so a slow stage only grows its lag (StreamStatus).
// Publishers are not slowed by slow consumers. Follow hands the callback
// batches of at most FollowOptions.Batch (default 1024) envelopes and
// buffers at most two batches ahead of it.
//
// Out of space: the data directory (JetStream store, catalog, staging) is
// watched by a Space (Server.Space), and other places (tiers, hot trees)
// can be watched the same way; each reports one Condition (Server.
// Conditions, shown by `strata status`), logged once when it begins, once
// when it ends, with a reminder at most every 10 minutes. A place is out
// of space below its reserve (1 % of the filesystem, 16 MiB to 1 GiB) or
// as soon as anyone reports ENOSPC/EDQUOT there; it is back once twice the
// reserve is free, a probe write succeeds and its recovery hooks ran (for
// the data directory: restarting JetStream if its store failed a write,
// since nats-server's file store refuses every write after its first
// failure). Meanwhile: publishes through Server.JetStream fail at once
// with ErrNoSpace; stages fetch nothing new (Runner.Spaces); a handler
// that fails for lack of space keeps its message without using up a
// delivery and runs again once there is room; nothing spins.
//
// Shutdown: cancelling Run's context stops fetching, lets handlers in
// flight finish and acknowledges them, up to Stage.DrainTimeout; after it,
// handler contexts are cancelled and their messages are not acknowledged
// (they are Nak'd for prompt redelivery). Messages fetched while stopping
// are Nak'd unhandled, and so, at once, are messages held for lack of
// space. The daemon's order is: cancel stages → Run returns → close
// projections → Server.Close (shutdown, then unlock).
//
// # Lock order
//
// The data directory flock is taken first in Open and released last in
// Close. Server.Close is guarded by a sync.Once. Space.mu is taken before
// Conditions.mu (a Space sets its condition while holding its own lock);
// Conditions calls nothing while holding its lock. A
// Space runs its recovery hooks holding no lock. The Runner holds no mutex:
// handler slots are a buffered channel, and no lock is held while calling
// into NATS or a handler. Outside this package, nats-server and nats.go
// keep their own locks (nats-server locksordering.txt).
package pipeline
