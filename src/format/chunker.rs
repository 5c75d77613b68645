//! Content-defined chunking. No I/O here.
//!
//! Two algorithms, both part of a store's format (recorded in its `FORMAT` file, so a store
//! keeps cutting files where it always did):
//!
//! - **hash16**, the default of new stores: FastCDC's normalized chunking, but a position
//!   qualifies as a cut by a hash of the 16 bytes before it rather than by a rolling gear
//!   hash. Positions are independent of each other, so 32 are tested at once with AVX2 (the
//!   portable code gives the same cuts).
//! - **FastCDC 2020** (normalization level 1), for stores made before hash16.
//!
//! The chunker works on a window of a stream: it reports every cut whose position cannot depend
//! on bytes past the window, and how far it got. The caller keeps the rest and prepends it to the
//! next window. Because a cut depends only on bytes from the chunk's start, chunking a stream
//! window by window gives exactly the cuts of chunking the whole file at once.

use fastcdc::v2020::{self, Normalization};

use crate::error::{Error, Result};

/// The content-defined chunking algorithm of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChunkAlgorithm {
    /// The default of new stores. A chunk may end after byte `e` when a hash of the 16
    /// bytes ending at `e` has enough top bits clear: more before `avg` (harder), fewer after
    /// (easier), never before `min`, always at `max`. This is FastCDC's normalized chunking
    /// with a hash of a fixed 16-byte window instead of a rolling one, so every position is
    /// tested on its own, 32 at a time with AVX2 (a one-multiply filter on the last four
    /// bytes passes one position in 256; only those get the full hash).
    #[default]
    Hash16,
    /// FastCDC 2020 (gear hash, normalization level 1): chunks between `min` and `max`,
    /// averaging `avg`. Stores made before hash16 was added keep it.
    FastCdc2020,
}

impl ChunkAlgorithm {
    /// The name in a store's `FORMAT` file.
    pub fn name(self) -> &'static str {
        match self {
            ChunkAlgorithm::Hash16 => "hash16",
            ChunkAlgorithm::FastCdc2020 => "fastcdc-2020",
        }
    }
    /// The algorithm a `FORMAT` file names, if this version knows it.
    pub fn from_name(name: &str) -> Option<ChunkAlgorithm> {
        match name {
            "hash16" => Some(ChunkAlgorithm::Hash16),
            "fastcdc-2020" => Some(ChunkAlgorithm::FastCdc2020),
            _ => None,
        }
    }
}

/// Chunking algorithm and size bounds. Defaults: hash16, min 16 KiB, average 64 KiB, max
/// 256 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// How cut points are found.
    pub algorithm: ChunkAlgorithm,
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
            algorithm: ChunkAlgorithm::default(),
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

impl ChunkerConfig {
    /// The same sizes with FastCDC 2020: how stores without a recorded chunker cut files.
    pub fn fastcdc(self) -> ChunkerConfig {
        ChunkerConfig {
            algorithm: ChunkAlgorithm::FastCdc2020,
            ..self
        }
    }
    /// As a store's `FORMAT` file records it (and `ml-dash chunker --json` prints it):
    /// `{"algorithm","min","avg","max"}`.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "algorithm": self.algorithm.name(),
            "min": self.min,
            "avg": self.avg,
            "max": self.max,
        })
    }
    /// Read back what `to_json` wrote; the error says what is wrong (an unknown algorithm, a
    /// missing or bad field). Sizes are not checked here: `Chunker::new` does.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<ChunkerConfig, String> {
        let size = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("chunker {k} is {}", v[k]))
        };
        let name = v
            .get("algorithm")
            .and_then(|a| a.as_str())
            .ok_or("chunker algorithm missing")?;
        let algorithm = ChunkAlgorithm::from_name(name).ok_or_else(|| {
            format!(
                "the store cuts files with chunker {name:?}, which this version of ml-dash \
                 does not know (a newer version made it)"
            )
        })?;
        Ok(ChunkerConfig {
            algorithm,
            min: size("min")?,
            avg: size("avg")?,
            max: size("max")?,
        })
    }
}

/// Largest chunk any decoder accepts (a bound for corrupt lengths, above every valid `max`).
pub const MAX_CHUNK_LIMIT: usize = 16 * 1024 * 1024;

