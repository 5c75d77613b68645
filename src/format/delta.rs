//! Delta chunks (`Codec::Delta`): a chunk stored as its difference to another chunk, its base.
//! No I/O here.
//!
//! Successive checkpoints of a training run change every float a little. The difference of two
//! versions of a tensor, taken per element as a zigzag-coded integer (`a - b` with the sign in
//! the lowest bit), has mostly-zero high bytes, which the byte-plane codec then codes in fewer
//! bits than the values themselves. The base is another chunk of the same length (the same
//! piece of the same tensor in an earlier version, see `tensors.rs`).
//!
//! ```text
//! stored := base:[32]  depth:u8  transform:u8  inner_codec:u8  0:u8  check:[16]  inner:[..]
//! ```
//! `depth` is 1 + the base's depth when the record was written (a non-delta chunk has depth
//! 0), for information: another store may hold the same base at another depth (a pull keeps the
//! base it already has), so readers bound a chain by counting steps, at most `MAX_DEPTH`, which
//! also ends a damaged chain that loops. `inner` is the difference stored with `inner_codec` (raw, zstd
//! or planes); `check` is the first 16 bytes of BLAKE3 over `inner`, so a record can be checked
//! on its own (verify, gc copies, push and pull) before its base is at hand. The decoded chunk
//! is then proven, as every chunk is, against its BLAKE3 id.

use crate::error::{Error, Result};
use crate::format::codec::{self, Codec, Compression};
use crate::format::digest::{ChunkId, Digest};

pub const HEADER_LEN: usize = 52;
/// The deepest chain any decoder follows (writers stay well below: `StoreOptions::delta_depth`).
pub const MAX_DEPTH: u8 = 15;

/// How the difference is taken, element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Transform {
    /// Bytes XOR bytes (any data).
    Xor = 0,
    /// Little-endian u16 elements (bf16, fp16, int16): zigzag(a - b).
    Sub16 = 1,
    /// Little-endian u32 elements (fp32, int32): zigzag(a - b).
    Sub32 = 2,
}

impl Transform {
    pub fn from_u8(b: u8) -> Option<Transform> {
        match b {
            0 => Some(Transform::Xor),
            1 => Some(Transform::Sub16),
            2 => Some(Transform::Sub32),
            _ => None,
        }
    }

    /// The transform for elements of `width` bytes.
    pub fn for_width(width: usize) -> Transform {
        match width {
            2 => Transform::Sub16,
            4 => Transform::Sub32,
            _ => Transform::Xor,
        }
    }

    /// For data of unknown element type: the transform whose difference over a 16 KiB sample
    /// is predicted to store smallest.
    pub fn guess(data: &[u8], base: &[u8]) -> Transform {
        let n = data.len().min(base.len()).min(16 << 10);
        [Transform::Sub16, Transform::Sub32, Transform::Xor]
            .into_iter()
            .map(|t| {
                (
                    codec::predicted_ratio(&difference(&data[..n], &base[..n], t)),
                    t,
                )
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(Transform::Xor, |(_, t)| t)
    }
}

/// The parsed fixed part of a delta record's stored bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub base: ChunkId,
    pub depth: u8,
    pub transform: Transform,
    pub inner: Codec,
}

/// The base a delta record names, without checking anything else (for indexing).
pub fn base_of(stored: &[u8]) -> Option<ChunkId> {
    Some(ChunkId(Digest(stored.get(..32)?.try_into().ok()?)))
}

/// Parse and check a delta record's stored bytes: the header fields and the checksum of the
/// inner bytes. Returns the header and the inner bytes.
pub fn parse(stored: &[u8]) -> std::result::Result<(Header, &[u8]), &'static str> {
    let (h, body) = parse_header(stored)?;
    if blake3::hash(body).as_bytes()[..16] != stored[36..52] {
        return Err("delta record fails its checksum");
    }
    Ok((h, body))
}

/// `parse` without the checksum of the inner bytes: for reads, where the decoded chunk is
/// proven against its id anyway (a damaged body then fails that check or decoding).
pub fn parse_header(stored: &[u8]) -> std::result::Result<(Header, &[u8]), &'static str> {
    if stored.len() < HEADER_LEN {
        return Err("delta record shorter than its header");
    }
    let depth = stored[32];
    if depth == 0 || depth > MAX_DEPTH {
        return Err("delta depth out of bounds");
    }
    let transform = Transform::from_u8(stored[33]).ok_or("unknown delta transform")?;
    let inner = match Codec::from_u8(stored[34]) {
        Some(Codec::Delta) | None => return Err("bad inner codec in delta record"),
        Some(c) => c,
    };
    if stored[35] != 0 {
        return Err("reserved byte set in delta record");
    }
    let body = &stored[HEADER_LEN..];
    let base = base_of(stored).expect("length checked");
    Ok((
        Header {
            base,
            depth,
            transform,
            inner,
        },
        body,
    ))
}

