//! The chunk codec on real files, on one core: stored size, compress and decompress speed.
//!
//! `cargo bench --bench codec_files -- FILE...` cuts each file as a store does (on its tensor
//! grid when it is a safetensors or PyTorch zip file, else in 256 KiB pieces), codes every
//! piece with the default `Compression::Auto` and decodes it again, best of 3 on this thread,
//! and prints one JSON object per file. `scripts/bench/checkpoints.sh` runs it next to the `zipnn` package.

use std::io::Cursor;
use std::time::Instant;

use ml_dash::testing::codec::{self, Codec, Compression};
use ml_dash::testing::tensors::{Grid, Layout, MAX_HEADER};

const PIECE: usize = 256 << 10;

fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let head = &data[..data.len().min(ml_dash::testing::usize_from(MAX_HEADER))];
    let layout = Layout::safetensors(head)
        .or_else(|| Layout::zip(&mut Cursor::new(data), data.len() as u64));
    let lens: Vec<usize> = match layout {
        Some(l) => {
            let mut cuts = vec![];
            Grid::new(l, PIECE).cuts(0, data, true, &mut cuts);
            cuts.into_iter().map(|(len, _)| len).collect()
        }
        None => data.chunks(PIECE).map(<[u8]>::len).collect(),
    };
    let mut at = 0;
    lens.into_iter()
        .map(|n| {
            at += n;
            &data[at - n..at]
        })
        .collect()
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

fn main() {
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for path in files {
        let data = std::fs::read(&path).expect("readable file");
        let pieces = pieces(&data);
        let (enc_s, coded) = best_of(3, || {
            pieces
                .iter()
                .map(|p| codec::encode(p, Compression::Auto(1)))
                .collect::<Vec<_>>()
        });
        let stored: usize = coded
            .iter()
            .zip(&pieces)
            .map(|(c, p)| c.as_ref().map_or(p.len(), |(_, v)| v.len()))
            .sum();
        let (dec_s, decoded) = best_of(3, || {
            coded
                .iter()
                .zip(&pieces)
                .map(|(c, p)| match c {
                    Some((k, v)) => codec::decode(*k, v, p.len(), &String::new).unwrap(),
                    None => codec::decode(Codec::Raw, p, p.len(), &String::new).unwrap(),
                })
                .collect::<Vec<_>>()
        });
        assert!(
            decoded.iter().zip(&pieces).all(|(d, p)| d == p),
            "{path}: round trip"
        );
        let mb = data.len() as f64 / 1e6;
        println!(
            "{}",
            serde_json::json!({
                "path": path,
                "bytes": data.len(),
                "pieces": pieces.len(),
                "stored_bytes": stored,
                "ratio": stored as f64 / data.len() as f64,
                "compress_s": enc_s,
                "decompress_s": dec_s,
                "compress_mb_s": mb / enc_s,
                "decompress_mb_s": mb / dec_s,
            })
        );
    }
}
