//! The chunker is part of a store's format: new stores record hash16 in `FORMAT`, stores
//! without a record keep cutting with FastCDC, `set_chunker` moves a store, and hash16 keeps
//! FastCDC's dedup of shifted and edited files.

use ml_dash::{ChunkAlgorithm, ChunkerConfig, Store, StoreOptions};

use crate::util::*;

const MIB: usize = 1 << 20;

fn format_json(root: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("FORMAT")).unwrap()).unwrap()
}

fn write_format(root: &std::path::Path, v: &serde_json::Value) {
    std::fs::write(root.join("FORMAT"), format!("{v}\n")).unwrap();
}

/// Text of words from a small vocabulary: bytes of a narrow range, where a threshold scan
/// runs longest.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "loss", "epoch", "0.125", "accuracy", "step", "\n", "lr=3e-4", " ", "{", "}", "~",
    ];
    let mut rng = XorShift::new(seed);
    let mut t = Vec::new();
    while t.len() < len {
        t.extend_from_slice(words[usize_from(rng.below(words.len() as u64))].as_bytes());
    }
    t
}

#[test]
fn new_stores_record_hash16_and_keep_their_chunker() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    assert_eq!(exp.store().chunker(), ChunkerConfig::default());
    let c = &format_json(&root)["chunker"];
    assert_eq!(c["algorithm"], "hash16");
    assert_eq!(
        (c["min"].as_u64(), c["avg"].as_u64(), c["max"].as_u64()),
        (Some(16 << 10), Some(64 << 10), Some(256 << 10))
    );
    // Options given to an existing store do not change how it cuts.
    let other = StoreOptions::default().chunker(ChunkerConfig {
        algorithm: ChunkAlgorithm::FastCdc2020,
        min: 1024,
        avg: 4096,
        max: 16384,
    });
    let s = Store::open_with(&root, other).unwrap();
    assert_eq!(s.chunker(), ChunkerConfig::default());
}

/// A store made before chunkers were recorded cuts as it always did (FastCDC), so a shifted
/// copy of a file stored back then still dedups; moving it to `hash16` cuts new uploads anew.
#[test]
fn stores_without_a_recorded_chunker_keep_fastcdc() {
    let dir = tmp();
    let root = dir.path().join("store");
    let a = random_bytes(31, 8 * MIB);
    {
        let s = Store::open_with(
            &root,
            StoreOptions::default().chunker(ChunkerConfig::default().fastcdc()),
        )
        .unwrap();
        drop(s);
        let mut v = format_json(&root);
        v.as_object_mut().unwrap().remove("chunker");
        write_format(&root, &v);
    }
    let exp = experiment(&root, "p", "e");
    assert_eq!(exp.store().chunker(), ChunkerConfig::default().fastcdc());
    let first = exp
        .file(write_file(dir.path(), "a.bin", &a))
        .save()
        .unwrap();
    assert!(first.new_bytes >= a.len() as u64);
    let mut shifted = random_bytes(32, 100);
    shifted.extend_from_slice(&a);
    let again = exp
        .file(write_file(dir.path(), "b.bin", &shifted))
        .save()
        .unwrap();
    assert!(
        again.new_bytes < 512 * 1024,
        "shifted copy added {} bytes",
        again.new_bytes
    );

    // Moving the store to hash16: new uploads are cut differently, old versions read as before.
    exp.store().set_chunker(ChunkerConfig::default()).unwrap();
    assert_eq!(format_json(&root)["chunker"]["algorithm"], "hash16");
    let moved = experiment(&root, "p", "e");
    assert_eq!(moved.store().chunker(), ChunkerConfig::default());
    let recut = moved
        .file(write_file(dir.path(), "c.bin", &a))
        .save()
        .unwrap();
    assert!(
        recut.new_bytes > a.len() as u64 / 2,
        "hash16 cuts differ from FastCDC: {}",
        recut.new_bytes
    );
    same_bytes(read_via_download(&moved, "/a.bin", None), &a, "/a.bin");
    same_bytes(read_via_reader(&moved, "/b.bin", None), &shifted, "/b.bin");
    assert!(moved.store().verify().unwrap().ok);
}

#[test]
fn bad_and_unknown_chunkers_are_refused_and_change_nothing() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let before = std::fs::read(root.join("FORMAT")).unwrap();
    let bad = ChunkerConfig {
        min: 4096,
        avg: 1024,
        ..ChunkerConfig::default()
    };
    assert!(exp.store().set_chunker(bad).is_err());
    assert_eq!(std::fs::read(root.join("FORMAT")).unwrap(), before);
    drop(exp);

    // A chunker this version does not know (a newer one wrote it): a clear refusal.
    let mut v = format_json(&root);
    v["chunker"]["algorithm"] = "zigzag".into();
    write_format(&root, &v);
    let e = Store::open(&root).err().expect("refused").to_string();
    assert!(
        e.contains("chunker \"zigzag\"") && e.contains("newer version"),
        "{e}"
    );
    // Damaged sizes: refused too.
    v["chunker"]["algorithm"] = "hash16".into();
    v["chunker"]["avg"] = "big".into();
    write_format(&root, &v);
    let e = Store::open(&root).err().expect("refused").to_string();
    assert!(e.contains("chunker avg"), "{e}");
}

