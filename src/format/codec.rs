//! Per-chunk compression: zstd when it pays, raw otherwise; byte planes for float data.
//! No I/O here.
//!
//! Deciding must be cheaper than trying: `Compression::Auto` first estimates the order-0 entropy
//! of a 4 KiB sample of the chunk. zstd's gain on data without long matches (weights, already
//! compressed media) is close to what entropy coding alone gives, `(8 - H) / 8`; when that
//! predicts less than 5 %, the chunk is stored raw without calling zstd at all. Otherwise the
//! chunk is compressed, and kept compressed only if it saved at least 1/16 of its size (below
//! that the saving does not pay for decompressing on every read).
//!
//! Float tensors (checkpoints) defeat whole-chunk zstd: their mantissa bytes are noise, and
//! compressing them costs most of the time for a small gain. The same sample is therefore also
//! histogrammed per byte position modulo 4 and 2; when one position is far more predictable
//! than the others (the sign/exponent byte of fp32, bf16 or fp16 values), the chunk is stored
//! as byte planes (`Codec::Planes`): plane k holds bytes k, k+w, k+2w, ... (`planes.rs`) and
//! only the planes predicted to shrink are coded, each by what pays: a Huffman code
//! (`huffman.rs`: exponent bytes have no repeats worth a match search), zstd when the plane is
//! mostly runs (the high bytes of a delta), or a single value. Detection is by statistics
//! alone, so it works at any phase (chunk boundaries fall anywhere in a tensor) and for any
//! container (safetensors, PyTorch zip, raw arrays).
//!
//! Plane layouts: docs/format.md. Codecs 2 and 3 (each plane raw or zstd) are what earlier
//! versions wrote; they are still read.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::format::{huffman, planes};

/// How a chunk's bytes are stored in a pack (the byte value is part of the pack format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// Byte planes of width 4 (fp32-like), some zstd-compressed.
    Planes4 = 2,
    /// Byte planes of width 2 (bf16 / fp16-like), some zstd-compressed.
    Planes2 = 3,
    /// The difference to another chunk (its base), itself stored with one of the codecs above
    /// (see `encode_delta`).
    Delta = 4,
    /// Byte planes of width 2 or 4, each raw, zstd, Huffman-coded or one repeated value (what
    /// this version writes for float data; codecs 2 and 3 are still read).
    Planes = 5,
}

impl Codec {
    pub fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Planes4),
            3 => Some(Codec::Planes2),
            4 => Some(Codec::Delta),
            5 => Some(Codec::Planes),
            _ => None,
        }
    }
}

/// When to compress chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Never compress.
    Off,
    /// Predict from byte statistics, compress at this zstd level when it should pay (default, level 1).
    Auto(i32),
    /// Always try this zstd level (keep only if it saves 1/16).
    Always(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Auto(1)
    }
}

/// A plane is entropy-coded only when its sample predicts at least this saving: planes of
/// mantissa bits sit just under 8 bits of entropy, and coding them costs more CPU than the
/// few percent they save.
const PLANE_MIN_GAIN: f64 = 0.05;

const SAMPLE_SPAN: usize = 1024;
const SAMPLE_SPANS: usize = 4;

#[cfg(test)]
/// Order-0 entropy in bits per byte of up to 4 KiB sampled evenly from `data`.
pub fn sample_entropy(data: &[u8]) -> f64 {
    let mut hist = [0u32; 256];
    if data.len() <= SAMPLE_SPAN * SAMPLE_SPANS {
        for &b in data {
            hist[b as usize] += 1;
        }
    } else {
        let stride = data.len() / SAMPLE_SPANS;
        for i in 0..SAMPLE_SPANS {
            for &b in &data[i * stride..i * stride + SAMPLE_SPAN] {
                hist[b as usize] += 1;
            }
        }
    }
    // The bytes sampled: at most 4 KiB.
    let n: u32 = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

thread_local! {
    static PLANE_COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        c.as_mut()?.1.compress(data).ok()
    })
}

