//! Remote pack objects: a local-format pack (header and chunk records copied verbatim) followed
//! by an index of its records and a footer, so one object describes itself:
//!
//! ```text
//! "MLDPACK\0" u32 1 u32 0 [16] id           pack header (as in packs/*.pack)
//! "CHNK" ... records ...                    exactly the local record bytes
//! "MLDRIDX1" u32 count                      the index block:
//!     count x ([32] chunk id, u64 offset, u32 stored_len, u32 raw_len, u8 codec,
//!              and for codec 4 (delta) only: [32] base chunk id)
//! u64 index_offset  [32] BLAKE3(index block)  "MLDREND\0"    footer, 48 bytes
//! ```
//! A multipart upload becomes visible only when complete, so a pack object that exists is whole.
//! Readers fetch the footer and index with one ranged GET of the tail, check the BLAKE3, and
//! cache the index block locally (objects are immutable). Every chunk fetched later is checked
//! again against its record header and its BLAKE3 id.

use crate::format::codec::Codec;
use crate::format::digest::{ChunkId, Digest};
use crate::format::id::Id;
use crate::format::usize_from;

pub const INDEX_MAGIC: &[u8; 8] = b"MLDRIDX1";
pub const FOOTER_MAGIC: &[u8; 8] = b"MLDREND\0";
pub const FOOTER_LEN: u64 = 48;
pub const ENTRY_LEN: usize = 49;
/// Largest index block a reader accepts (bounds the allocation a remote can cause).
pub const MAX_INDEX_LEN: u64 = 128 << 20;
/// Most records one remote pack may hold, so that its index block (every entry a delta's, with
/// a base id) stays within `MAX_INDEX_LEN`: a push starts a new pack object at this count.
pub const MAX_RECORDS: usize = (128 << 20) / (ENTRY_LEN + 32) - 1;
const _: () = assert!((12 + MAX_RECORDS * (ENTRY_LEN + 32)) as u64 <= MAX_INDEX_LEN);
/// Largest raw and stored chunk lengths a record can hold (as `pack::decode_record_header`
/// accepts them).
const MAX_CHUNK_LIMIT: usize = crate::format::chunker::MAX_CHUNK_LIMIT;
use crate::format::pack::MAX_STORED;

/// One chunk record in a remote pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    /// Offset of the record header in the object.
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    /// The base of a delta chunk (`Codec::Delta` only).
    pub base: Option<ChunkId>,
}

impl Entry {
    pub fn record_len(&self) -> u64 {
        crate::format::pack::RECORD_HEADER_LEN as u64 + u64::from(self.stored_len)
    }
}

/// The index block for `entries`, fewer than 2^32 of them (the push checks before uploading).
pub fn encode_index(entries: &[Entry]) -> Vec<u8> {
    let count = u32::try_from(entries.len()).expect("a remote pack has fewer than 2^32 records");
    let mut b = Vec::with_capacity(12 + entries.len() * ENTRY_LEN);
    b.extend_from_slice(INDEX_MAGIC);
    b.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        b.extend_from_slice(e.id.as_bytes());
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.stored_len.to_le_bytes());
        b.extend_from_slice(&e.raw_len.to_le_bytes());
        b.push(e.codec as u8);
        if let Some(base) = &e.base {
            b.extend_from_slice(base.as_bytes());
        }
    }
    b
}

/// The footer that follows an index block written at `index_offset`.
pub fn encode_footer(index_offset: u64, index: &[u8]) -> [u8; usize_from(FOOTER_LEN)] {
    let mut f = [0u8; usize_from(FOOTER_LEN)];
    f[..8].copy_from_slice(&index_offset.to_le_bytes());
    f[8..40].copy_from_slice(blake3::hash(index).as_bytes());
    f[40..].copy_from_slice(FOOTER_MAGIC);
    f
}

/// Parse a footer: `(index_offset, index_len, index checksum)`. `object_len` is the object size.
pub fn decode_footer(f: &[u8], object_len: u64) -> Result<(u64, u64, [u8; 32]), String> {
    if f.len() != usize_from(FOOTER_LEN) || &f[40..] != FOOTER_MAGIC {
        return Err("no remote pack footer".into());
    }
    let off = u64::from_le_bytes(f[..8].try_into().expect("8"));
    let end = object_len
        .checked_sub(FOOTER_LEN)
        .ok_or("object shorter than a footer")?;
    if off < crate::format::pack::PACK_HEADER_LEN || off > end {
        return Err(format!("index offset {off} out of bounds"));
    }
    Ok((off, end - off, f[8..40].try_into().expect("32")))
}

