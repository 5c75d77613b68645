//! Tensor files and deltas: any bytes either parse as a safetensors layout whose tensors are
//! sorted, disjoint and after the header, or are refused (zip archives likewise, entries inside
//! the input); the grid cuts any stream into pieces
//! that cover it exactly, the same in any window size. Delta records: any stored bytes either
//! parse (then decode without panicking) or are refused, and a delta of two halves of the input
//! decodes back to the first.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ml_dash::ChunkId;
use ml_dash::Compression;
use ml_dash::testing::delta::{self, Transform};
use ml_dash::testing::tensors::{Grid, Layout};

fuzz_target!(|data: &[u8]| {
    if let Some(l) = Layout::safetensors(data) {
        assert!(l.tensors.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(
            l.tensors
                .iter()
                .all(|t| t.start >= l.data_start && t.start <= t.end)
        );
        let piece = 1 + data.len() % 97;
        let grid = Grid::new(l, piece);
        let mut whole = Vec::new();
        assert_eq!(grid.cuts(0, data, true, &mut whole), data.len());
        assert!(whole.iter().all(|(len, _)| *len > 0 && *len <= piece));
        assert_eq!(whole.iter().map(|c| c.0).sum::<usize>(), data.len());
        let mut windowed = Vec::new();
        let mut at = 0usize;
        while at < data.len() {
            let end = (at + 2 * piece).min(data.len());
            let used = grid.cuts(at as u64, &data[at..end], end == data.len(), &mut windowed);
            assert!(used > 0);
            at += used;
        }
        assert_eq!(windowed, whole);
    }

    if let Some(l) = Layout::zip(&mut std::io::Cursor::new(data), data.len() as u64) {
        assert!(l.tensors.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(
            l.tensors
                .iter()
                .all(|t| t.start < t.end && t.end <= data.len() as u64)
        );
    }

    if let Ok((h, inner)) = delta::parse(data) {
        let base = vec![0u8; 1 + data.len() % 300];
        let mut out = vec![0u8; base.len()];
        let _ = delta::decode_into(&h, inner, &base, &mut out, &String::new, &mut |_, _| {});
    }
    let half = data.len() / 2;
    let (a, b) = (&data[..half], &data[half..2 * half]);
    let t = Transform::from_u8(data.first().copied().unwrap_or(0) % 3).expect("0-2");
    if let Some(stored) = delta::encode(a, b, &ChunkId::of(b), 1, t, Compression::Auto(1), -1.0) {
        let (h, inner) = delta::parse(&stored).expect("what encode writes parses");
        assert_eq!(h.base, ChunkId::of(b));
        let mut back = vec![0u8; a.len()];
        let mut upto = 0;
        delta::decode_into(&h, inner, b, &mut back, &String::new, &mut |at, piece| {
            assert_eq!(at, upto, "pieces in order, without gaps");
            upto += piece.len();
        })
        .expect("decodes");
        assert_eq!(upto, a.len());
        assert_eq!(back, a);
    }
});
