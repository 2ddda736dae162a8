// Package object defines Strata's object: the payload of one file version,
// stored in the zstd seekable format, and its JSON manifest.
//
// # Format
//
// An object is a sequence of independent zstd frames, each holding
// FrameSize uncompressed bytes (the last one fewer), followed by the seek
// table of the zstd seekable format (facebook/zstd
// contrib/seekable_format/zstd_seekable_compression_format.md, v0.1.0) in a
// skippable frame:
//
//	frame 0 | frame 1 | … | frame n-1 | seek table
//	seek table = 0x184D2A5E (u32 LE) | 8*n+9 (u32 LE)
//	             n × { packed size u32 LE | size u32 LE }
//	             n (u32 LE) | descriptor 0x00 | 0x8F92EAB1 (u32 LE)
//
// Strata writes no per-entry XXH64 checksums in the seek table (descriptor
// 0): integrity comes from the BLAKE3 hashes in the manifest. Every data
// frame does carry the zstd content checksum, so plain `zstd -d` restores
// the file and checks each frame on its own; a reader that knows nothing of
// Strata (`zstd -d`, any seekable-format reader) can recover the bytes. An
// empty object has no data frame: it is the seek table alone, which `zstd -d`
// decodes to nothing.
//
// Frames whose content does not compress (detected on a small sample
// compressed at the fastest level, and again after full compression) are
// written as zstd frames of raw blocks, which this package builds itself:
// they cost a copy and a hash instead of a compression pass.
//
// # Identity and verification
//
// The object id is the BLAKE3-256 of the uncompressed content (64 lowercase
// hex), so identical files share one object. The manifest also records the
// BLAKE3 of every frame's uncompressed bytes and of the whole packed object
// (packed_sum). Every read path (Reader.ReadAt, DecodeFrames, Verify) checks
// each frame's hash before handing out any of its bytes: a caller gets
// verified bytes or an error wrapping ErrCorrupt that names the frame, never
// unverified bytes.
//
// # Memory and parallelism
//
// Pack reads its input one frame at a time and compresses up to Concurrency
// frames in parallel, each with its own encoder, writing them in order; at
// most Concurrency+2 frames are in memory at once, whatever the input size.
// Output is byte-identical whatever the concurrency.
//
// BLAKE3 comes from github.com/zeebo/blake3: measured here on 4 MiB buffers
// on one core it hashes as fast as lukechampine.com/blake3 (~3.9 GB/s both),
// and it never starts goroutines of its own, which keeps Pack's CPU use
// within Concurrency.
package object