#[cfg(test)]
fn zigzag16(d: u16) -> u16 {
    let d = d.cast_signed();
    ((d << 1) ^ (d >> 15)).cast_unsigned()
}

#[cfg(test)]
fn unzigzag16(z: u16) -> u16 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

#[cfg(test)]
fn zigzag32(d: u32) -> u32 {
    let d = d.cast_signed();
    ((d << 1) ^ (d >> 31)).cast_unsigned()
}

#[cfg(test)]
fn unzigzag32(z: u32) -> u32 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// Lanes of a u64 for SWAR arithmetic on `width`-byte little-endian elements: (lowest bit of
/// each lane, highest bit of each lane, all-ones lane).
const fn lanes(width: usize) -> (u64, u64, u64) {
    if width == 2 {
        (0x0001_0001_0001_0001, 0x8000_8000_8000_8000, 0xffff)
    } else {
        (0x0000_0001_0000_0001, 0x8000_0000_8000_0000, 0xffff_ffff)
    }
}

/// Per lane: zigzag(a - b).
#[inline(always)]
fn sub_zigzag(a: u64, b: u64, (lo, hi, ones): (u64, u64, u64)) -> u64 {
    let d = ((a | hi).wrapping_sub(b & !hi)) ^ ((a ^ !b) & hi);
    ((d << 1) & !lo) ^ (((d & hi) >> (ones.count_ones() - 1)) * ones)
}

/// Per lane: b + unzigzag(z).
#[inline(always)]
fn add_unzigzag(z: u64, b: u64, (lo, hi, ones): (u64, u64, u64)) -> u64 {
    let d = ((z >> 1) & !hi) ^ ((z & lo) * ones);
    ((d & !hi) + (b & !hi)) ^ ((d ^ b) & hi)
}

fn width_of(t: Transform) -> usize {
    match t {
        Transform::Xor => 1,
        Transform::Sub16 => 2,
        Transform::Sub32 => 4,
    }
}

/// The difference of `data` to `base` (equal lengths). Whole 8-byte words are done as 4 x u16
/// or 2 x u32 lanes; the rest (fewer than 8 bytes) is XORed.
pub fn difference(data: &[u8], base: &[u8], t: Transform) -> Vec<u8> {
    debug_assert_eq!(data.len(), base.len());
    let mut out = vec![0u8; data.len()];
    let done = match t {
        Transform::Xor => 0,
        _ => {
            let l = lanes(width_of(t));
            let it = out
                .chunks_exact_mut(8)
                .zip(data.chunks_exact(8).zip(base.chunks_exact(8)));
            for (o, (a, b)) in it {
                let a = u64::from_le_bytes(a.try_into().expect("8"));
                let b = u64::from_le_bytes(b.try_into().expect("8"));
                o.copy_from_slice(&sub_zigzag(a, b, l).to_le_bytes());
            }
            data.len() / 8 * 8
        }
    };
    for ((o, a), b) in out[done..].iter_mut().zip(&data[done..]).zip(&base[done..]) {
        *o = a ^ b;
    }
    out
}

/// Undo `difference`: `diff` becomes the data it was taken from (in place).
fn undo(diff: &mut [u8], base: &[u8], t: Transform) {
    let done = match t {
        Transform::Xor => 0,
        _ => {
            let l = lanes(width_of(t));
            for (o, b) in diff.chunks_exact_mut(8).zip(base.chunks_exact(8)) {
                let z = u64::from_le_bytes((&*o).try_into().expect("8"));
                let b = u64::from_le_bytes(b.try_into().expect("8"));
                o.copy_from_slice(&add_unzigzag(z, b, l).to_le_bytes());
            }
            diff.len() / 8 * 8
        }
    };
    for (o, b) in diff[done..].iter_mut().zip(&base[done..]) {
        *o ^= b;
    }
}

