//! Chunker: chunks concatenate to the input, respect the bounds, every instruction set finds
//! the same cuts, and streaming in windows of any size gives the same cuts as chunking at once.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::testing::chunker::{Chunker, Simd};
use ml_dash::{ChunkAlgorithm, ChunkerConfig};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let window = 1024 + data[0] as usize * 64;
    let cfg = ChunkerConfig {
        algorithm: if data[1] & 1 == 0 {
            ChunkAlgorithm::Hash16
        } else {
            ChunkAlgorithm::FastCdc2020
        },
        min: 128,
        avg: 512,
        max: 2048,
    };
    let c = Chunker::new(cfg).unwrap();
    let mut whole = Vec::new();
    assert_eq!(c.cuts(data, true, &mut whole), data.len());
    assert!(whole.iter().all(|&l| l <= 2048));
    for simd in Simd::available() {
        let mut again = Vec::new();
        Chunker::with_simd(cfg, simd)
            .unwrap()
            .cuts(data, true, &mut again);
        assert_eq!(whole, again, "{simd:?}");
    }
    let mut streamed = Vec::new();
    let (mut start, mut end) = (0, 0);
    loop {
        end = (end + window).min(data.len());
        let eof = end == data.len();
        start += c.cuts(&data[start..end], eof, &mut streamed);
        if eof {
            break;
        }
    }
    assert_eq!(whole, streamed);
});