/// Which instructions the hash16 scan uses: the best the CPU has, found at run time. Every kind
/// finds the same cut points (tests compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// 32 bytes per instruction (x86-64 with AVX2 and BMI2).
    Avx2,
    /// Portable code, one position at a time.
    Portable,
}

impl Simd {
    /// The fastest kind this CPU runs.
    pub fn detect() -> Simd {
        *Simd::available().last().expect("portable code always runs")
    }
    /// Every kind this CPU runs, slowest first (for tests and benchmarks).
    pub fn available() -> Vec<Simd> {
        let mut v = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi2")
        {
            v.push(Simd::Avx2);
        }
        v
    }
}

#[derive(Clone, Debug)]
pub struct Chunker {
    cfg: ChunkerConfig,
    mask_s: u64,
    mask_l: u64,
    /// `Hash16`: the top bits of the full hash that must be clear before `avg` and from `avg`
    /// on, so that with the filter a position qualifies with probability 1 / (2 `avg`)
    /// before and 2 / `avg` after (FastCDC's normalization level 1).
    top_s: u32,
    top_l: u32,
    simd: Simd,
}

impl Chunker {
    pub fn new(cfg: ChunkerConfig) -> Result<Chunker> {
        Chunker::with_simd(cfg, Simd::detect())
    }

    /// A chunker whose hash16 scan uses `simd` (which the CPU must run: see `Simd::available`).
    pub fn with_simd(cfg: ChunkerConfig, simd: Simd) -> Result<Chunker> {
        let ok = (64..=1 << 20).contains(&cfg.min)
            && (256..=4 << 20).contains(&cfg.avg)
            && (1024..=MAX_CHUNK_LIMIT).contains(&cfg.max)
            && cfg.min < cfg.avg
            && cfg.avg < cfg.max
            && cfg.min.is_multiple_of(2)
            && cfg.avg.is_multiple_of(2)
            && cfg.max.is_multiple_of(2)
            && (cfg.algorithm != ChunkAlgorithm::Hash16 || cfg.avg >= HASH16_MIN_AVG);
        if !ok {
            return Err(Error::invalid(
                "chunker config",
                format!("{cfg:?}"),
                "need even sizes with 64 <= min < avg < max <= 16 MiB (hash16: avg >= 512)",
            ));
        }
        if !Simd::available().contains(&simd) {
            return Err(Error::invalid(
                "chunker instructions",
                format!("{simd:?}"),
                "this CPU does not run them",
            ));
        }
        let (mask_s, mask_l) = v2020::select_masks(cfg.avg, Normalization::Level1);
        // hash16: avg >= 512, so log2(avg) - 1 - the filter's 8 bits is at least 0.
        let (top_s, top_l) = match cfg.avg.ilog2().checked_sub(1 + HASH16_FILTER_BITS) {
            Some(l) if cfg.algorithm == ChunkAlgorithm::Hash16 => {
                (!(u32::MAX >> (l + 2)), !(u32::MAX >> l))
            }
            _ => (0, 0),
        };
        Ok(Chunker {
            cfg,
            mask_s,
            mask_l,
            top_s,
            top_l,
            simd,
        })
    }

    pub fn config(&self) -> ChunkerConfig {
        self.cfg
    }

