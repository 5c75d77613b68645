//! Delta storage of successive checkpoints: safetensors files are cut on a grid
//! aligned to their tensors, and each piece is stored as a delta against the same piece of the
//! previous checkpoint when that pays, within a bounded chain. Everything must still come back
//! byte-exact, survive gc, verify, repair, push and pull, and never return damaged bytes.

use crate::adam;

use ml_dash::{Error, NewVersion, Store, StoreOptions};
use ml_dash::{ExperimentKey, FileKey};

use crate::util::*;

pub(crate) const DELTA: u8 = 4; // Codec::Delta in a record header

pub(crate) fn key(name: &str) -> FileKey {
    ExperimentKey::new("local", "g", "adam")
        .unwrap()
        .file("/ckpt".into(), name.into())
}

/// `n` bf16 checkpoints of a 1 M-parameter model, `steps` Adam steps apart (lr 3e-4).
fn checkpoints(n: usize, steps: u32) -> Vec<Vec<u8>> {
    model_checkpoints(1_000_000, 11, n, steps)
}

/// `n` bf16 safetensors checkpoints of a `params`-parameter model (seed `seed`), `steps` Adam
/// steps apart (lr 3e-4).
pub(crate) fn model_checkpoints(params: usize, seed: u64, n: usize, steps: u32) -> Vec<Vec<u8>> {
    let mut m = adam::Model::new(params, 512, seed);
    m.lr = 3e-4;
    m.train(10);
    (0..n)
        .map(|i| {
            if i > 0 {
                m.train(steps);
            }
            m.safetensors(true)
        })
        .collect()
}

pub(crate) fn put(s: &Store, name: &str, data: &[u8]) -> ml_dash::FileRecord {
    s.put_reader(data, &key(name), NewVersion::default(), None)
        .unwrap()
}

pub(crate) fn read(s: &Store, name: &str, version: Option<u32>) -> Result<Vec<u8>, Error> {
    ml_dash::testing::read_all(&s.open_file(&key(name), version)?)
}

/// Count the delta records in the store's packs.
pub(crate) fn delta_records(root: &std::path::Path) -> usize {
    pack_files(root)
        .iter()
        .flat_map(|p| pack_records(p))
        .filter(|r| r.codec == DELTA)
        .count()
}

/// A store holding two checkpoints 100 steps apart, "a" and "b" (b stored as deltas on a).
fn two_checkpoints() -> (tempfile::TempDir, Store, Vec<Vec<u8>>) {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let ck = checkpoints(2, 100);
    put(&s, "a.safetensors", &ck[0]);
    put(&s, "b.safetensors", &ck[1]);
    (t, s, ck)
}

#[test]
#[allow(
    clippy::cast_possible_truncation,
    reason = "in an assertion: version numbers of 3 checkpoints"
)]
fn successive_checkpoints_store_as_deltas_and_read_back_exactly() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let ck = checkpoints(5, 100);
    let mut ratios = Vec::new();
    for (i, c) in ck.iter().enumerate() {
        let rec = put(&s, &format!("step_{i}.safetensors"), c);
        ratios.push(rec.new_bytes as f64 / c.len() as f64);
    }
    for (i, c) in ck.iter().enumerate() {
        let back = read(&s, &format!("step_{i}.safetensors"), None).unwrap();
        assert!(back == *c, "checkpoint {i} is not byte-exact");
    }
    // Default chain depth 2: full, delta, delta, full, delta.
    assert!(ratios[0] > 0.6, "{ratios:?}");
    for i in [1, 2, 4] {
        assert!(ratios[i] <= 0.55, "checkpoint {i}: {ratios:?}");
    }
    assert!(
        ratios[3] > 0.6,
        "a full version after two deltas: {ratios:?}"
    );
    assert!(delta_records(t.path()) > 0);
    let v = s.verify().unwrap();
    assert!(v.ok, "{v:?}");

    // The same, one path with versions instead of new names.
    let t2 = tmp();
    let s2 = Store::open(t2.path()).unwrap();
    for c in &ck[..3] {
        put(&s2, "latest.safetensors", c);
    }
    for (i, c) in ck[..3].iter().enumerate() {
        assert!(read(&s2, "latest.safetensors", Some(i as u32 + 1)).unwrap() == *c);
    }
    assert!(packs_total(t2.path()) < (ck[0].len() * 3) as u64 * 6 / 10);
}

