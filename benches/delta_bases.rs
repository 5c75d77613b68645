//! How a checkpoint series stores under different choices of delta base, on real files.
//!
//! `cargo bench --bench delta_bases -- FILE...` takes the files as versions of one checkpoint,
//! in order (safetensors or PyTorch zip files with the same tensors). It cuts each on its tensor
//! grid as a store does, codes every piece whole and as a delta against the same piece of each
//! of the 6 versions before it, and then replays, piece by piece, the base choices below,
//! printing each one's stored size over the raw size of the whole series and its deepest chain:
//! - `previous, depth D`: the engine's rule. Against the previous version's piece while the
//!   chain stays within D deltas, else whole.
//! - `reach back, depth D`: when the previous piece's chain is full, against its newest
//!   ancestor the depth allows instead of storing the piece whole.
//! - `keyframe`: always against the whole piece at the root of the previous piece's chain.
//! - `unbounded chain`: against the previous version's piece, whatever the depth (as the `zipnn` package's
//!   XOR-delta chain does).
//!
//! Every delta must pay `DELTA_MIN_GAIN`, as in the engine. Distances beyond 6 versions are
//! taken as not paying.

use std::io::Cursor;

use ml_dash::testing::codec::{self, Compression};
use ml_dash::testing::delta::{self, Transform};
use ml_dash::testing::digest::ChunkId;
use ml_dash::testing::tensors::{Grid, Layout, MAX_HEADER};

const PIECE: usize = 256 << 10;
const MAX_DISTANCE: usize = 6;
/// As `ml_dash::store::ingest::DELTA_MIN_GAIN`.
const MIN_GAIN: f64 = 0.03;

/// `(start, len, element width)` of each piece of `data`'s tensor grid.
fn pieces(data: &[u8]) -> Vec<(usize, usize, Option<usize>)> {
    let head = &data[..data.len().min(ml_dash::testing::usize_from(MAX_HEADER))];
    let layout = Layout::safetensors(head)
        .or_else(|| Layout::zip(&mut Cursor::new(data), data.len() as u64))
        .expect("a safetensors or PyTorch zip file");
    let grid = Grid::new(layout, PIECE);
    let mut cuts = Vec::new();
    grid.cuts(0, data, true, &mut cuts);
    let mut at = 0;
    cuts.into_iter()
        .map(|(n, place)| {
            at += n;
            let width = place.and_then(|(t, _)| grid.layout().tensors[t].width());
            (at - n, n, width)
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Rule {
    Previous(u8),
    ReachBack(u8),
    Keyframe,
    Unbounded,
}

/// Stored bytes per version and the deepest chain, replaying `rule` over every piece.
/// `whole[v][p]`: piece `p` of version `v` on its own; `delta[v][d][p]`: as a delta against
/// version `v - 1 - d`, if that pays.
fn replay(rule: Rule, whole: &[Vec<usize>], delta: &[Vec<Vec<Option<usize>>>]) -> (Vec<usize>, u8) {
    let (versions, n_pieces) = (whole.len(), whole[0].len());
    let mut per_version = vec![0usize; versions];
    let mut deepest = 0;
    for p in 0..n_pieces {
        // Per version: the version its piece is stored against, and its depth.
        let mut chain: Vec<(Option<usize>, u8)> = Vec::with_capacity(versions);
        for v in 0..versions {
            let mut choice = None;
            if v > 0 {
                let (mut base, mut depth) = (v - 1, chain[v - 1].1 + 1);
                match rule {
                    Rule::Previous(_) | Rule::Unbounded => {}
                    Rule::ReachBack(max) => {
                        while depth > max {
                            base = chain[base].0.expect("a delta has a base");
                            depth -= 1;
                        }
                    }
                    Rule::Keyframe => {
                        while let Some(b) = chain[base].0 {
                            base = b;
                        }
                        depth = 1;
                    }
                }
                let allowed = match rule {
                    Rule::Previous(max) | Rule::ReachBack(max) => depth <= max,
                    Rule::Keyframe | Rule::Unbounded => true,
                };
                if allowed && v - base <= MAX_DISTANCE {
                    choice = delta[v][v - 1 - base][p].map(|size| (base, depth, size));
                }
            }
            let size = match choice {
                Some((base, depth, size)) => {
                    chain.push((Some(base), depth));
                    deepest = deepest.max(depth);
                    size
                }
                None => {
                    chain.push((None, 0));
                    whole[v][p]
                }
            };
            per_version[v] += size;
        }
    }
    (per_version, deepest)
}

fn main() {
    let paths: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if paths.len() < 2 {
        eprintln!("usage: cargo bench --bench delta_bases -- FILE FILE...");
        return;
    }
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|f| std::fs::read(f).expect("readable file"))
        .collect();
    let cut = pieces(&files[0]);
    assert!(
        files.iter().all(|f| f.len() == files[0].len()),
        "the versions must have the same layout"
    );
    let base_id = ChunkId::of(b"base");
    let whole: Vec<Vec<usize>> = files
        .iter()
        .map(|f| {
            cut.iter()
                .map(|&(s, n, _)| {
                    codec::encode(&f[s..s + n], Compression::Auto(1)).map_or(n, |(_, c)| c.len())
                })
                .collect()
        })
        .collect();
    let delta: Vec<Vec<Vec<Option<usize>>>> = (0..files.len())
        .map(|v| {
            (0..v.min(MAX_DISTANCE))
                .map(|d| {
                    let (new, old) = (&files[v], &files[v - 1 - d]);
                    cut.iter()
                        .map(|&(s, n, width)| {
                            let t = width.map_or(Transform::Xor, Transform::for_width);
                            let (a, b) = (&new[s..s + n], &old[s..s + n]);
                            delta::encode(a, b, &base_id, 1, t, Compression::Auto(1), MIN_GAIN)
                                .map(|c| c.len())
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let raw = files[0].len() as f64;
    println!(
        "{} versions of {} bytes, {} pieces",
        files.len(),
        files[0].len(),
        cut.len()
    );
    println!("| base choice | series stored / raw | deepest chain | per version |");
    println!("|---|---|---|---|");
    let rules = [
        ("previous, depth 2", Rule::Previous(2)),
        ("previous, depth 4", Rule::Previous(4)),
        ("previous, depth 6", Rule::Previous(6)),
        ("previous, depth 8", Rule::Previous(8)),
        ("reach back, depth 2", Rule::ReachBack(2)),
        ("reach back, depth 4", Rule::ReachBack(4)),
        ("keyframe", Rule::Keyframe),
        ("unbounded chain", Rule::Unbounded),
    ];
    for (name, rule) in rules {
        let (per_version, deepest) = replay(rule, &whole, &delta);
        let total: usize = per_version.iter().sum();
        let each: Vec<String> = per_version
            .iter()
            .map(|b| format!("{:.3}", *b as f64 / raw))
            .collect();
        println!(
            "| {name} | {:.4} | {deepest} | {} |",
            total as f64 / raw / files.len() as f64,
            each.join(" ")
        );
    }
}