/// Decode and check an index block against its footer checksum; every entry must lie inside
/// `[PACK_HEADER_LEN, index_offset)` and entries must not overlap.
pub fn decode_index(b: &[u8], check: &[u8; 32], index_offset: u64) -> Result<Vec<Entry>, String> {
    if blake3::hash(b).as_bytes() != check {
        return Err("index block fails its BLAKE3 check".into());
    }
    if b.len() < 12 || &b[..8] != INDEX_MAGIC {
        return Err("bad index magic".into());
    }
    let n = u32::from_le_bytes(b[8..12].try_into().expect("4")) as usize;
    if n > (b.len() - 12) / ENTRY_LEN {
        return Err("index length does not match its count".into());
    }
    let mut out = Vec::with_capacity(n);
    let mut next = crate::format::pack::PACK_HEADER_LEN;
    let mut rest = &b[12..];
    for _ in 0..n {
        let e = rest
            .get(..ENTRY_LEN)
            .ok_or("index length does not match its count")?;
        let codec = Codec::from_u8(e[48]).ok_or("unknown codec in index")?;
        let base = if codec == Codec::Delta {
            let bb = rest
                .get(ENTRY_LEN..ENTRY_LEN + 32)
                .ok_or("index length does not match its count")?;
            rest = &rest[ENTRY_LEN + 32..];
            Some(ChunkId(Digest(bb.try_into().expect("32"))))
        } else {
            rest = &rest[ENTRY_LEN..];
            None
        };
        let entry = Entry {
            id: ChunkId(Digest(e[..32].try_into().expect("32"))),
            offset: u64::from_le_bytes(e[32..40].try_into().expect("8")),
            stored_len: u32::from_le_bytes(e[40..44].try_into().expect("4")),
            raw_len: u32::from_le_bytes(e[44..48].try_into().expect("4")),
            codec,
            base,
        };
        // Lengths no record can have would size a ranged GET (memory) before any header is
        // checked; offsets near u64::MAX would overflow.
        let end = entry.offset.checked_add(entry.record_len());
        if entry.raw_len as usize > MAX_CHUNK_LIMIT
            || entry.stored_len as usize > MAX_STORED
            || entry.offset < next
            || end.is_none_or(|end| end > index_offset)
        {
            return Err(format!("index entry for chunk {} out of bounds", entry.id));
        }
        next = end.expect("checked");
        out.push(entry);
    }
    if !rest.is_empty() {
        return Err("index length does not match its count".into());
    }
    Ok(out)
}

/// Object key suffix of a remote pack.
pub fn object_name(id: Id) -> String {
    format!("{id}.pack")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        (0..5u32)
            .map(|i| Entry {
                id: ChunkId::of(&i.to_le_bytes()),
                offset: 32 + u64::from(i) * 152,
                stored_len: 100,
                raw_len: 200,
                codec: if i == 3 { Codec::Delta } else { Codec::Zstd },
                base: (i == 3).then(|| ChunkId::of(b"base")),
            })
            .collect()
    }

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let es = entries();
        let idx = encode_index(&es);
        let off = 32 + 5 * 152;
        let f = encode_footer(off, &idx);
        let total = off + idx.len() as u64 + FOOTER_LEN;
        let (o, len, check) = decode_footer(&f, total).unwrap();
        assert_eq!((o, len), (off, idx.len() as u64));
        assert_eq!(decode_index(&idx, &check, o).unwrap(), es);
        for i in 0..idx.len() {
            let mut bad = idx.clone();
            bad[i] ^= 1;
            assert!(decode_index(&bad, &check, o).is_err(), "flip at {i}");
        }
        assert!(decode_footer(&f[1..], total).is_err());
        assert!(decode_footer(&f, 10).is_err());
    }

    #[test]
    fn overlapping_or_outside_entries_are_refused() {
        let mut es = entries();
        es[2].offset = es[1].offset + 10;
        let idx = encode_index(&es);
        let check = *blake3::hash(&idx).as_bytes();
        assert!(decode_index(&idx, &check, 10_000).is_err());
        let es = entries();
        let idx = encode_index(&es);
        let check = *blake3::hash(&idx).as_bytes();
        assert!(decode_index(&idx, &check, 32 + 4 * 152).is_err());
    }
}