#[test]
fn deltas_off_and_chain_depth_are_honoured() {
    let ck = checkpoints(4, 100);
    let t = tmp();
    let s = Store::open_with(t.path(), StoreOptions::default().delta_depth(0)).unwrap();
    for (i, c) in ck.iter().enumerate() {
        put(&s, &format!("s{i}.safetensors"), c);
    }
    assert_eq!(delta_records(t.path()), 0);

    let t = tmp();
    let s = Store::open_with(t.path(), StoreOptions::default().delta_depth(1)).unwrap();
    let news: Vec<u64> = ck
        .iter()
        .enumerate()
        .map(|(i, c)| put(&s, &format!("s{i}.safetensors"), c).new_bytes)
        .collect();
    // Depth 1: every other checkpoint is whole.
    assert!(
        news[1] < news[0] * 85 / 100 && news[3] < news[2] * 85 / 100,
        "{news:?}"
    );
    assert!(news[2] > news[1] * 115 / 100, "{news:?}");
    for (i, c) in ck.iter().enumerate() {
        assert!(read(&s, &format!("s{i}.safetensors"), None).unwrap() == *c);
    }
}

#[test]
fn gc_keeps_the_bases_of_live_deltas_and_frees_them_later() {
    let (t, s, ck) = two_checkpoints();
    s.delete(&key("a.safetensors")).unwrap();
    let before = packs_total(t.path());
    let g = s
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(g.kept_as_delta_bases > 0, "{g:?}");
    assert_eq!(
        g.garbage_chunks, 0,
        "a shares its header with b and is b's base: {g:?}"
    );
    assert!(read(&s, "b.safetensors", None).unwrap() == ck[1]);
    assert!(s.verify().unwrap().ok);
    assert!(packs_total(t.path()) <= before);

    // With the delta's version gone too, everything goes.
    s.delete(&key("b.safetensors")).unwrap();
    let g = s
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(g.kept_as_delta_bases, 0);
    assert!(packs_total(t.path()) < 1024, "{g:?}");
    assert!(s.verify().unwrap().ok);
}

