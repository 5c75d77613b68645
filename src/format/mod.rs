//! The on-disk formats and the rules for names, with no I/O: what a chunk id, a version id, a
//! file record, a manifest, an event, a pack record and a remote pack are as bytes; how files are
//! cut into chunks (content-defined, or on a tensor grid) and how chunks are coded (zstd, byte
//! planes, deltas). Everything here is a pure function of its input, so it can be fuzzed and
//! tested on its own. docs/format.md is the complete byte-level reference; each module here
//! keeps only the grammar of its own bytes next to the code that parses them.

pub mod chunker;
pub mod codec;
pub mod delta;
pub mod digest;
pub mod glob;
pub mod huffman;
pub mod id;
pub mod manifest;
pub mod names;
pub mod pack;
pub mod planes;
pub mod record;
#[cfg(feature = "remote")]
pub mod rpack;
pub mod tensors;
pub mod time;

/// `n` (an offset or length, u64 on disk) as a `usize`, without loss: ml-dash builds only for
/// 64-bit targets (see `src/lib.rs`). A value too large for memory still fails where it is
/// allocated or sliced, not silently here.
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize is 64 bits wide: src/lib.rs refuses to build for other targets"
)]
pub const fn usize_from(n: u64) -> usize {
    n as usize
}