    /// Length of the chunk starting at `data[0]`, or `None` when more bytes are needed (the
    /// cut may lie past `data` and the stream has not ended).
    pub fn next_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        match self.cfg.algorithm {
            ChunkAlgorithm::Hash16 => self.hash16_cut(data, eof),
            ChunkAlgorithm::FastCdc2020 => self.fastcdc_cut(data, eof),
        }
    }

    fn fastcdc_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
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

    /// `Hash16`: the first end `e` from `min - 1` to `avg - 1` (a chunk of `min` to `avg`
    /// bytes) that passes the filter and whose hash clears `top_s`, else the first from
    /// `avg - 1` on clearing `top_l`, else `max`. A cut depends only
    /// on the 16 bytes before it (and the chunk's start), so it is final as soon as it is
    /// found.
    fn hash16_cut(&self, data: &[u8], eof: bool) -> Option<usize> {
        let ChunkerConfig { min, avg, max, .. } = self.cfg;
        if data.is_empty() {
            return None;
        }
        if data.len() <= min {
            return eof.then_some(data.len());
        }
        let end = data.len().min(avg);
        if let Some(e) = find_hash16(self.simd, data, min - 1, end, self.top_s) {
            return Some(e + 1);
        }
        if data.len() > avg {
            let end = data.len().min(max);
            if let Some(e) = find_hash16(self.simd, data, avg - 1, end, self.top_l) {
                return Some(e + 1);
            }
        }
        if data.len() >= max {
            Some(max)
        } else if eof {
            Some(data.len())
        } else {
            None
        }
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

/// `Hash16`'s filter: one multiply of the four bytes ending at `data[e]`; its top
/// `HASH16_FILTER_BITS` bits must be clear.
#[inline]
fn hash16_filter(word: u32) -> bool {
    (word ^ HASH16_C0).wrapping_mul(HASH16_K0) & HASH16_FILTER_TOP == 0
}

/// `Hash16`'s hash of the 16 bytes ending at `data[e]` (`e >= 15`): four 32-bit words folded
/// in with a multiply each, so that the top bits depend on every byte.
#[inline]
fn hash16(data: &[u8], e: usize) -> u32 {
    let w = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    let h = w(e - 15).wrapping_mul(HASH16_K1);
    let h = (h ^ w(e - 11)).wrapping_mul(HASH16_K2);
    let h = (h ^ w(e - 7)).wrapping_mul(HASH16_K1);
    (h ^ w(e - 3)).wrapping_mul(HASH16_K2)
}

/// Whether a chunk may end after `data[e]`.
#[inline]
fn hash16_qualifies(data: &[u8], e: usize, top: u32) -> bool {
    let last = u32::from_le_bytes(data[e - 3..=e].try_into().expect("4 bytes"));
    hash16_filter(last) && hash16(data, e) & top == 0
}

const HASH16_FILTER_BITS: u32 = 8;
/// The smallest `avg` hash16 takes: below it the filter alone would be rarer than a cut.
const HASH16_MIN_AVG: usize = 512;
const HASH16_FILTER_TOP: u32 = !(u32::MAX >> HASH16_FILTER_BITS);
const HASH16_K0: u32 = 0xC2B2_AE3D;
/// Mixed into the filter so that runs of zero bytes never qualify: they are cut at `max`,
/// not into `min`-sized pieces.
const HASH16_C0: u32 = 0x2545_F491;
const HASH16_K1: u32 = 0x9E37_79B1;
const HASH16_K2: u32 = 0x85EB_CA77;

/// The first `e` in `from..to` (`from >= 15`) where a chunk may end, for the full hash's `top`.
fn find_hash16(simd: Simd, data: &[u8], from: usize, to: usize, top: u32) -> Option<usize> {
    match simd {
        // SAFETY: `Chunker::with_simd` admits only kinds this CPU runs.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::find_hash16_avx2(data, from, to, top) },
        _ => find_hash16_portable(data, from, to, top),
    }
}

fn find_hash16_portable(data: &[u8], from: usize, to: usize, top: u32) -> Option<usize> {
    (from..to).find(|&e| hash16_qualifies(data, e, top))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_castsi256_ps, _mm256_cmpeq_epi32, _mm256_loadu_si256,
        _mm256_movemask_ps, _mm256_mullo_epi32, _mm256_or_si256, _mm256_set1_epi32,
        _mm256_setzero_si256, _mm256_testz_si256, _mm256_xor_si256, _pdep_u32,
    };

    /// 32 ends a step. Four loads at byte offsets 0..3 hold, in their eight 32-bit lanes, the
    /// last four bytes of every end `r + 4m` (lane `m` of load `r`): one multiply per load
    /// filters all 32, and the few that pass (one in 256) get the full hash in order.
    #[target_feature(enable = "avx2,bmi2")]
    pub(super) fn find_hash16_avx2(data: &[u8], from: usize, to: usize, top: u32) -> Option<usize> {
        let k0 = _mm256_set1_epi32(i32::from_ne_bytes(super::HASH16_K0.to_ne_bytes()));
        let c0 = _mm256_set1_epi32(i32::from_ne_bytes(super::HASH16_C0.to_ne_bytes()));
        let t = _mm256_set1_epi32(i32::from_ne_bytes(super::HASH16_FILTER_TOP.to_ne_bytes()));
        let zero = _mm256_setzero_si256();
        let mut e0 = from;
        // Ends e0..e0 + 32 filter on bytes e0 - 3 .. e0 + 32.
        while e0 + 32 <= to {
            let p = data[e0 - 3..e0 + 32].as_ptr();
            let hit = |r: usize| {
                // SAFETY: bytes p + r .. p + r + 32 lie in the 35 bytes checked above (r <= 3).
                let w = unsafe { _mm256_loadu_si256(p.add(r).cast::<__m256i>()) };
                let h = _mm256_mullo_epi32(_mm256_xor_si256(w, c0), k0);
                _mm256_cmpeq_epi32(_mm256_and_si256(h, t), zero)
            };
            let (h0, h1, h2, h3) = (hit(0), hit(1), hit(2), hit(3));
            let any = _mm256_or_si256(_mm256_or_si256(h0, h1), _mm256_or_si256(h2, h3));
            if _mm256_testz_si256(any, any) == 1 {
                e0 += 32;
                continue;
            }
            let lanes = |h: __m256i| _mm256_movemask_ps(_mm256_castsi256_ps(h)).cast_unsigned();
            let mut passed = _pdep_u32(lanes(h0), 0x1111_1111)
                | _pdep_u32(lanes(h1), 0x2222_2222)
                | _pdep_u32(lanes(h2), 0x4444_4444)
                | _pdep_u32(lanes(h3), 0x8888_8888);
            while passed != 0 {
                let e = e0 + passed.trailing_zeros() as usize;
                if super::hash16(data, e) & top == 0 {
                    return Some(e);
                }
                passed &= passed - 1;
            }
            e0 += 32;
        }
        super::find_hash16_portable(data, e0, to, top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALGORITHMS: [ChunkAlgorithm; 2] = [ChunkAlgorithm::Hash16, ChunkAlgorithm::FastCdc2020];

    fn small(algorithm: ChunkAlgorithm, simd: Simd) -> Chunker {
        Chunker::with_simd(
            ChunkerConfig {
                algorithm,
                min: 256,
                avg: 1024,
                max: 4096,
            },
            simd,
        )
        .unwrap()
    }

    fn default_of(algorithm: ChunkAlgorithm) -> Chunker {
        Chunker::new(ChunkerConfig {
            algorithm,
            ..ChunkerConfig::default()
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

    /// Bytes of narrow range with rare peaks: where a threshold scan runs long.
    fn skewed(n: usize, seed: u64) -> Vec<u8> {
        let mut r = crate::test_support::XorShift::from_state(seed | 1);
        (0..n)
            .map(|_| {
                let x = r.next_u64();
                let b = x.to_le_bytes();
                if x.is_multiple_of(5000) {
                    b[1]
                } else {
                    0x20 + b[0] % 0x5F
                }
            })
            .collect()
    }

    fn fingerprint(cuts: &[usize]) -> String {
        let h = blake3::hash(
            &cuts
                .iter()
                .flat_map(|l| (*l as u64).to_le_bytes())
                .collect::<Vec<_>>(),
        );
        h.to_hex()[..16].to_string()
    }

    #[test]
    fn rejects_bad_config() {
        for algorithm in ALGORITHMS {
            for (min, avg, max) in [(100, 50, 200), (101, 1024, 4096), (256, 1024, 1 << 25)] {
                let cfg = ChunkerConfig {
                    algorithm,
                    min,
                    avg,
                    max,
                };
                assert!(Chunker::new(cfg).is_err(), "{cfg:?}");
            }
        }
        assert!(Chunker::new(ChunkerConfig::default()).is_ok());
        // hash16 needs avg >= 512; FastCDC keeps taking smaller ones.
        let small_avg = ChunkerConfig {
            algorithm: ChunkAlgorithm::Hash16,
            min: 64,
            avg: 256,
            max: 1024,
        };
        assert!(Chunker::new(small_avg).is_err());
        assert!(Chunker::new(small_avg.fastcdc()).is_ok());
        let c = Chunker::new(ChunkerConfig {
            avg: 512,
            ..small_avg
        })
        .unwrap();
        assert_eq!((c.top_s, c.top_l), (0xC000_0000, 0));
    }

    #[test]
    fn names_round_trip() {
        for a in ALGORITHMS {
            assert_eq!(ChunkAlgorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(ChunkAlgorithm::from_name("gear"), None);
        let c = ChunkerConfig::default();
        assert_eq!(ChunkerConfig::from_json(&c.to_json()), Ok(c));
        assert_eq!(
            ChunkerConfig::from_json(&c.fastcdc().to_json()),
            Ok(c.fastcdc())
        );
    }

    /// Pins the cut points of both algorithms: a change here breaks dedup against every
    /// existing store of that algorithm.
    #[test]
    fn golden_boundaries_default_config() {
        let data = pseudo_random(1 << 20, 42);
        for (algorithm, golden) in [
            (ChunkAlgorithm::FastCdc2020, "d94be20822498b7d"),
            (ChunkAlgorithm::Hash16, HASH16_GOLDEN),
        ] {
            for simd in Simd::available() {
                let c = Chunker::with_simd(
                    ChunkerConfig {
                        algorithm,
                        ..ChunkerConfig::default()
                    },
                    simd,
                )
                .unwrap();
                let cuts = whole(&c, &data);
                assert_eq!(cuts.iter().sum::<usize>(), 1 << 20);
                assert_eq!(
                    fingerprint(&cuts),
                    golden,
                    "{algorithm:?} {simd:?}: {cuts:?}"
                );
            }
        }
    }
    const HASH16_GOLDEN: &str = "73b201120dd7aef3";

    #[test]
    fn hash16_cuts_are_final_when_found_and_bounded() {
        let c = small(ChunkAlgorithm::Hash16, Simd::detect());
        let data = pseudo_random(1 << 16, 5);
        let cuts = whole(&c, &data);
        let first = cuts[0];
        assert!((256..4096).contains(&first), "{cuts:?}");
        // Not final until the byte that ends it is in view, then final at once.
        assert_eq!(c.next_cut(&data[..first - 1], false), None);
        assert_eq!(c.next_cut(&data[..first], false), Some(first));
        // Short ends.
        assert_eq!(c.next_cut(&data[..200], true), Some(200));
        assert_eq!(c.next_cut(&data[..200], false), None);
        assert_eq!(c.next_cut(&[], true), None);
        // Runs of zeros never qualify: cut at max, like FastCDC.
        let zeros = whole(&c, &vec![0u8; 20_000]);
        assert_eq!(zeros, [4096, 4096, 4096, 4096, 3616]);
    }

    #[test]
    fn every_instruction_set_finds_the_same_cuts() {
        let mut r = crate::test_support::XorShift::from_state(99);
        for _ in 0..3000 {
            let len = 16 + usize::try_from(r.next_u64() % 600).unwrap();
            let data: Vec<u8> = (0..len)
                .map(|_| match r.next_u64() % 3 {
                    0 => 0x80,
                    1 => r.next_u64().to_le_bytes()[0],
                    _ => r.next_u64().to_le_bytes()[0] % 0x90,
                })
                .collect();
            let from = 15 + usize::try_from(r.next_u64() % (len as u64 - 15)).unwrap();
            let to = from + usize::try_from(r.next_u64() % (len - from + 1) as u64).unwrap();
            let top = !(u32::MAX >> (r.next_u64() % 4));
            let want = find_hash16_portable(&data, from, to, top);
            for simd in Simd::available() {
                assert_eq!(find_hash16(simd, &data, from, to, top), want, "{simd:?}");
            }
        }
    }

    #[test]
    fn insertion_at_front_keeps_later_cuts() {
        for algorithm in ALGORITHMS {
            let c = default_of(algorithm);
            for data in [pseudo_random(4 << 20, 7), skewed(4 << 20, 7)] {
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
                    "{algorithm:?}: only {common} of {} cuts survive",
                    a.len()
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_concatenate_are_bounded_and_stream_stable(
            len in 0usize..40_000, seed in any::<u64>(), window in 4096usize..20_000,
            kind in 0u8..3, which in 0usize..2
        ) {
            let algorithm = ALGORITHMS[which];
            let data = match kind {
                0 => vec![0u8; len],
                1 => pseudo_random(len, seed),
                _ => skewed(len, seed),
            };
            let c = small(algorithm, Simd::detect());
            let cuts = whole(&c, &data);
            prop_assert_eq!(cuts.iter().sum::<usize>(), len);
            for (i, l) in cuts.iter().enumerate() {
                prop_assert!(*l <= 4096);
                if i + 1 < cuts.len() { prop_assert!(*l >= 256, "chunk {} is {}", i, l); }
            }
            for simd in Simd::available() {
                prop_assert_eq!(&cuts, &whole(&small(algorithm, simd), &data));
            }
            prop_assert_eq!(cuts, streamed(&c, &data, window));
        }
    }
}
