//! Per-chunk compression: zstd when it pays, raw otherwise. No I/O here.
//!
//! Deciding must be cheaper than trying: `Compression::Auto` first estimates the order-0 entropy
//! of a 4 KiB sample of the chunk. zstd's gain on data without long matches (weights, already
//! compressed media) is close to what entropy coding alone gives, `(8 - H) / 8`; when that
//! predicts less than 5 %, the chunk is stored raw without calling zstd at all. Otherwise the
//! chunk is compressed, and kept compressed only if it saved at least 1/16 of its size (below
//! that the saving does not pay for decompressing on every read).

use std::cell::RefCell;

use crate::error::{Error, Result};

/// How a chunk's bytes are stored in a pack (the byte value is part of the pack format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
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

const SAMPLE_SPAN: usize = 1024;
const SAMPLE_SPANS: usize = 4;

/// Order-0 entropy in bits per byte of up to 4 KiB sampled evenly from `data`.
pub fn sample_entropy(data: &[u8]) -> f64 {
    let mut hist = [0u32; 256];
    let mut n = 0u32;
    if data.len() <= SAMPLE_SPAN * SAMPLE_SPANS {
        for &b in data {
            hist[b as usize] += 1;
        }
        n = data.len() as u32;
    } else {
        let stride = data.len() / SAMPLE_SPANS;
        for i in 0..SAMPLE_SPANS {
            for &b in &data[i * stride..i * stride + SAMPLE_SPAN] {
                hist[b as usize] += 1;
            }
            n += SAMPLE_SPAN as u32;
        }
    }
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

thread_local! {
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

/// Encode a chunk: `Some(compressed)` when compression pays under `policy`, else `None` (store raw).
pub fn encode(data: &[u8], policy: Compression) -> Option<Vec<u8>> {
    let level = match policy {
        Compression::Off => return None,
        Compression::Auto(level) => {
            if data.len() < 64 || (8.0 - sample_entropy(data)) / 8.0 < 0.05 {
                return None;
            }
            level
        }
        Compression::Always(level) => level,
    };
    let out = zstd_compress(data, level)?;
    (out.len() + data.len() / 16 <= data.len()).then_some(out)
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
        Codec::Zstd => DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| Error::corrupt(location(), e.to_string()))?,
                );
            }
            let out = d
                .as_mut()
                .expect("set above")
                .decompress(stored, raw_len)
                .map_err(|e| Error::corrupt(location(), format!("zstd: {e}")))?;
            if out.len() != raw_len {
                return Err(Error::corrupt(location(), "decompressed length mismatch"));
            }
            Ok(out)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn random_is_stored_raw_text_is_compressed() {
        assert!(encode(&noise(65536), Compression::Auto(1)).is_none());
        let text = b"epoch 1 loss 0.5 accuracy 0.9\n".repeat(2000);
        let c = encode(&text, Compression::Auto(1)).expect("text compresses");
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
        let c = encode(&text, Compression::Always(1)).unwrap();
        assert!(decode(Codec::Zstd, &c, text.len() - 1, &|| "t".into()).is_err());
        assert_eq!(Codec::from_u8(2), None);
    }

    #[test]
    fn entropy_bounds() {
        assert_eq!(sample_entropy(&[7u8; 10000]), 0.0);
        assert!(sample_entropy(&noise(1 << 20)) > 7.9);
    }
}