/// zstd tuned to be a fast coder of planes that are mostly runs (the high bytes of a delta):
/// the "fast" strategy with a small hash table finds runs and nothing else, while literals stay
/// Huffman-coded (which zstd turns off by default at such settings). Output is an ordinary
/// zstd frame.
fn zstd_entropy(data: &[u8]) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{CParameter, ParamSwitch, Strategy};
    PLANE_COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            let mut z = zstd::bulk::Compressor::new(1).ok()?;
            for p in [
                CParameter::Strategy(Strategy::ZSTD_fast),
                CParameter::TargetLength(64),
                CParameter::HashLog(12),
                CParameter::MinMatch(7),
                CParameter::LiteralCompressionMode(ParamSwitch::Enable),
                CParameter::ChecksumFlag(false),
            ] {
                z.set_parameter(p).ok()?;
            }
            *c = Some(z);
        }
        c.as_mut()?.compress(data).ok()
    })
}

/// Entropy (bits per byte) of the bytes at each position modulo 4 of the sample, and of the
/// sample as a whole.
fn sample_stats(data: &[u8]) -> ([f64; 4], f64) {
    let mut hist = [[0u32; 256]; 4];
    let mut count = |span: &[u8], start: usize| {
        for (i, &b) in span.iter().enumerate() {
            hist[(start + i) & 3][b as usize] += 1;
        }
    };
    if data.len() <= SAMPLE_SPAN * SAMPLE_SPANS {
        count(data, 0);
    } else {
        let stride = (data.len() / SAMPLE_SPANS) & !3;
        for i in 0..SAMPLE_SPANS {
            count(&data[i * stride..i * stride + SAMPLE_SPAN], i * stride);
        }
    }
    let mut all = [0u32; 256];
    for h in &hist {
        for (a, c) in all.iter_mut().zip(h) {
            *a += c;
        }
    }
    (
        [
            entropy(&hist[0]),
            entropy(&hist[1]),
            entropy(&hist[2]),
            entropy(&hist[3]),
        ],
        entropy(&all),
    )
}

/// Entropy in bits per byte of a sample's histogram (at most 4 KiB counted).
fn entropy(h: &[u32; 256]) -> f64 {
    let n: u32 = h.iter().sum();
    if n == 0 {
        return 0.0;
    }
    // H = log2 n - (1/n) sum c log2 c, with c log2 c from a table (counts <= 4096).
    let t = clog2c_table();
    let s: f64 = h.iter().map(|&c| t[c as usize]).sum();
    f64::from(n).log2() - s / f64::from(n)
}

/// Entropy of each byte of the sample's `width`-byte elements after rotating each left by one
/// bit (the sign of a float to the lowest bit, its exponent whole in the top byte).
fn rotated_stats(data: &[u8], width: usize) -> Vec<f64> {
    let mut hist = vec![[0u32; 256]; width];
    let mut count = |span: &[u8]| {
        for e in span.chunks_exact(width) {
            let mut r = [0u8; 4];
            if width == 4 {
                let v = u32::from_le_bytes(e.try_into().expect("4 bytes"));
                r = v.rotate_left(1).to_le_bytes();
            } else {
                let v = u16::from_le_bytes(e.try_into().expect("2 bytes"));
                r[..2].copy_from_slice(&v.rotate_left(1).to_le_bytes());
            }
            for (h, b) in hist.iter_mut().zip(r) {
                h[b as usize] += 1;
            }
        }
    };
    if data.len() <= SAMPLE_SPAN * SAMPLE_SPANS {
        count(data);
    } else {
        let stride = (data.len() / SAMPLE_SPANS) & !3;
        for i in 0..SAMPLE_SPANS {
            count(&data[i * stride..i * stride + SAMPLE_SPAN]);
        }
    }
    hist.iter().map(entropy).collect()
}

/// The predicted saving, as a fraction of the chunk, of planes with entropies `hs` when only
/// the planes that pay are coded.
fn coded_planes_gain(hs: &[f64]) -> f64 {
    hs.iter()
        .map(|&h| gain(h))
        .filter(|&g| g >= PLANE_MIN_GAIN)
        .sum::<f64>()
        / hs.len() as f64
}

