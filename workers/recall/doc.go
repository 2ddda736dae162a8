// Package recall produces verified bytes of archived objects from the best
// available copy, falling back to the next copy when one is missing,
// unreachable or corrupt. It is the data source of the interceptor's
// range-first recall (Reader.ReadVerified satisfies interceptor.Source), of
// `strata restore` (Reader.WriteTo) and of scrub repair (Reader.Repair).
//
// # Choosing a copy
//
// The catalog says which tiers hold a good copy of an object (Config.Copies,
// each with a cost). Copies are tried by cost, then tier name; a tier with
// no Target on this host (a tape drive on another host) is skipped. A copy
// that failed recently is tried after the others for a while
// (Config.FailureBackoff), so a dead tier costs one failure, not one per
// read; it is still tried when nothing else is left.
//
// # Verification
//
// Every copy is read with the manifest stored beside it on the same tier
// (its object id must be the requested one and its frame table must be
// consistent), so two tiers may hold differently packed copies of one
// object. A ranged read fetches exactly the packed frames that hold the
// range with one GetRange, decodes them with object.DecodeFrames (which
// checks every frame's BLAKE3) and only then copies the requested bytes to
// the caller: on error the caller's buffer is left untouched, never half
// filled. WriteTo also hashes the whole content and checks it against the
// object id; Repair checks the packed BLAKE3 (packed_sum) of the bytes it
// copies before the target may complete the new copy.
//
// # Failures
//
// Each failed attempt on a copy is reported once through Config.OnFailure
// with the tier and the error. Errors that mean the copy itself is bad (a
// frame hash mismatch, a truncated copy, a bad or missing manifest) wrap
// tier.ErrCorrupt; missing copies wrap tier.ErrNotFound and
// unreachable tiers tier.ErrUnavailable. When no copy is left, the
// error is a *NoCopyError wrapping ErrNoCopy that lists why each copy
// failed. A cancelled context stops at once and is never reported as a copy
// failure.
//
// A Reader holds no global state and is safe for concurrent use.
package recall