/// Store `data` as a delta against `base` (a chunk of the same length whose id is `base_id`
/// and whose depth is `depth - 1`), if the difference is predicted to store at least
/// `min_gain` (a fraction of `data`'s length) smaller than `data` itself would. `None`: store
/// `data` on its own.
pub fn encode(
    data: &[u8],
    base: &[u8],
    base_id: &ChunkId,
    depth: u8,
    t: Transform,
    policy: Compression,
    min_gain: f64,
) -> Option<Vec<u8>> {
    if data.len() != base.len() || depth == 0 || depth > MAX_DEPTH {
        return None;
    }
    if policy == Compression::Off {
        return None;
    }
    let diff = difference(data, base, t);
    if codec::predicted_ratio(&diff) + min_gain > codec::predicted_ratio(data) {
        return None;
    }
    let (inner, body) = codec::encode(&diff, Compression::Auto(1))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(base_id.as_bytes());
    out.extend_from_slice(&[depth, t as u8, inner as u8, 0]);
    out.extend_from_slice(&blake3::hash(&body).as_bytes()[..16]);
    out.extend_from_slice(&body);
    Some(out)
}

/// Decode a delta record's stored bytes into the `raw_len` raw bytes, given its base's raw
/// bytes (not yet checked against the chunk id: the caller does that).
#[cfg(test)]
pub fn decode(
    h: &Header,
    inner: &[u8],
    raw_len: usize,
    base: &[u8],
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; raw_len];
    decode_into(h, inner, base, &mut out, location, &mut |_, _| {})?;
    Ok(out)
}