/// `c * log2(c)` for every count a sample histogram can hold (0 for 0).
fn clog2c_table() -> &'static [f64; SAMPLE_SPAN * SAMPLE_SPANS + 1] {
    static T: std::sync::OnceLock<Box<[f64; SAMPLE_SPAN * SAMPLE_SPANS + 1]>> =
        std::sync::OnceLock::new();
    T.get_or_init(|| {
        // Built on the heap: 32 KiB is too much for a thread's stack.
        let mut t: Box<[f64; SAMPLE_SPAN * SAMPLE_SPANS + 1]> =
            vec![0f64; SAMPLE_SPAN * SAMPLE_SPANS + 1]
                .into_boxed_slice()
                .try_into()
                .expect("the length of the array");
        for (c, v) in t.iter_mut().enumerate().skip(1) {
            *v = c as f64 * (c as f64).log2();
        }
        t
    })
}

/// Predicted saving of entropy coding at `h` bits per byte.
fn gain(h: f64) -> f64 {
    (8.0 - h) / 8.0
}

/// How `encode` would store a chunk under `Auto`, and the fraction of its size it predicts.
enum Plan {
    Raw,
    Zstd,
    /// Width, per-plane entropies, rotated (see `planes.rs`).
    Planes(usize, Vec<f64>, bool),
}

fn plan(data: &[u8]) -> (Plan, f64) {
    if data.len() < 64 {
        return (Plan::Raw, 1.0);
    }
    let (pos, whole) = sample_stats(data);
    // Per-plane entropy for widths 4 and 2 (plane k of width 2 = positions k and k+2).
    let h2 = [(pos[0] + pos[2]) / 2.0, (pos[1] + pos[3]) / 2.0];
    let spread4 = pos.iter().cloned().fold(0.0, f64::max) - pos.iter().cloned().fold(8.0, f64::min);
    let spread2 = (h2[0] - h2[1]).abs();
    // Structured by position (floats): compress only the planes that pay.
    if spread4 > 1.0 || spread2 > 1.0 {
        let width = if spread2 > 1.0 && spread2 >= spread4 * 0.75 {
            2
        } else {
            4
        };
        let hs: Vec<f64> = if width == 2 {
            h2.to_vec()
        } else {
            pos.to_vec()
        };
        let planes_gain: f64 = hs.iter().map(|h| gain(*h).max(0.0)).sum::<f64>() / width as f64;
        if planes_gain >= 0.05 {
            // Floats code smaller with the exponent whole in one byte (the sign then sits with
            // the mantissa noise), data that only looks like floats may not.
            let rotated = rotated_stats(data, width);
            if coded_planes_gain(&rotated) > coded_planes_gain(&hs) + 0.002 {
                return (Plan::Planes(width, rotated, true), 1.0 - planes_gain);
            }
            return (Plan::Planes(width, hs, false), 1.0 - planes_gain);
        }
    }
    if gain(whole) < 0.05 {
        return (Plan::Raw, 1.0);
    }
    (Plan::Zstd, 1.0 - gain(whole))
}

/// The fraction of its size `encode` is expected to store a chunk in under `Auto` (1.0: raw),
/// from a 4 KiB sample.
pub fn predicted_ratio(data: &[u8]) -> f64 {
    plan(data).1
}

/// Encode a chunk: `Some((codec, stored))` when compression pays under `policy`, else `None`
/// (store raw).
pub fn encode(data: &[u8], policy: Compression) -> Option<(Codec, Vec<u8>)> {
    let level = match policy {
        Compression::Off => return None,
        Compression::Auto(level) => level,
        Compression::Always(level) => {
            let out = zstd_compress(data, level)?;
            return (out.len() + data.len() / 16 <= data.len()).then_some((Codec::Zstd, out));
        }
    };
    match plan(data).0 {
        Plan::Raw => None,
        Plan::Planes(width, hs, rotate) => encode_planes(data, width, &hs, rotate),
        Plan::Zstd => {
            let out = zstd_compress(data, level)?;
            (out.len() + data.len() / 16 <= data.len()).then_some((Codec::Zstd, out))
        }
    }
}