#[test]
fn cli_shows_and_sets_the_chunker() {
    let dir = tmp();
    let root = dir.path().join("store");
    drop(experiment(&root, "p", "e"));
    let r = run(&root, &["chunker", "--json"]);
    let v: serde_json::Value = serde_json::from_str(ok(&r).trim()).unwrap();
    assert_eq!(v["algorithm"], "hash16");
    assert_eq!(v["avg"], 65536);
    let r = run(
        &root,
        &[
            "chunker",
            "--set",
            "fastcdc-2020",
            "--avg",
            "32768",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(ok(&r).trim()).unwrap();
    assert_eq!(
        (&v["algorithm"], &v["min"], &v["avg"], &v["max"]),
        (
            &"fastcdc-2020".into(),
            &16384.into(),
            &32768.into(),
            &262144.into()
        )
    );
    let r = run(&root, &["chunker"]);
    assert!(
        ok(&r).starts_with("fastcdc-2020 (min 16384, avg 32768"),
        "{r:?}"
    );
    let before = std::fs::read(root.join("FORMAT")).unwrap();
    let r = run(&root, &["chunker", "--set", "gear"]);
    refused(&r, "unknown chunker");
    assert!(
        r.2.contains("unknown chunker \"gear\": hash16 or fastcdc-2020"),
        "{r:?}"
    );
    let r = run(&root, &["chunker", "--set", "hash16", "--min", "99999999"]);
    refused(&r, "chunker config");
    assert!(r.2.contains("chunker config"), "{r:?}");
    let r = run(
        &root,
        &["chunker", "--set", "hash16", "--avg", "256", "--min", "64"],
    );
    refused(&r, "hash16 with a small avg");
    assert!(r.2.contains("avg >= 512"), "{r:?}");
    assert_eq!(std::fs::read(root.join("FORMAT")).unwrap(), before);
}

/// What one file and its edited copies add to a store cut with `algorithm`: a shifted copy
/// (21, 1000 and 40,000 bytes inserted at the front), 1 MiB overwritten in the middle, and
/// 12,345 bytes cut out of the middle.
fn dedup_costs(algorithm: ChunkAlgorithm, data: &[u8], seed: u64) -> Vec<(String, u64)> {
    let dir = tmp();
    let opts = StoreOptions::default().chunker(ChunkerConfig {
        algorithm,
        ..ChunkerConfig::default()
    });
    let exp = ml_dash::Experiment::new("e", "p")
        .local_path(dir.path().join("store"))
        .options(opts)
        .open()
        .unwrap();
    let mid = data.len() / 2;
    let mut copies = Vec::new();
    for shift in [21usize, 1000, 40_000] {
        let mut d = random_bytes(seed + 1, shift);
        d.extend_from_slice(data);
        copies.push((format!("shift {shift}"), d));
    }
    let mut edited = data.to_vec();
    edited[mid..mid + MIB].copy_from_slice(&random_bytes(seed + 2, MIB));
    copies.push(("1 MiB edit".into(), edited));
    let mut cut = data.to_vec();
    cut.drain(mid..mid + 12_345);
    copies.push(("12345 B cut".into(), cut));
    let first = exp
        .file(write_file(dir.path(), "base", data))
        .save()
        .unwrap();
    assert!(first.new_bytes > 0);
    let mut costs = Vec::new();
    for (i, (what, d)) in copies.iter().enumerate() {
        let r = exp
            .file(write_file(dir.path(), &format!("copy{i}"), d))
            .save()
            .unwrap();
        costs.push((what.clone(), r.new_bytes));
    }
    same_bytes(
        read_via_download(&exp, "/copy3", None),
        &copies[3].1,
        "copy3",
    );
    costs
}

/// `hash16` (the default) keeps FastCDC's dedup: on random bytes, on text and on fp32
/// weights, every edited copy costs at most twice what it costs with FastCDC plus three
/// chunks (single files vary by a chunk or two either way). The 1 MiB edit costs at least
/// that MiB with both (nothing is lost silently).
#[test]
fn hash16_dedups_as_well_as_fastcdc() {
    let floats: Vec<u8> = random_bytes(44, 8 * MIB)
        .chunks(4)
        .flat_map(|c| {
            let u: f32 = c.iter().map(|&b| f32::from(b) / 255.0).sum::<f32>() / 4.0;
            ((u - 0.5) * 0.1).to_le_bytes()
        })
        .collect();
    let mut table = String::new();
    for (kind, data, seed) in [
        ("random", random_bytes(41, 8 * MIB), 100),
        ("text", text(42, 8 * MIB), 200),
        ("fp32", floats, 300),
    ] {
        let fast = dedup_costs(ChunkAlgorithm::FastCdc2020, &data, seed);
        let ours = dedup_costs(ChunkAlgorithm::Hash16, &data, seed);
        for ((what, f), (_, h)) in fast.iter().zip(&ours) {
            table += &format!("{kind:6} {what:12} fastcdc {f:>9} hash16 {h:>9}\n");
            assert!(
                *h <= 2 * f + 3 * 64 * 1024,
                "{kind}, {what}: hash16 added {h} bytes, FastCDC {f}"
            );
            if what.starts_with("1 MiB") && kind == "random" {
                assert!(*h >= MIB as u64 && *f >= MIB as u64, "{what}: {h} / {f}");
            }
        }
    }
    eprintln!("new bytes per edited copy:\n{table}");
}