#[test]
fn a_damaged_base_is_detected_never_returned() {
    let (t, s, _) = two_checkpoints();
    // Damage the data of three whole records of a's tensors: records b's deltas stand on.
    let packs = pack_files(t.path());
    let mut flipped = 0;
    for p in &packs {
        for r in pack_records(p) {
            if r.codec != DELTA && r.stored_len > 1000 && flipped < 3 {
                flip_byte(p, r.data_start() + r.stored_len / 2);
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 3);
    let e = read(&s, "b.safetensors", None).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(read(&s, "a.safetensors", None).is_err());
    let v = s.verify().unwrap();
    assert!(!v.ok);
    assert_eq!(v.damaged_files.len(), 2, "{:?}", v.damaged_files);
}

#[test]
fn a_damaged_delta_record_is_detected() {
    let (t, s, ck) = two_checkpoints();
    let p = pack_files(t.path())
        .into_iter()
        .find(|p| pack_records(p).iter().any(|r| r.codec == DELTA))
        .unwrap();
    let r = pack_records(&p)
        .into_iter()
        .find(|r| r.codec == DELTA)
        .unwrap();
    // A byte of the base id, of the depth, and of the coded difference.
    for off in [5, 32, r.stored_len - 1] {
        flip_byte(&p, r.data_start() + off);
        assert!(read(&s, "b.safetensors", None).is_err(), "flip at {off}");
        assert!(!s.verify().unwrap().ok, "flip at {off}");
        flip_byte(&p, r.data_start() + off);
    }
    assert!(read(&s, "b.safetensors", None).unwrap() == ck[1]);
    assert!(s.verify().unwrap().ok);
}

#[test]
fn repair_restores_delta_bases_from_the_packs() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let ck = checkpoints(3, 100);
    for (i, c) in ck.iter().enumerate() {
        put(&s, &format!("s{i}.safetensors"), c);
    }
    let rep = s.rebuild_index().unwrap();
    assert!(rep.damaged.is_empty(), "{rep:?}");
    for (i, c) in ck.iter().enumerate() {
        assert!(read(&s, &format!("s{i}.safetensors"), None).unwrap() == *c);
    }
    // gc after the rebuild still knows the bases.
    s.delete(&key("s0.safetensors")).unwrap();
    assert!(
        s.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
            .unwrap()
            .kept_as_delta_bases
            > 0
    );
    assert!(read(&s, "s2.safetensors", None).unwrap() == ck[2]);
}

#[test]
fn frozen_and_reserialized_tensors_still_dedup() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let mut m = adam::Model::new(500_000, 512, 5);
    m.train(5);
    let a = m.safetensors(false);
    put(&s, "a.safetensors", &a);
    // The same tensors behind a longer header (new metadata): only the header is new.
    let header_len = usize_from(u64::from_le_bytes(a[..8].try_into().unwrap()));
    let header = std::str::from_utf8(&a[8..8 + header_len]).unwrap();
    let longer = header.replacen(
        "\"__metadata__\":{",
        "\"__metadata__\":{\"step\":\"1234567\",",
        1,
    );
    let mut b = (longer.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(longer.as_bytes());
    b.extend_from_slice(&a[8 + header_len..]);
    let rec = put(&s, "b.safetensors", &b);
    assert!(
        rec.new_bytes < 64 * 1024,
        "re-serialized copy stored {} bytes",
        rec.new_bytes
    );
    assert!(read(&s, "b.safetensors", None).unwrap() == b);
}

/// A safetensors header of several MiB (long metadata, or tens of thousands of tensors) is
/// still read whole before the cutter is chosen: the file gets its tensor grid and deltas
/// whatever the machine's thread count.
#[test]
fn a_header_of_several_mib_still_gets_the_grid_and_deltas() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let pad = "x".repeat(3 << 20);
    let with_big_header = |ck: &[u8]| {
        let header_len = usize_from(u64::from_le_bytes(ck[..8].try_into().unwrap()));
        let header = std::str::from_utf8(&ck[8..8 + header_len]).unwrap();
        let longer = header.replacen(
            "\"__metadata__\":{",
            &format!("\"__metadata__\":{{\"pad\":\"{pad}\","),
            1,
        );
        let mut f = (longer.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(longer.as_bytes());
        f.extend_from_slice(&ck[8 + header_len..]);
        f
    };
    let ck: Vec<Vec<u8>> = checkpoints(2, 100)
        .iter()
        .map(|c| with_big_header(c))
        .collect();
    put(&s, "big.safetensors", &ck[0]);
    put(&s, "big.safetensors", &ck[1]);
    assert!(
        delta_records(t.path()) > 0,
        "no piece was stored as a delta"
    );
    assert!(read(&s, "big.safetensors", Some(1)).unwrap() == ck[0]);
    assert!(read(&s, "big.safetensors", None).unwrap() == ck[1]);
}

#[test]
fn files_that_only_look_like_safetensors_are_stored_exactly() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let body = random_bytes(9, 3 << 20);
    let headers = [
        // offsets past the end of the file
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,999999999]}}"#,
        // overlapping tensors (not a valid layout: chunked as plain bytes)
        r#"{"w":{"dtype":"F32","data_offsets":[0,100]},"v":{"dtype":"F32","data_offsets":[50,150]}}"#,
        // a tensor of length 0 and one of odd length in a 2-byte dtype
        r#"{"z":{"dtype":"BF16","data_offsets":[0,0]},"o":{"dtype":"BF16","data_offsets":[0,1001]}}"#,
        // not JSON
        "{not json at all",
    ];
    for (i, h) in headers.iter().enumerate() {
        for round in 0..2 {
            let mut f = (h.len() as u64).to_le_bytes().to_vec();
            f.extend_from_slice(h.as_bytes());
            f.extend_from_slice(&body[round * 7..]);
            let name = format!("odd{i}.safetensors");
            put(&s, &name, &f);
            assert!(
                read(&s, &name, None).unwrap() == f,
                "header {i} round {round}"
            );
        }
    }
    assert!(s.verify().unwrap().ok);
}