/// A plane whose Huffman code would take less than this fraction of it is also tried with zstd,
/// which codes long runs (mostly-zero planes of deltas) below Huffman's one bit per byte.
const PLANE_TRY_ZSTD_BELOW: usize = 4;

/// How one plane of a `Codec::Planes` chunk is stored (the byte value is part of the format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum PlaneMethod {
    Raw = 0,
    Zstd = 1,
    Huffman = 2,
    /// One value repeated: the body is that byte.
    Repeat = 3,
}

/// The first byte of a `Codec::Planes` record: the width, and this bit when the elements were
/// rotated left by one bit before splitting.
const ROTATED: u8 = 0x10;

fn encode_planes(data: &[u8], width: usize, hs: &[f64], rotate: bool) -> Option<(Codec, Vec<u8>)> {
    let n = data.len() / width;
    // Plane lengths are u32 fields: a chunk with longer planes is not plane-coded (it cannot
    // happen: chunks are at most 16 MiB).
    let n32 = u32::try_from(n).ok()?;
    let mut out = Vec::with_capacity(data.len() + 1 + 5 * width);
    let width_byte = u8::try_from(width).expect("a plane width is 2 or 4");
    out.push(if rotate {
        width_byte | ROTATED
    } else {
        width_byte
    });
    let mut coded_any = false;
    PLANE_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let bufs = &mut scratch.0;
        planes::split(data, width, rotate, bufs);
        for (k, plane) in bufs.iter().take(width).enumerate() {
            let at = out.len();
            out.push(PlaneMethod::Raw as u8);
            out.extend_from_slice(&n32.to_le_bytes());
            if gain(hs[k]) >= PLANE_MIN_GAIN && n > 0 {
                let hist = huffman::histogram(plane);
                if hist.iter().filter(|&&c| c > 0).count() == 1 {
                    out[at] = PlaneMethod::Repeat as u8;
                    out[at + 1..at + 5].copy_from_slice(&1u32.to_le_bytes());
                    out.push(plane[0]);
                    coded_any = true;
                    continue;
                }
                let lens = huffman::code_lengths(&hist);
                let huff_len = huffman::coded_len(&hist, &lens);
                let zstd = (huff_len * PLANE_TRY_ZSTD_BELOW < n)
                    .then(|| zstd_entropy(plane))
                    .flatten()
                    .filter(|z| z.len() < huff_len);
                if let Some(z) = zstd.filter(|z| z.len() + n / 16 <= n) {
                    out[at] = PlaneMethod::Zstd as u8;
                    let len = u32::try_from(z.len()).expect("below n");
                    out[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&z);
                    coded_any = true;
                    continue;
                }
                if huff_len + n / 16 <= n {
                    out[at] = PlaneMethod::Huffman as u8;
                    huffman::encode(plane, &hist, &lens, &mut out);
                    let len = u32::try_from(out.len() - at - 5).expect("below n");
                    out[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
                    coded_any = true;
                    continue;
                }
            }
            out.extend_from_slice(plane);
        }
    });
    out.extend_from_slice(&data[n * width..]);
    (coded_any && out.len() + data.len() / 16 <= data.len()).then_some((Codec::Planes, out))
}

thread_local! {
    /// Planes of the chunk being coded or decoded on this thread (reused: no allocation per
    /// chunk).
    static PLANE_SCRATCH: RefCell<(Vec<Vec<u8>>,)> = const { RefCell::new((Vec::new(),)) };
}

/// What a decoder hands each piece of a chunk to as soon as the piece holds its raw bytes:
/// `(offset, piece)`, pieces in order, together the whole chunk, each starting at a multiple of
/// `PIECE` and `PIECE` bytes long but the last (shorter, or longer by the few bytes at the end
/// of a chunk of planes that make no whole value), so 8-byte words stay whole. Undoing a delta
/// and hashing happen there, while the piece is still in the cache.
pub type Then<'a> = &'a mut dyn FnMut(usize, &mut [u8]);

