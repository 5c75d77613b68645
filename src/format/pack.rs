//! The pack format: append-only, self-describing containers of chunks. No I/O (the store's
//! `packs.rs` reads and writes pack files).
//!
//! ```text
//! pack   := header record*
//! header := "MLDPACK\0" format:u32le(=1) reserved:u32le pack_id:[16]        (32 bytes)
//! record := "CHNK" codec:u8 reserved:[3] raw_len:u32le stored_len:u32le
//!           chunk_id:[32] check:u32le data:[stored_len]                      (52 + stored_len)
//! ```
//! `check` is the first 4 bytes of BLAKE3 over the 48 header bytes before it, so a damaged
//! header is detected before its lengths are trusted; the data is proven by the chunk id
//! (BLAKE3 of the decoded bytes). docs/format.md has the whole format.

use crate::error::{Error, Result};
use crate::format::chunker::MAX_CHUNK_LIMIT;
use crate::format::codec::{self, Codec};
use crate::format::digest::{ChunkId, Digest};
use crate::format::id::Id;
use crate::format::usize_from;

pub const PACK_MAGIC: &[u8; 8] = b"MLDPACK\0";
pub const PACK_FORMAT: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 32;
pub const RECORD_MAGIC: &[u8; 4] = b"CHNK";
pub const RECORD_HEADER_LEN: usize = 52;
/// Stored bytes may exceed raw bytes by zstd's worst-case overhead; anything larger is corrupt.
pub(crate) const MAX_STORED: usize = MAX_CHUNK_LIMIT + MAX_CHUNK_LIMIT / 64 + 1024;

/// `bytes.len()` as a record's `raw_len` or `stored_len` field. Chunks are cut at most
/// `MAX_CHUNK_LIMIT` (16 MiB) long, so this fails only on a bug, and then as an error instead of
/// a truncated length on disk.
pub(crate) fn len_field(bytes: &[u8]) -> Result<u32> {
    u32::try_from(bytes.len()).map_err(|_| {
        Error::Internal(format!(
            "a chunk of {} bytes does not fit a pack record",
            bytes.len()
        ))
    })
}

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: Id,
    /// Offset of the record header in the pack.
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    /// The chunk a `Codec::Delta` chunk is stored against (`None` for every other codec).
    pub base: Option<ChunkId>,
}

impl ChunkLoc {
    /// Encoded length without a base; a delta chunk's location adds its base's 32 bytes.
    pub const ENCODED_LEN: usize = 33;

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::ENCODED_LEN + 32);
        b.extend_from_slice(&self.pack.0);
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.stored_len.to_le_bytes());
        b.extend_from_slice(&self.raw_len.to_le_bytes());
        b.push(self.codec as u8);
        if let Some(base) = &self.base {
            b.extend_from_slice(base.as_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<ChunkLoc> {
        let codec = Codec::from_u8(*b.get(32)?)?;
        let base = match (codec, b.len()) {
            (Codec::Delta, 65) => Some(ChunkId(Digest(b[33..65].try_into().ok()?))),
            (Codec::Delta, _) => return None,
            (_, Self::ENCODED_LEN) => None,
            _ => return None,
        };
        Some(ChunkLoc {
            pack: Id(b[..16].try_into().ok()?),
            offset: u64::from_le_bytes(b[16..24].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[24..28].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[28..32].try_into().ok()?),
            codec,
            base,
        })
    }

    /// Bytes this chunk takes in its pack, header included.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.stored_len)
    }
}

pub fn pack_file_name(id: Id) -> String {
    format!("{id}.pack")
}

/// Extension of a pack an upload outside the store lock is still writing
/// (`<32 hex>.incoming`): renamed to `.pack` when the upload commits.
pub const INCOMING_EXT: &str = "incoming";

pub fn incoming_file_name(id: Id) -> String {
    format!("{id}.{INCOMING_EXT}")
}

/// Parse `<32 hex>.pack`.
#[cfg(any(test, feature = "testing"))]
pub fn parse_pack_file_name(name: &str) -> Option<Id> {
    name.strip_suffix(".pack")?.parse().ok()
}

fn header_check(h: &[u8]) -> u32 {
    let d = blake3::hash(&h[..48]);
    u32::from_le_bytes(d.as_bytes()[..4].try_into().expect("4 bytes"))
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub id: ChunkId,
}

