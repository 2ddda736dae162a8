package tapewriter

// The tape store stage (durable "store-<tier>", one per tape tier; see
// Tier.Stage):
//
//	consumes  strata.<host>.object.packed
//	emits     strata.<host>.object.stored   once the object's bundle is closed by a flushing filemark
//
// Objects wait in the writer's RAM ring and are written as one pax tar
// bundle per tape file; a handler returns (and its message is
// acknowledged) only after the bundle holding its object is durable and
// object.stored, with the tape position, is published.