/// Bytes per piece handed to a `Then`: a multiple of 8 and of BLAKE3's 1 KiB chunks, small
/// enough to stay in the first-level cache with the planes it came from.
pub const PIECE: usize = 16 << 10;

/// `then` on each piece of `out`.
fn in_pieces(out: &mut [u8], then: Then<'_>) {
    for (i, p) in out.chunks_mut(PIECE).enumerate() {
        then(i * PIECE, p);
    }
}

/// Decode a `Codec::Planes` chunk into `out`, merging its planes piece by piece.
fn decode_planes_into(
    stored: &[u8],
    out: &mut [u8],
    location: &dyn Fn() -> String,
    then: Then<'_>,
) -> Result<()> {
    let bad = |r: &str| Error::corrupt(location(), format!("plane codec: {r}"));
    let raw_len = out.len();
    let first = *stored.first().ok_or_else(|| bad("empty"))?;
    let (width, rotate) = (usize::from(first & !ROTATED), first & ROTATED != 0);
    if width != 2 && width != 4 {
        return Err(bad("bad width"));
    }
    let n = raw_len / width;
    PLANE_SCRATCH.with(|scratch| -> Result<()> {
        let mut scratch = scratch.borrow_mut();
        let bufs = &mut scratch.0;
        bufs.resize_with(width, Vec::new);
        // Each plane is either its raw bytes in `stored` or decoded into its scratch buffer.
        let mut raw: [Option<&[u8]>; 4] = [None; 4];
        let mut pos = 1usize;
        for (k, buf) in bufs.iter_mut().enumerate() {
            let head = stored.get(pos..pos + 5).ok_or_else(|| bad("truncated"))?;
            let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
            pos += 5;
            let body = stored
                .get(pos..pos.checked_add(len).ok_or_else(|| bad("length"))?)
                .ok_or_else(|| bad("truncated"))?;
            pos += len;
            match head[0] {
                m if m == PlaneMethod::Raw as u8 => {
                    if len != n {
                        return Err(bad("raw plane length mismatch"));
                    }
                    raw[k] = Some(body);
                }
                m if m == PlaneMethod::Repeat as u8 => {
                    let [v] = body else {
                        return Err(bad("repeated value length"));
                    };
                    buf.clear();
                    buf.resize(n, *v);
                }
                // Buffers grow once per thread and are never cleared: the decoders below write
                // every byte.
                m if m == PlaneMethod::Huffman as u8 => {
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    huffman::decode(body, &mut buf[..n]).map_err(|e| bad(e.0))?;
                }
                m if m == PlaneMethod::Zstd as u8 => {
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    decode_into(Codec::Zstd, body, &mut buf[..n], location, &mut |_, _| {})?;
                }
                _ => return Err(bad("unknown plane method")),
            }
        }
        let tail = &stored[pos..];
        if tail.len() != raw_len - n * width {
            return Err(bad("tail length mismatch"));
        }
        let planes: Vec<&[u8]> = (0..width)
            .map(|k| raw[k].unwrap_or_else(|| &bufs[k][..n]))
            .collect();
        // Values per piece; the last piece also takes the tail.
        let step = PIECE / width;
        let mut at = 0;
        loop {
            let last = n - at <= step;
            let end = if last { n } else { at + step };
            let piece: Vec<&[u8]> = planes.iter().map(|p| &p[at..end]).collect();
            let bytes = &mut out[at * width..];
            planes::interleave(&piece, rotate, &mut bytes[..(end - at) * width]);
            if last {
                bytes[(end - at) * width..].copy_from_slice(tail);
                then(at * width, bytes);
                return Ok(());
            }
            then(at * width, &mut bytes[..PIECE]);
            at = end;
        }
    })
}