pub fn encode_record_header(h: &RecordHeader) -> [u8; RECORD_HEADER_LEN] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    b[..4].copy_from_slice(RECORD_MAGIC);
    b[4] = h.codec as u8;
    b[8..12].copy_from_slice(&h.raw_len.to_le_bytes());
    b[12..16].copy_from_slice(&h.stored_len.to_le_bytes());
    b[16..48].copy_from_slice(h.id.as_bytes());
    let check = header_check(&b);
    b[48..52].copy_from_slice(&check.to_le_bytes());
    b
}

/// Decode and check a record header; `Err(reason)` if it is not a valid header.
pub fn decode_record_header(b: &[u8]) -> std::result::Result<RecordHeader, &'static str> {
    if b.len() < RECORD_HEADER_LEN {
        return Err("short record header");
    }
    if &b[..4] != RECORD_MAGIC {
        return Err("bad record magic");
    }
    if u32::from_le_bytes(b[48..52].try_into().expect("4")) != header_check(b) {
        return Err("record header checksum mismatch");
    }
    let codec = Codec::from_u8(b[4]).ok_or("unknown codec")?;
    if b[5..8] != [0, 0, 0] {
        return Err("reserved bytes set");
    }
    let raw_len = u32::from_le_bytes(b[8..12].try_into().expect("4"));
    let stored_len = u32::from_le_bytes(b[12..16].try_into().expect("4"));
    if raw_len as usize > MAX_CHUNK_LIMIT || stored_len as usize > MAX_STORED {
        return Err("record length out of bounds");
    }
    if codec == Codec::Raw && raw_len != stored_len {
        return Err("raw record with stored length != raw length");
    }
    let id = ChunkId(Digest(b[16..48].try_into().expect("32")));
    Ok(RecordHeader {
        codec,
        raw_len,
        stored_len,
        id,
    })
}

pub(crate) fn encode_pack_header(id: Id) -> [u8; usize_from(PACK_HEADER_LEN)] {
    let mut b = [0u8; usize_from(PACK_HEADER_LEN)];
    b[..8].copy_from_slice(PACK_MAGIC);
    b[8..12].copy_from_slice(&PACK_FORMAT.to_le_bytes());
    b[16..32].copy_from_slice(&id.0);
    b
}

pub(crate) fn check_pack_header(b: &[u8], expect: Id) -> std::result::Result<(), String> {
    if b.len() < usize_from(PACK_HEADER_LEN) || &b[..8] != PACK_MAGIC {
        return Err("bad pack magic".into());
    }
    let format = u32::from_le_bytes(b[8..12].try_into().expect("4"));
    if format != PACK_FORMAT {
        return Err(format!("unsupported pack format {format}"));
    }
    if b[16..32] != expect.0 {
        return Err("pack id in header does not match its file name".into());
    }
    Ok(())
}

/// Decode a whole record's data (header already parsed) and prove it against the chunk id.
/// A delta record cannot be decoded on its own: see `read_chunk`.
pub fn decode_and_verify(
    h: &RecordHeader,
    stored: &[u8],
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let raw = codec::decode(h.codec, stored, h.raw_len as usize, location)?;
    if ChunkId::of(&raw) != h.id {
        return Err(Error::corrupt(
            location(),
            format!("chunk {} fails its BLAKE3 check", h.id),
        ));
    }
    Ok(raw)
}

/// Check a record's data on its own: a plain record decodes to its chunk id; a delta record
/// has a valid delta header and inner bytes matching their checksum (its bytes are proven
/// against the chunk id when read with its base). For checks and verbatim copies.
pub fn check_stored(h: &RecordHeader, stored: &[u8], location: &dyn Fn() -> String) -> Result<()> {
    if h.codec == Codec::Delta {
        crate::format::delta::parse(stored)
            .map(|_| ())
            .map_err(|r| Error::corrupt(location(), format!("chunk {}: {r}", h.id)))
    } else {
        decode_and_verify(h, stored, location).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_byte_flip_is_detected() {
        let h = RecordHeader {
            codec: Codec::Raw,
            raw_len: 10,
            stored_len: 10,
            id: ChunkId::of(b"x"),
        };
        let enc = encode_record_header(&h);
        assert_eq!(decode_record_header(&enc), Ok(h));
        for i in 0..RECORD_HEADER_LEN {
            let mut b = enc;
            b[i] ^= 0x40;
            assert!(decode_record_header(&b).is_err(), "flip at {i} undetected");
        }
    }
}
