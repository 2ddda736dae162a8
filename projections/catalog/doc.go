// Package catalog is the Pebble projection of Strata's event stream: what
// Strata knows about every file, version, object, copy and pin, rebuilt from
// events alone.
//
// # Contract
//
// Apply takes decoded envelopes in stream order (each with its stream
// sequence, Envelope.Seq) and applies them in one Pebble batch. The last
// applied sequence is written in the same batch as the updates, so an
// envelope at or below it is skipped: redelivery after a crash is a no-op.
// Unknown or invalid payloads are skipped and counted, and their sequence
// still advances. Nothing in the database depends on the wall clock or on
// how envelopes were split into batches: applying the same events in any
// batching gives byte-identical keys and values, which is what
// `strata replay --verify` checks with Diff.
//
// Apply is called by one goroutine (the stream follower); queries may run
// concurrently with it and see the state as of the last committed batch.
//
// # File states
//
//	file.selected          → archiving (creates the record; a new path moves the path index);
//	                         a released file stays released (a stale selection that raced its release)
//	object.packed          → new version when it names an object other than the current one
//	object.stored          → a good copy of the object on its tier
//	object.corrupt         → that copy is corrupt (no longer counts)
//	object.verified        → that copy is good again
//	object.deleted         → that copy is gone
//	file.released          → released (a stub)
//	file.release_skipped   → resident (dirty stays dirty; released and deleted stay)
//	recall.completed       → archived (resident and equal to its current object)
//	file.modified          → dirty
//	file.deleted           → deleted (path index removed; record and versions kept)
//	recall.requested/failed→ counters only
//	recall.storm           → nothing (it is about a process; not counted as skipped)
//	file.pinned/unpinned   → pin of a path (and everything under it)
//
// object.packed and file.released create a file record they have not seen
// (state archiving and released); the other file events ignore unknown
// files. Events on a deleted file update its record but not its state, except
// file.selected, which brings it back.
//
// # Key layout
//
// All keys are ASCII prefixes followed by ids or paths. Values are a record
// version byte and fields in a fixed binary order (see record.go).
//
//	meta/format                         on-disk format version, decimal ("2")
//	meta/seq                            last applied stream sequence, 8 bytes big-endian
//	meta/stats                          Stats counters
//	file/<file id>                      File
//	path/<path>\x00<host>               file id of the file at that path on that host (not for deleted files)
//	version/<file id>/<%010d number>    Version (numbers start at 1)
//	objfile/<object id>/<file id>       empty: the file has a version with that object
//	object/<object id>                  Object (from the first object.packed)
//	copy/<object id>/<tier>             Copy
//	stub/<file id>                      empty: the file is released
//	pin/<path>\x00<host>                empty: the path and everything under it is pinned on that host
//
// A file's host is the host of the subject (strata.<host>.…) of the
// event that created its record, the host whose stages handle it; a
// pin's is the host of its file.pinned. (Only an envelope applied
// without a subject, not read from the stream, goes by the host in its
// source, events.Source.) Every
// host's catalog projects the whole log, so two hosts may hold the same
// path: queries for a host's own files take Options.Host (see there).
//
// A database of another format version is refused with ErrFormat: the
// daemon rebuilds it from the log at start (format 1 had no host in path
// and pin keys); `strata replay` does the same by hand.
package catalog