/// Decode a chunk of codec 2 or 3: byte planes as earlier versions wrote them (each plane raw
/// or a zstd frame).
fn decode_planes_zstd(
    width: usize,
    stored: &[u8],
    raw_len: usize,
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let bad = |r: &str| Error::corrupt(location(), format!("plane codec: {r}"));
    if stored.len() < 2 || stored[0] as usize != width || stored[1] >> width != 0 {
        return Err(bad("bad header"));
    }
    let mask = stored[1];
    let n = raw_len / width;
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(width);
    let mut pos = 2usize;
    for k in 0..width {
        let len_bytes = stored.get(pos..pos + 4).ok_or_else(|| bad("truncated"))?;
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        pos += 4;
        let body = stored
            .get(pos..pos.checked_add(len).ok_or_else(|| bad("length"))?)
            .ok_or_else(|| bad("truncated"))?;
        pos += len;
        let plane = if mask & (1 << k) != 0 {
            decode(Codec::Zstd, body, n, location)?
        } else if len == n {
            body.to_vec()
        } else {
            return Err(bad("raw plane length mismatch"));
        };
        bufs.push(plane);
    }
    let tail = &stored[pos..];
    if tail.len() != raw_len - n * width {
        return Err(bad("tail length mismatch"));
    }
    let mut out = vec![0u8; raw_len];
    let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
    planes::interleave(&refs, false, &mut out[..n * width]);
    out[n * width..].copy_from_slice(tail);
    Ok(out)
}

/// Decode stored bytes back to the `raw_len` raw bytes (not yet checked against the chunk id).
pub fn decode(
    codec: Codec,
    stored: &[u8],
    raw_len: usize,
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    match codec {
        Codec::Raw => {
            if stored.len() != raw_len {
                return Err(Error::corrupt(location(), "raw chunk length mismatch"));
            }
            Ok(stored.to_vec())
        }
        Codec::Zstd => with_decompressor(location, |d| {
            let out = d
                .decompress(stored, raw_len)
                .map_err(|e| Error::corrupt(location(), format!("zstd: {e}")))?;
            if out.len() != raw_len {
                return Err(Error::corrupt(location(), "decompressed length mismatch"));
            }
            Ok(out)
        }),
        Codec::Planes4 => decode_planes_zstd(4, stored, raw_len, location),
        Codec::Planes2 => decode_planes_zstd(2, stored, raw_len, location),
        Codec::Planes => {
            let mut out = vec![0u8; raw_len];
            decode_planes_into(stored, &mut out, location, &mut |_, _| {})?;
            Ok(out)
        }
        Codec::Delta => Err(Error::corrupt(
            location(),
            "a delta chunk decodes only with its base",
        )),
    }
}

/// Decode stored bytes into `out` (exactly the raw length), handing each piece to `then` as
/// soon as it holds its raw bytes (see `Then`); not yet checked against the chunk id.
pub fn decode_into(
    codec: Codec,
    stored: &[u8],
    out: &mut [u8],
    location: &dyn Fn() -> String,
    then: Then<'_>,
) -> Result<()> {
    match codec {
        Codec::Raw => {
            if stored.len() != out.len() {
                return Err(Error::corrupt(location(), "raw chunk length mismatch"));
            }
            for (i, (p, s)) in out.chunks_mut(PIECE).zip(stored.chunks(PIECE)).enumerate() {
                p.copy_from_slice(s);
                then(i * PIECE, p);
            }
            Ok(())
        }
        Codec::Zstd => {
            with_decompressor(location, |d| {
                let n = d
                    .decompress_to_buffer(stored, &mut *out)
                    .map_err(|e| Error::corrupt(location(), format!("zstd: {e}")))?;
                if n != out.len() {
                    return Err(Error::corrupt(location(), "decompressed length mismatch"));
                }
                Ok(())
            })?;
            in_pieces(out, then);
            Ok(())
        }
        Codec::Planes => decode_planes_into(stored, out, location, then),
        Codec::Planes4 | Codec::Planes2 | Codec::Delta => {
            out.copy_from_slice(&decode(codec, stored, out.len(), location)?);
            in_pieces(out, then);
            Ok(())
        }
    }
}