#[test]
fn push_and_pull_carry_the_bases_deltas_need() {
    let t = tmp();
    let ck = checkpoints(3, 100);
    for cfg in crate::remote::remotes(t.path(), "delta") {
        let remote = ml_dash::Remote::open(&cfg).unwrap();
        let a_root = t.path().join(format!("a-{}", cfg.url.len()));
        let a = Store::open(&a_root).unwrap();
        for (i, c) in ck.iter().enumerate() {
            put(&a, &format!("s{i}.safetensors"), c);
        }
        a.push(&remote, None).unwrap();

        // A fresh store gets everything back.
        let b = Store::open(t.path().join(format!("b-{}", cfg.url.len()))).unwrap();
        b.pull(&remote, None).unwrap();
        for (i, c) in ck.iter().enumerate() {
            assert!(read(&b, &format!("s{i}.safetensors"), None).unwrap() == *c);
        }
        assert!(b.verify().unwrap().ok);

        // A store that uploaded the first checkpoint itself has the base chunks already: the
        // pull fetches the deltas only (its own s0 conflicts with the remote's and stays).
        let c = Store::open(t.path().join(format!("c-{}", cfg.url.len()))).unwrap();
        put(&c, "s0.safetensors", &ck[0]);
        let rep = c.pull(&remote, None).unwrap();
        assert_eq!(rep.conflicts.len(), 1, "{rep:?}");
        assert!(rep.chunks_already_local > 0, "{rep:?}");
        assert!(rep.bytes < (ck[0].len() as u64) * 2 * 6 / 10, "{rep:?}");
        for (i, c_) in ck.iter().enumerate().skip(1) {
            assert!(read(&c, &format!("s{i}.safetensors"), None).unwrap() == *c_);
        }
        assert!(c.verify().unwrap().ok);

        // Pushing only the last checkpoint from a store where it is a delta sends its bases.
        let d_root = t.path().join(format!("d-{}", cfg.url.len()));
        let d = Store::open(&d_root).unwrap();
        put(&d, "s0.safetensors", &ck[0]);
        put(&d, "s1.safetensors", &ck[1]);
        d.delete(&key("s0.safetensors")).unwrap();
        d.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
            .unwrap();
        let cfg2 = ml_dash::RemoteConfig::new(format!("{}-only-s1", cfg.url));
        let r2 = ml_dash::Remote::open(&cfg2).unwrap();
        d.push(&r2, None).unwrap();
        let e = Store::open(t.path().join(format!("e-{}", cfg.url.len()))).unwrap();
        e.pull(&r2, None).unwrap();
        assert!(read(&e, "s1.safetensors", None).unwrap() == ck[1]);
        assert!(read(&e, "s0.safetensors", None).is_err());
        assert!(e.verify().unwrap().ok);
    }
}

/// `n` PyTorch-style zip checkpoints (see `adam::Model::torch_zip`), like `checkpoints`. After
/// the first (`archive/data/0`, ...) each archive's folder is named after its checkpoint, as
/// `torch.save` names it after the file (`ck1/data/0`, `ck2/data/0`, ...).
fn torch_checkpoints(n: usize, zip64: bool) -> Vec<Vec<u8>> {
    let mut m = adam::Model::new(1_000_000, 512, 11);
    m.lr = 3e-4;
    m.train(10);
    (0..n)
        .map(|i| {
            if i > 0 {
                m.train(100);
            }
            match i {
                0 => m.torch_zip(true, zip64),
                _ => m.torch_zip_in(true, zip64, &format!("ck{i}")),
            }
        })
        .collect()
}

#[test]
fn pytorch_zip_checkpoints_from_files_store_as_deltas() {
    for zip64 in [false, true] {
        let t = tmp();
        let s = Store::open(t.path().join("store")).unwrap();
        let ck = torch_checkpoints(3, zip64);
        let mut ratios = Vec::new();
        for (i, c) in ck.iter().enumerate() {
            let src = write_file(t.path(), &format!("ck{i}.pth"), c);
            let rec = s
                .put_file(
                    &src,
                    &key(&format!("epoch_{i}.pth")),
                    NewVersion::default(),
                    None,
                )
                .unwrap();
            ratios.push(rec.new_bytes as f64 / c.len() as f64);
        }
        for (i, c) in ck.iter().enumerate() {
            assert!(read(&s, &format!("epoch_{i}.pth"), None).unwrap() == *c);
        }
        assert!(ratios[0] > 0.6, "zip64={zip64}: {ratios:?}");
        assert!(
            ratios[1] <= 0.55 && ratios[2] <= 0.55,
            "zip64={zip64}: {ratios:?}"
        );
        assert!(s.verify().unwrap().ok);

        // The same archives through a stream (no central directory up front): no deltas,
        // still exact.
        let s2 = Store::open(t.path().join("store2")).unwrap();
        for (i, c) in ck.iter().enumerate() {
            put(&s2, &format!("epoch_{i}.pth"), c);
            assert!(read(&s2, &format!("epoch_{i}.pth"), None).unwrap() == *c);
        }
        assert_eq!(delta_records(&t.path().join("store2")), 0);
    }
}