/// Decode a delta record's stored bytes into `out` (its raw length), given its base's raw
/// bytes. The difference is undone piece by piece as the inner codec makes each piece, and
/// `then` gets the piece next (see `codec::Then`).
pub fn decode_into(
    h: &Header,
    inner: &[u8],
    base: &[u8],
    out: &mut [u8],
    location: &dyn Fn() -> String,
    then: codec::Then<'_>,
) -> Result<()> {
    if base.len() != out.len() {
        return Err(Error::corrupt(
            location(),
            format!("delta base {} has the wrong length", h.base),
        ));
    }
    let t = h.transform;
    codec::decode_into(h.inner, inner, out, location, &mut |at, piece| {
        undo(piece, &base[at..at + piece.len()], t);
        then(at, piece);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(n: usize, seed: u64, jitter: f32) -> Vec<u8> {
        let mut rng = crate::test_support::XorShift::new(seed);
        let mut out = Vec::with_capacity(n * 4);
        for i in 0..n {
            let base = ((i as f32) * 0.37).sin() * 0.05;
            let v = base + jitter * (rng.unit_f32() - 0.5);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    #[test]
    fn transforms_round_trip_with_odd_tails() {
        let a = floats(1000, 1, 1e-3);
        let b = floats(1000, 2, 1e-3);
        for t in [Transform::Xor, Transform::Sub16, Transform::Sub32] {
            for cut in [4000, 3999, 3998, 3997, 1, 0] {
                let mut d = difference(&a[..cut], &b[..cut], t);
                undo(&mut d, &b[..cut], t);
                assert_eq!(d, &a[..cut], "{t:?} len {cut}");
            }
        }
        // The lanes agree with scalar zigzag differences, including wrap-around.
        let vals16 = [
            0u16, 1, 2, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff, 0x3c00, 0xbc00,
        ];
        for &x in &vals16 {
            for &y in &vals16 {
                let a: Vec<u8> = [x, y, x, y].iter().flat_map(|v| v.to_le_bytes()).collect();
                let b: Vec<u8> = [y, x, x, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
                let d = difference(&a, &b, Transform::Sub16);
                for k in 0..4 {
                    let (a, b) = (
                        u16::from_le_bytes([a[2 * k], a[2 * k + 1]]),
                        u16::from_le_bytes([b[2 * k], b[2 * k + 1]]),
                    );
                    let want = zigzag16(a.wrapping_sub(b));
                    assert_eq!(u16::from_le_bytes([d[2 * k], d[2 * k + 1]]), want);
                    assert_eq!(b.wrapping_add(unzigzag16(want)), a);
                }
            }
        }
        let vals32 = [
            0u32,
            1,
            0x7fff_ffff,
            0x8000_0000,
            0x8000_0001,
            u32::MAX,
            0x3f80_0000,
        ];
        for &x in &vals32 {
            for &y in &vals32 {
                let a: Vec<u8> = [x, y].iter().flat_map(|v| v.to_le_bytes()).collect();
                let b: Vec<u8> = [y, x].iter().flat_map(|v| v.to_le_bytes()).collect();
                let d = difference(&a, &b, Transform::Sub32);
                for k in 0..2 {
                    let g = |v: &[u8]| u32::from_le_bytes(v[4 * k..4 * k + 4].try_into().unwrap());
                    let want = zigzag32(g(&a).wrapping_sub(g(&b)));
                    assert_eq!(g(&d), want);
                    assert_eq!(g(&b).wrapping_add(unzigzag32(want)), g(&a));
                }
            }
        }
    }

    /// Decoding hands out the chunk in whole pieces, in order, each already undone: pieces of
    /// `PIECE` bytes at multiples of `PIECE`, the last one shorter and holding any tail that is
    /// no whole value; whatever the length and the inner codec.
    #[test]
    fn deltas_decode_piece_by_piece_at_any_length() {
        let p = codec::PIECE;
        for (len, t) in [
            (3 * p + 4, Transform::Sub32),
            (3 * p + 7, Transform::Sub32),
            (2 * p, Transform::Sub16),
            (2 * p + 3, Transform::Sub16),
            (p - 5, Transform::Xor),
            (5 * p + 1, Transform::Xor),
        ] {
            let old = floats(len.div_ceil(4), 11, 1e-2);
            let new = floats(len.div_ceil(4), 12, 1e-2);
            let (old, new) = (&old[..len], &new[..len]);
            let base_id = ChunkId::of(old);
            let stored = encode(new, old, &base_id, 1, t, Compression::Auto(1), -1.0)
                .expect("a delta is wanted whatever it saves");
            let (h, inner) = parse(&stored).unwrap();
            let mut out = vec![0u8; len];
            let mut seen = vec![];
            let mut hashed = blake3::Hasher::new();
            decode_into(&h, inner, old, &mut out, &String::new, &mut |at, piece| {
                seen.push((at, piece.len()));
                hashed.update(piece);
            })
            .unwrap();
            assert_eq!(out, new, "{len} {t:?} {:?}", h.inner);
            assert_eq!(ChunkId::from_hash(hashed.finalize()), ChunkId::of(new));
            let want: Vec<(usize, usize)> = (0..len.div_ceil(p))
                .map(|i| (i * p, p.min(len - i * p)))
                .collect();
            // The plane codec's last piece takes the bytes that are no whole value.
            let merged = seen.len() + 1 == want.len()
                && seen.last().map(|l| l.0) == Some(want[want.len() - 2].0);
            assert!(seen == want || merged, "{len} {t:?}: {seen:?}");
        }
    }

    #[test]
    fn close_versions_store_as_small_deltas_and_decode_exactly() {
        let old = floats(65536, 7, 0.0);
        // The same tensor a few ulps later.
        let new: Vec<u8> = old
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, c)| {
                let v = u32::from_le_bytes(c.try_into().unwrap());
                v.wrapping_add(u32::try_from(i % 7).expect("below 7"))
                    .wrapping_sub(3)
                    .to_le_bytes()
            })
            .collect();
        let base_id = ChunkId::of(&old);
        let stored = encode(
            &new,
            &old,
            &base_id,
            1,
            Transform::Sub32,
            Compression::Auto(1),
            0.02,
        )
        .expect("a small difference pays");
        let plain = codec::encode(&new, Compression::Auto(1)).map_or(new.len(), |(_, s)| s.len());
        assert!(stored.len() * 3 < plain, "{} vs {plain}", stored.len());
        let (h, inner) = parse(&stored).unwrap();
        assert_eq!(
            (h.base, h.depth, h.transform),
            (base_id, 1, Transform::Sub32)
        );
        let back = decode(&h, inner, new.len(), &old, &String::new).unwrap();
        assert_eq!(back, new);
        // Every byte of the stored form is covered: the header by its checks or the chunk id
        // at read time, the body by the checksum.
        for i in 32..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x10;
            let ok = parse(&bad).is_ok_and(|(h, inner)| {
                decode(&h, inner, new.len(), &old, &String::new).is_ok_and(|b| b == new)
            });
            assert!(!ok, "flip at {i} undetected");
        }
        // A wrong base length is refused, unrelated data is not worth a delta.
        assert!(decode(&h, inner, new.len(), &old[1..], &String::new).is_err());
        let other = floats(65536, 99, 0.1);
        assert!(
            encode(
                &other,
                &old,
                &base_id,
                1,
                Transform::Sub32,
                Compression::Auto(1),
                0.02
            )
            .is_none()
        );
        assert!(
            encode(
                &new,
                &old,
                &base_id,
                0,
                Transform::Sub32,
                Compression::Auto(1),
                0.0
            )
            .is_none()
        );
    }
}