/// `f` with this thread's zstd decompressor.
fn with_decompressor<T>(
    location: &dyn Fn() -> String,
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> Result<T>,
) -> Result<T> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| Error::corrupt(location(), e.to_string()))?,
            );
        }
        f(d.as_mut().expect("set above"))
    })
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data: random words cut to bytes, normal samples to f32"
)]
mod tests {
    use super::*;

    fn noise(n: usize) -> Vec<u8> {
        crate::test_support::random_bytes(0x9e37_79b9, n)
    }

    #[test]
    fn random_is_stored_raw_text_is_compressed() {
        assert!(encode(&noise(65536), Compression::Auto(1)).is_none());
        let text = b"epoch 1 loss 0.5 accuracy 0.9\n".repeat(2000);
        let (codec, c) = encode(&text, Compression::Auto(1)).expect("text compresses");
        assert_eq!(codec, Codec::Zstd);
        assert!(c.len() < text.len() / 4);
        let back = decode(Codec::Zstd, &c, text.len(), &|| "t".into()).unwrap();
        assert_eq!(back, text);
        assert!(encode(&text, Compression::Off).is_none());
    }

    #[test]
    fn decode_rejects_wrong_lengths_and_garbage() {
        assert!(decode(Codec::Raw, b"abc", 4, &|| "t".into()).is_err());
        assert!(decode(Codec::Zstd, b"not zstd", 10, &|| "t".into()).is_err());
        let text = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".repeat(100);
        let (_, c) = encode(&text, Compression::Always(1)).unwrap();
        assert!(decode(Codec::Zstd, &c, text.len() - 1, &|| "t".into()).is_err());
        assert_eq!(Codec::from_u8(6), None);
    }

    fn weights(n: usize, bf16: bool) -> Vec<u8> {
        let mut rng = crate::test_support::XorShift::new(0x2545_F491);
        let mut out = Vec::new();
        while out.len() < n {
            let mut u = 0f32;
            for _ in 0..4 {
                u += rng.unit_f32();
            }
            let b = ((u - 2.0) * 0.05).to_le_bytes();
            out.extend_from_slice(if bf16 { &b[2..] } else { &b });
        }
        out.truncate(n);
        out
    }

    #[test]
    fn floats_use_planes_and_round_trip_at_any_phase() {
        for (bf16, width) in [(false, 4), (true, 2)] {
            let w = weights(65536 + 7, bf16);
            for phase in 0..4 {
                let chunk = &w[phase..];
                let (c, stored) = encode(chunk, Compression::Auto(1)).expect("floats compress");
                assert_eq!(
                    (c, stored[0] & !ROTATED),
                    (Codec::Planes, width),
                    "bf16={bf16} phase={phase}"
                );
                assert!(stored.len() < chunk.len() * 15 / 16);
                let back = decode(c, &stored, chunk.len(), &|| "t".into()).unwrap();
                assert_eq!(back, chunk);
                assert!(decode(c, &stored, chunk.len() + 1, &|| "t".into()).is_err());
                assert!(
                    decode(c, &stored[..stored.len() - 1], chunk.len(), &|| "t".into()).is_err()
                );
            }
        }
    }

    /// The plane method of each plane of a `Codec::Planes` record.
    fn methods(stored: &[u8]) -> Vec<u8> {
        let mut pos = 1;
        (0..stored[0] & !ROTATED)
            .map(|_| {
                let m = stored[pos];
                pos +=
                    5 + u32::from_le_bytes(stored[pos + 1..pos + 5].try_into().unwrap()) as usize;
                m
            })
            .collect()
    }