/// With deltas off, a `torch.save` archive read from a file is still cut on its tensors: every
/// tensor of at least a chunk starts a chunk.
#[test]
fn pytorch_zip_files_are_cut_on_tensors_with_deltas_off() {
    let t = tmp();
    let root = t.path().join("store");
    let s = Store::open_with(&root, StoreOptions::default().delta_depth(0)).unwrap();
    let ck = torch_checkpoints(1, false).remove(0);
    let src = write_file(t.path(), "ck.pth", &ck);
    s.put_file(&src, &key("ck.pth"), NewVersion::default(), None)
        .unwrap();
    assert!(read(&s, "ck.pth", None).unwrap() == ck);
    let layout =
        ml_dash::testing::tensors::Layout::zip(&mut std::io::Cursor::new(&ck[..]), ck.len() as u64)
            .expect("a zip layout");
    let manifests = files_with_ext(&root.join("manifests"), "manifest");
    assert_eq!(manifests.len(), 1);
    let m =
        ml_dash::testing::manifest::Manifest::decode(&std::fs::read(&manifests[0]).unwrap(), "")
            .unwrap();
    let cuts: std::collections::HashSet<u64> = m
        .chunks
        .iter()
        .scan(0u64, |at, (_, len)| {
            let start = *at;
            *at += u64::from(*len);
            Some(start)
        })
        .collect();
    let big: Vec<_> = layout
        .tensors
        .iter()
        .filter(|t| t.len() >= 64 * 1024)
        .collect();
    assert!(big.len() >= 2, "{:?}", layout.tensors.len());
    for t in big {
        assert!(
            cuts.contains(&t.start),
            "tensor {} at {} starts no chunk",
            t.name,
            t.start
        );
    }
    assert_eq!(delta_records(&root), 0);
}

#[test]
fn damaged_zip_directories_are_stored_exactly() {
    let t = tmp();
    let s = Store::open(t.path().join("store")).unwrap();
    let good = torch_checkpoints(1, false).remove(0);
    let n = good.len();
    // Central directory damaged in different places, entries pointing past the end, a comment
    // that does not reach the end, and a truncated archive.
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for back in [1usize, 5, 10, 17, 22, 40, 60, 100] {
        let mut b = good.clone();
        b[n - back] ^= 0xff;
        cases.push(b);
    }
    cases.push(good[..n - 7].to_vec());
    cases.push(good[..n / 2].to_vec());
    let mut comment = good.clone();
    comment[n - 2] = 9;
    cases.push(comment);
    for (i, c) in cases.iter().enumerate() {
        let src = write_file(t.path(), &format!("bad{i}.pth"), c);
        s.put_file(&src, &key("bad.pth"), NewVersion::default(), None)
            .unwrap();
        assert!(read(&s, "bad.pth", None).unwrap() == *c, "case {i}");
    }
    assert!(s.verify().unwrap().ok);
}

