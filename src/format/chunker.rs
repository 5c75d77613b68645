//! Content-defined chunking (FastCDC 2020, normalization level 1). No I/O here.
//!
//! The chunker works on a window of a stream: it reports every cut whose position cannot depend
//! on bytes past the window, and how far it got. The caller keeps the rest and prepends it to the
//! next window. Because a cut depends only on bytes from the chunk's start, chunking a stream
//! window by window gives exactly the cuts of chunking the whole file at once.

use fastcdc::v2020::{self, Normalization};

use crate::error::{Error, Result};

/// Chunk size bounds. Defaults: min 16 KiB, average 64 KiB, max 256 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Smallest chunk (bytes), except at the end of a file.
    pub min: usize,
    /// Average chunk size the cut points aim for (bytes).
    pub avg: usize,
    /// Largest chunk (bytes).
    pub max: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

/// Largest chunk any decoder accepts (a bound for corrupt lengths, above every valid `max`).
pub const MAX_CHUNK_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Chunker {
    cfg: ChunkerConfig,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    pub fn new(cfg: ChunkerConfig) -> Result<Chunker> {
        let ok = (64..=1 << 20).contains(&cfg.min)
            && (256..=4 << 20).contains(&cfg.avg)
            && (1024..=MAX_CHUNK_LIMIT).contains(&cfg.max)
            && cfg.min < cfg.avg
            && cfg.avg < cfg.max
            && cfg.min.is_multiple_of(2)
            && cfg.avg.is_multiple_of(2)
            && cfg.max.is_multiple_of(2);
        if !ok {
            return Err(Error::invalid(
                "chunker config",
                format!("{cfg:?}"),
                "need even sizes with 64 <= min < avg < max <= 16 MiB",
            ));
        }
        let (mask_s, mask_l) = v2020::select_masks(cfg.avg, Normalization::Level1);
        Ok(Chunker {
            cfg,
            mask_s,
            mask_l,
        })
    }

    pub fn config(&self) -> ChunkerConfig {
        self.cfg
    }

    /// Length of the chunk starting at `data[0]`, or `None` when more bytes are needed
    /// (fewer than `max` bytes are left and the stream has not ended).
    pub fn next_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        if data.is_empty() || (data.len() < self.cfg.max && !eof) {
            return None;
        }
        let (_, len) = v2020::cut(
            data,
            self.cfg.min,
            self.cfg.avg,
            self.cfg.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        Some(len)
    }

    /// Push the lengths of all chunks that are final within `window` to `out`; returns the
    /// number of bytes they cover. With `eof`, everything is covered.
    pub fn cuts(&self, window: &[u8], eof: bool, out: &mut Vec<usize>) -> usize {
        let mut pos = 0;
        while let Some(len) = self.next_cut(&window[pos..], eof) {
            out.push(len);
            pos += len;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(ChunkerConfig {
            min: 256,
            avg: 1024,
            max: 4096,
        })
        .unwrap()
    }

    fn whole(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        assert_eq!(c.cuts(data, true, &mut v), data.len());
        v
    }

    fn streamed(c: &Chunker, data: &[u8], window: usize) -> Vec<usize> {
        let mut v = Vec::new();
        let mut start = 0;
        let mut end = 0;
        loop {
            end = (end + window).min(data.len());
            let eof = end == data.len();
            start += c.cuts(&data[start..end], eof, &mut v);
            if eof {
                break;
            }
        }
        assert_eq!(start, data.len());
        v
    }

    /// The low byte of each step: the stream the golden boundaries were computed from.
    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut r = crate::test_support::XorShift::from_state(seed | 1);
        (0..n).map(|_| r.next_u64().to_le_bytes()[0]).collect()
    }

    #[test]
    fn rejects_bad_config() {
        assert!(
            Chunker::new(ChunkerConfig {
                min: 100,
                avg: 50,
                max: 200
            })
            .is_err()
        );
        assert!(
            Chunker::new(ChunkerConfig {
                min: 101,
                avg: 1024,
                max: 4096
            })
            .is_err()
        );
        assert!(Chunker::new(ChunkerConfig::default()).is_ok());
    }

    #[test]
    fn golden_boundaries_default_config() {
        // Pins the cut points of fastcdc 5.0.0 v2020 level 1: a change here breaks dedup
        // against every existing store.
        let c = Chunker::new(ChunkerConfig::default()).unwrap();
        let data = pseudo_random(1 << 20, 42);
        let cuts = whole(&c, &data);
        let fp = blake3::hash(
            &cuts
                .iter()
                .flat_map(|l| (*l as u64).to_le_bytes())
                .collect::<Vec<_>>(),
        );
        assert_eq!(cuts.iter().sum::<usize>(), 1 << 20);
        assert_eq!(&fp.to_hex()[..16], GOLDEN, "cuts: {cuts:?}");
    }
    const GOLDEN: &str = "d94be20822498b7d";

    #[test]
    fn insertion_at_front_keeps_later_cuts() {
        let c = Chunker::new(ChunkerConfig::default()).unwrap();
        let data = pseudo_random(4 << 20, 7);
        let mut shifted = b"a few inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let ends = |cuts: Vec<usize>, off: usize| -> std::collections::HashSet<usize> {
            cuts.iter()
                .scan(0, |p, l| {
                    *p += l;
                    Some(*p - off)
                })
                .collect()
        };
        let a = ends(whole(&c, &data), 0);
        let b = ends(whole(&c, &shifted), 20);
        let common = a.intersection(&b).count();
        assert!(
            common + 3 >= a.len(),
            "only {common} of {} cuts survive",
            a.len()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_concatenate_are_bounded_and_stream_stable(
            len in 0usize..40_000, seed in any::<u64>(), window in 4096usize..20_000, zeros in any::<bool>()
        ) {
            let c = small();
            let data = if zeros { vec![0u8; len] } else { pseudo_random(len, seed) };
            let cuts = whole(&c, &data);
            prop_assert_eq!(cuts.iter().sum::<usize>(), len);
            for (i, l) in cuts.iter().enumerate() {
                prop_assert!(*l <= 4096);
                if i + 1 < cuts.len() { prop_assert!(*l > 256, "chunk {} is {}", i, l); }
            }
            prop_assert_eq!(&cuts, &whole(&c, &data));
            prop_assert_eq!(cuts, streamed(&c, &data, window));
        }
    }
}