    #[test]
    fn each_plane_gets_the_method_that_pays() {
        // fp32 weights: the sign and exponent plane Huffman-coded, a noise plane raw.
        let mut w = weights(1 << 16, false);
        let mut rng = crate::test_support::XorShift::new(9);
        for e in w.chunks_exact_mut(4) {
            e[0] = rng.next_u64() as u8;
        }
        let (_, stored) = encode(&w, Compression::Auto(1)).unwrap();
        let m = methods(&stored);
        assert_eq!(m[0], PlaneMethod::Raw as u8, "{m:?}");
        assert_eq!(m[3], PlaneMethod::Huffman as u8, "{m:?}");
        // The difference of two nearby versions: high bytes mostly zero with runs (zstd), a
        // plane of one value (repeat).
        let mut rng = crate::test_support::XorShift::new(5);
        let mut d = vec![0u8; 1 << 16];
        for (i, e) in d.chunks_exact_mut(4).enumerate() {
            e[0] = rng.next_u64() as u8;
            e[1] = rng.next_u64() as u8 & 15;
            e[2] = if i % 300 == 0 { 1 } else { 0 };
        }
        let (c, stored) = encode(&d, Compression::Auto(1)).unwrap();
        assert_eq!(c, Codec::Planes);
        let m = methods(&stored);
        assert_eq!(
            &m[1..],
            &[
                PlaneMethod::Huffman as u8,
                PlaneMethod::Zstd as u8,
                PlaneMethod::Repeat as u8
            ],
            "{m:?}"
        );
        assert_eq!(decode(c, &stored, d.len(), &|| "t".into()).unwrap(), d);
        // Damage in the plane headers is an error.
        for (at, v) in [(0, 3u8), (1, 9), (2, 0xff)] {
            let mut bad = stored.clone();
            bad[at] = v;
            assert!(
                decode(c, &bad, d.len(), &|| "t".into()).is_err(),
                "byte {at}"
            );
        }
    }

    #[test]
    fn float_elements_are_rotated_when_it_pays() {
        // Normal weights with full mantissas: the whole exponent in one byte codes smaller.
        let mut rng = crate::test_support::XorShift::new(21);
        let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + f64::MIN_POSITIVE;
        let mut fp32 = vec![];
        while fp32.len() < 1 << 18 {
            let z = (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos();
            fp32.extend_from_slice(&((z * 0.02) as f32).to_le_bytes());
        }
        let bf16: Vec<u8> = fp32.chunks_exact(4).flat_map(|e| [e[2], e[3]]).collect();
        for (data, width) in [(&fp32, 4), (&bf16, 2)] {
            let (c, stored) = encode(data, Compression::Auto(1)).unwrap();
            assert_eq!((c, stored[0]), (Codec::Planes, width | ROTATED));
            assert_eq!(
                decode(c, &stored, data.len(), &|| "t".into()).unwrap(),
                *data
            );
            // Smaller than the same planes unrotated.
            let hs = sample_stats(data).0;
            let hs = if width == 4 {
                hs.to_vec()
            } else {
                vec![(hs[0] + hs[2]) / 2.0, (hs[1] + hs[3]) / 2.0]
            };
            let (_, plain) = encode_planes(data, usize::from(width), &hs, false).unwrap();
            assert_eq!(plain[0], width);
            assert!(
                stored.len() < plain.len(),
                "{} >= {}",
                stored.len(),
                plain.len()
            );
        }
    }

    #[test]
    fn planes_of_earlier_versions_still_decode() {
        // Codec 2 as earlier versions wrote it: width, mask, then each plane raw or zstd.
        let w = weights(4096 + 2, false);
        let n = w.len() / 4;
        let mut planes = vec![];
        planes::split(&w, 4, false, &mut planes);
        let mut stored = vec![4u8, 0b1000];
        for (k, p) in planes.iter().enumerate() {
            let body = if k == 3 {
                zstd::bulk::compress(p, 3).unwrap()
            } else {
                p.clone()
            };
            stored.extend_from_slice(&(body.len() as u32).to_le_bytes());
            stored.extend_from_slice(&body);
        }
        stored.extend_from_slice(&w[n * 4..]);
        assert_eq!(
            decode(Codec::Planes4, &stored, w.len(), &|| "t".into()).unwrap(),
            w
        );
    }

    #[test]
    #[allow(
        clippy::float_cmp,
        reason = "the entropy of one repeated byte is exactly 0.0 (no term is summed)"
    )]
    fn entropy_bounds() {
        assert_eq!(sample_entropy(&[7u8; 10000]), 0.0);
        assert!(sample_entropy(&noise(1 << 20)) > 7.9);
    }
}
