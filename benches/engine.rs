//! Criterion benches per stage: chunker, BLAKE3, SHA-256, compression decision, pack writes,
//! end-to-end ingest (new and already-stored data) and verified download.
//!
//! `cargo bench --bench engine`; `cargo bench --bench engine -- --test` runs each once (CI).

use std::hint::black_box;
use std::io::Cursor;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ml_dash::ExperimentKey;
use ml_dash::testing::chunker::{Chunker, Simd};
use ml_dash::testing::codec::{self, Compression};
use ml_dash::testing::huffman;
use ml_dash::{ChunkAlgorithm, ChunkerConfig};
use ml_dash::{NewVersion, Store};
use sha2::Digest as _;

const MIB: usize = 1 << 20;

fn noise(n: usize, seed: u64) -> Vec<u8> {
    ml_dash::testing::random_bytes(seed, n)
}

/// fp32 weights, normal with a spread like trained layers' (full-precision mantissas, so
/// only the sign and exponent byte is predictable, as in real checkpoints).
#[allow(
    clippy::cast_possible_truncation,
    reason = "the normal samples are meant to be rounded to f32"
)]
fn floats(n: usize) -> Vec<u8> {
    let mut rng = ml_dash::testing::XorShift::new(99);
    let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + f64::MIN_POSITIVE;
    let mut out = Vec::with_capacity(n + 4);
    while out.len() < n {
        let (u1, u2) = (unit(), unit());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        out.extend_from_slice(&((z * 0.02) as f32).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn stages(c: &mut Criterion) {
    let data = noise(64 * MIB, 1);
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    // The chunkers on random data and on fp32 weights (files cut by content, not by tensor).
    let fl = floats(64 * MIB);
    let mut chunkers = vec![(
        "fastcdc".to_string(),
        ChunkAlgorithm::FastCdc2020,
        Simd::detect(),
    )];
    for simd in Simd::available() {
        let isa = format!("{simd:?}").to_lowercase();
        chunkers.push((format!("hash16_{isa}"), ChunkAlgorithm::Hash16, simd));
    }
    for (name, algorithm, simd) in chunkers {
        let chunker = Chunker::with_simd(
            ChunkerConfig {
                algorithm,
                ..ChunkerConfig::default()
            },
            simd,
        )
        .unwrap();
        for (what, bytes) in [("random", &data), ("fp32", &fl)] {
            g.bench_function(format!("{name}_{what}_64MiB"), |b| {
                b.iter(|| {
                    let mut cuts = Vec::new();
                    black_box(chunker.cuts(bytes, true, &mut cuts))
                });
            });
        }
    }
    g.bench_function("blake3_64MiB", |b| {
        b.iter(|| black_box(blake3::hash(&data)));
    });
    g.bench_function("sha256_64MiB", |b| {
        b.iter(|| black_box(sha2::Sha256::digest(&data)));
    });
    g.bench_function("codec_auto_random_64MiB", |b| {
        b.iter(|| {
            data.chunks(64 * 1024)
                .filter(|c| codec::encode(c, Compression::Auto(1)).is_some())
                .count()
        });
    });
    g.bench_function("codec_auto_fp32_64MiB", |b| {
        b.iter(|| {
            fl.chunks(64 * 1024)
                .filter_map(|c| codec::encode(c, Compression::Auto(1)))
                .map(|(_, v)| v.len())
                .sum::<usize>()
        });
    });
    let bf: Vec<u8> = fl.chunks(4).flat_map(|c| [c[2], c[3]]).collect();
    let bf = [bf.clone(), bf].concat();
    g.bench_function("codec_auto_bf16_64MiB", |b| {
        b.iter(|| {
            bf.chunks(64 * 1024)
                .filter_map(|c| codec::encode(c, Compression::Auto(1)))
                .map(|(_, v)| v.len())
                .sum::<usize>()
        });
    });
    let enc: Vec<(codec::Codec, Vec<u8>, usize)> = fl
        .chunks(64 * 1024)
        .map(|c| match codec::encode(c, Compression::Auto(1)) {
            Some((k, v)) => (k, v, c.len()),
            None => (codec::Codec::Raw, c.to_vec(), c.len()),
        })
        .collect();
    g.bench_function("codec_decode_fp32_64MiB", |b| {
        b.iter(|| {
            enc.iter()
                .map(|(k, v, n)| codec::decode(*k, v, *n, &|| String::new()).unwrap().len())
                .sum::<usize>()
        });
    });
    // Huffman-coded planes of 64 KiB: a sign/exponent-like plane (about 2.5 bits per value,
    // decoded several values per lookup) and a mantissa-like one (about 7 bits).
    let mut rng = ml_dash::testing::XorShift::new(5);
    let exponents: Vec<u8> = (0..64 * MIB)
        .map(|_| 120 + u8::try_from((rng.next_u64() | 1 << 12).trailing_zeros()).expect("< 13"))
        .collect();
    let mantissas: Vec<u8> = (0..64 * MIB)
        .map(|_| u8::try_from(rng.next_u64() % 181).expect("< 181"))
        .collect();
    for (name, plane) in [("exponents", &exponents), ("mantissas", &mantissas)] {
        let coded: Vec<Vec<u8>> = plane
            .chunks(64 * 1024)
            .map(|p| {
                let hist = huffman::histogram(p);
                let lens = huffman::code_lengths(&hist);
                let mut out = vec![];
                huffman::encode(p, &hist, &lens, &mut out);
                out
            })
            .collect();
        let mut back = vec![0u8; 64 * 1024];
        g.bench_function(format!("huffman_decode_{name}_64MiB"), |b| {
            b.iter(|| {
                for c in &coded {
                    huffman::decode(c, &mut back).unwrap();
                }
            });
        });
    }
    g.bench_function("pack_append_64MiB", |b| {
        b.iter_with_setup(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let mut w =
                    ml_dash::testing::PackWriter::create(dir.path(), &Default::default()).unwrap();
                for c in data.chunks(64 * 1024) {
                    w.append(
                        ml_dash::ChunkId::default(),
                        u32::try_from(c.len()).expect("64 KiB"),
                        ml_dash::testing::codec::Codec::Raw,
                        c,
                    )
                    .unwrap();
                }
                w.sync().unwrap();
            },
        );
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let size = 128 * MIB;
    let data = noise(size, 2);
    let key = ExperimentKey::new("local", "bench", "e")
        .unwrap()
        .file("/".into(), "f.bin".into());
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(size as u64));
    g.sample_size(10);
    g.bench_function("ingest_new_128MiB", |b| {
        b.iter_with_setup(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let s = Store::open(dir.path()).unwrap();
                s.put_reader(Cursor::new(&data), &key, NewVersion::default(), None)
                    .unwrap();
            },
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.put_reader(Cursor::new(&data), &key, NewVersion::default(), None)
        .unwrap();
    g.bench_function("ingest_known_128MiB", |b| {
        b.iter(|| {
            s.put_reader(Cursor::new(&data), &key, NewVersion::default(), None)
                .unwrap()
        });
    });
    g.bench_function("download_verified_128MiB", |b| {
        b.iter(|| {
            let mut sink = std::io::sink();
            s.download_to(&key, Some(1), &mut sink).unwrap()
        });
    });
    g.finish();

    // Dedup ratio on a shifted copy (reported, not timed).
    let mut shifted = b"inserted header bytes".to_vec();
    shifted.extend_from_slice(&data[..32 * MIB]);
    let k2 = ExperimentKey::new("local", "bench", "e")
        .unwrap()
        .file("/".into(), "shifted.bin".into());
    let r = s
        .put_reader(Cursor::new(&shifted), &k2, NewVersion::default(), None)
        .unwrap();
    eprintln!(
        "dedup on a 32 MiB copy shifted by 21 bytes: {} new bytes ({:.2}% of the file)",
        r.new_bytes,
        100.0 * r.new_bytes as f64 / shifted.len() as f64
    );
}

/// The snapshot of chunk locations an upload outside the store lock takes under the lock: one
/// pass over the index's chunk entries, for an index of 100,000 chunks (~6 GiB of data).
fn snapshot(c: &mut Criterion) {
    use ml_dash::testing::{Index, IndexBatch, pack::ChunkLoc};
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open(dir.path()).unwrap();
    let mut n = 0u64;
    for _ in 0..100 {
        let mut b = IndexBatch::default();
        for _ in 0..1000 {
            n += 1;
            let id = ml_dash::ChunkId::of(&n.to_le_bytes());
            let loc = ChunkLoc {
                pack: ml_dash::Id::generate(),
                offset: n * 65_536,
                stored_len: 65_536,
                raw_len: 65_536,
                codec: codec::Codec::Raw,
                base: None,
            };
            b.put_chunk(&id, &loc);
        }
        ix.apply(b).unwrap();
    }
    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    g.bench_function("snapshot_100k_chunks", |b| {
        b.iter(|| assert_eq!(ml_dash::testing::snapshot_chunks(&ix).unwrap(), 100_000));
    });
    g.finish();
}

criterion_group!(benches, stages, end_to_end, snapshot);
criterion_main!(benches);