#[test]
fn older_stores_and_remotes_are_marked_format_3() {
    let t = tmp();
    let root = t.path().join("store");
    let s = Store::open(&root).unwrap();
    put(&s, "a.safetensors", b"not a tensor file");
    let format = root.join("FORMAT");
    let v3: serde_json::Value = serde_json::from_slice(&std::fs::read(&format).unwrap()).unwrap();
    assert_eq!(v3["format"], 3);
    // A store written by an earlier version says 1 or 2: opening it marks it 3, data intact.
    for old in [1, 2] {
        let mut v = v3.clone();
        v["format"] = old.into();
        std::fs::write(&format, v.to_string()).unwrap();
        let s = Store::open(&root).unwrap();
        let now: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&format).unwrap()).unwrap();
        assert_eq!(now["format"], 3, "from {old}");
        assert_eq!(now["kind"], v3["kind"]);
        assert_eq!(
            read(&s, "a.safetensors", None).unwrap(),
            b"not a tensor file"
        );
    }
    // When marking it on open did not happen (the lock timed out, the write failed), the
    // first write marks it before it stores anything.
    let s = Store::open(&root).unwrap();
    let mut v2 = v3.clone();
    v2["format"] = 2.into();
    std::fs::write(&format, v2.to_string()).unwrap();
    put(&s, "b.bin", b"written by this version");
    let now: serde_json::Value = serde_json::from_slice(&std::fs::read(&format).unwrap()).unwrap();
    assert_eq!(now["format"], 3, "a write marks the store first");
    drop(s);
    // Formats this version does not know are refused.
    let mut v9 = v3.clone();
    v9["format"] = 9.into();
    std::fs::write(&format, v9.to_string()).unwrap();
    assert!(Store::open(&root).is_err());

    // A version-1 or 2 remote is re-marked 3 by a push and stays readable.
    let rdir = t.path().join("remote");
    let cfg = ml_dash::RemoteConfig::new(format!("file://{}", rdir.display()));
    std::fs::write(&format, v3.to_string()).unwrap();
    let s = Store::open(&root).unwrap();
    s.push(&ml_dash::Remote::open(&cfg).unwrap(), None).unwrap();
    let marker = rdir.join("ml-dash-remote.json");
    let version = || -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&marker).unwrap()).unwrap()
            ["version"]
            .clone()
    };
    assert_eq!(version(), 3);
    for (old, file) in [(1, "b.bin"), (2, "c.bin")] {
        std::fs::write(
            &marker,
            format!("{{\"format\":\"ml-dash remote\",\"version\":{old}}}\n"),
        )
        .unwrap();
        put(&s, file, b"more");
        s.push(&ml_dash::Remote::open(&cfg).unwrap(), None).unwrap();
        assert_eq!(version(), 3, "from {old}");
    }
    let other = Store::open(t.path().join("other")).unwrap();
    other
        .pull(&ml_dash::Remote::open(&cfg).unwrap(), None)
        .unwrap();
    assert_eq!(
        read(&other, "a.safetensors", None).unwrap(),
        b"not a tensor file"
    );
}

/// What `version_storage` (and `list --json`'s `storage`) says about a chain of checkpoints:
/// every byte is carried by some codec, the first version is whole (byte planes), the next two
/// are deltas of depth 1 and 2, the fourth starts a new chain; the CLI prints the same figures.
#[test]
fn version_storage_reports_codecs_and_delta_depth() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let ck = checkpoints(4, 100);
    let recs: Vec<_> = ck
        .iter()
        .map(|c| put(&s, "latest.safetensors", c))
        .collect();
    let st: Vec<_> = recs.iter().map(|r| s.version_storage(r).unwrap()).collect();
    for (v, c) in st.iter().zip(&ck) {
        let b = &v.codec_bytes;
        assert_eq!(b.whole + b.planes + b.delta, c.len() as u64, "{v:?}");
        assert_eq!(v.logical_bytes, c.len() as u64);
        assert!(
            v.stored_bytes > 0 && v.unique_bytes <= v.logical_bytes,
            "{v:?}"
        );
    }
    let depths: Vec<u32> = st.iter().map(|v| v.delta_depth).collect();
    assert_eq!(depths, [0, 1, 2, 0], "{st:?}");
    assert_eq!(st[0].codec_bytes.delta, 0);
    assert!(
        st[0].codec_bytes.planes > ck[0].len() as u64 / 2,
        "{:?}",
        st[0]
    );
    assert!(
        st[1].codec_bytes.delta > ck[1].len() as u64 / 2,
        "{:?}",
        st[1]
    );
    assert_eq!(st[1].new_bytes, recs[1].new_bytes);
    // The whole store's codec figures count each distinct chunk once.
    let all = s.stats(&ml_dash::Scope::default()).unwrap();
    let c = &all.codec_bytes;
    assert_eq!(c.whole + c.planes + c.delta, all.unique_bytes);
    drop(s);

    let out = run(t.path(), &["list", "--all-versions", "--json"]);
    let lines: Vec<serde_json::Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (l, v) in lines.iter().zip(&st) {
        assert_eq!(l["storage"]["deltaDepth"], v.delta_depth, "{l}");
        assert_eq!(
            l["storage"]["codecBytes"]["delta"], v.codec_bytes.delta,
            "{l}"
        );
        assert_eq!(l["storage"]["storedBytes"], v.stored_bytes, "{l}");
        // The record's own keys are still there, unchanged.
        assert_eq!(l["sizeBytes"], v.logical_bytes, "{l}");
    }
    let out = run(t.path(), &["stats", "--json"]);
    let j: serde_json::Value = serde_json::from_str(ok(&out)).unwrap();
    assert_eq!(j["codecBytes"]["planes"], c.planes);
}
