//! Uploads of many files as one commit (`UploadBatch`, `put_files`, `ml-dash upload A B C`):
//! all versions visible together, consecutive versions for a path given twice, bad input in
//! any file commits and writes nothing, an interrupted commit is settled all-or-none (also by
//! `repair`).

use std::path::{Path, PathBuf};

use ml_dash::testing::ImportedVersion;
use ml_dash::testing::{FaultKind, Faults};
use ml_dash::{Error, ExperimentKey, FileKey, NewVersion, Store, StoreOptions};
use serde_json::json;

use crate::util::*;

const MIB: usize = 1 << 20;

fn key(name: &str) -> FileKey {
    ExperimentKey::new("local", "p", "e")
        .unwrap()
        .file("/b".into(), name.into())
}

/// Five sources: tiny, empty, one read through the ingest pipeline (over 1 MiB), and two that
/// share most of their chunks.
fn five_files(dir: &Path, seed: u64) -> Vec<(PathBuf, FileKey, Vec<u8>)> {
    let shared = random_bytes(seed + 2, 300_000);
    let mut twice = shared.clone();
    twice.extend_from_slice(&random_bytes(seed + 3, 70_000));
    let files = [
        ("tiny.txt", random_bytes(seed, 100)),
        ("empty.bin", Vec::new()),
        ("big.bin", random_bytes(seed + 1, 2 * MIB + 5)),
        ("shared.bin", shared),
        ("twice.bin", twice),
    ];
    files
        .into_iter()
        .map(|(n, d)| (write_file(dir, &format!("{seed}/{n}"), &d), key(n), d))
        .collect()
}

fn new_version(i: usize) -> NewVersion {
    NewVersion {
        metadata: json!({"i": i}),
        ..Default::default()
    }
}

fn read(store: &Store, k: &FileKey, version: Option<u32>) -> Vec<u8> {
    let mut v = Vec::new();
    store.download_to(k, version, &mut v).expect("read back");
    v
}

#[test]
fn a_batch_commits_every_file_and_reads_back() {
    let dir = tmp();
    let store = Store::open(dir.path().join("store")).unwrap();
    let files = five_files(dir.path(), 1);
    let args: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (p, k, _))| (p.clone(), k.clone(), new_version(i)))
        .collect();
    let recs = store.put_files(&args).unwrap();
    assert_eq!(recs.len(), 5);
    for (i, ((_, k, data), r)) in files.iter().zip(&recs).enumerate() {
        assert_eq!(r.key(), *k, "records come back in order");
        assert_eq!((r.version, r.size_bytes), (1, data.len() as u64));
        assert_eq!(r.checksum.to_hex(), sha256_hex(data));
        assert_eq!(r.metadata, json!({"i": i}));
        same_bytes(read(&store, k, None), data, &k.display());
    }
    // One pack written for the whole batch; the shared chunk stored once.
    assert_eq!(pack_files(store.root()).len(), 1);
    let stats = store.stats(&Default::default()).unwrap();
    assert!(stats.unique_bytes < files.iter().map(|f| f.2.len() as u64).sum::<u64>());
    // Ids ascend in batch order (the order files were committed).
    assert!(recs.windows(2).all(|w| w[0].id < w[1].id));
    assert!(store.verify().unwrap().ok);
    // Another handle (a new process would do the same) sees all of them.
    let again = Store::open(store.root()).unwrap();
    assert_eq!(list_live(&again).len(), 5);
    // An empty batch commits nothing and is fine.
    assert!(store.upload_batch().commit().unwrap().is_empty());
}

#[test]
fn the_same_path_twice_gets_consecutive_versions() {
    let dir = tmp();
    let store = Store::open(dir.path().join("store")).unwrap();
    let k = key("model.bin");
    let v1 = random_bytes(10, 5000);
    store
        .put_reader(&v1[..], &k, NewVersion::default(), None)
        .unwrap();
    let (a, b) = (random_bytes(11, 7000), random_bytes(12, 3000));
    let other = key("other.bin");
    let mut batch = store.upload_batch();
    batch.file(
        write_file(dir.path(), "a", &a),
        k.clone(),
        NewVersion::default(),
    );
    batch.reader(&b"other"[..], other.clone(), NewVersion::default());
    batch.reader(&b[..], k.clone(), NewVersion::default());
    let recs = batch.commit().unwrap();
    let versions: Vec<u32> = recs.iter().map(|r| r.version).collect();
    assert_eq!(versions, [2, 1, 3]);
    same_bytes(read(&store, &k, Some(1)), &v1, "v1");
    same_bytes(read(&store, &k, Some(2)), &a, "v2");
    same_bytes(read(&store, &k, Some(3)), &b, "v3");
    same_bytes(read(&store, &k, None), &b, "latest");
    // Numbering goes on after a delete of everything.
    store.delete(&k).unwrap();
    let recs = store
        .put_files(&[
            (
                write_file(dir.path(), "c", b"c"),
                k.clone(),
                NewVersion::default(),
            ),
            (
                write_file(dir.path(), "d", b"d"),
                k.clone(),
                NewVersion::default(),
            ),
        ])
        .unwrap();
    assert_eq!((recs[0].version, recs[1].version), (4, 5));
    assert!(store.verify().unwrap().ok);
}

#[test]
fn bad_input_in_the_third_file_commits_nothing() {
    let dir = tmp();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    store
        .put_reader(
            &b"before"[..],
            &key("before.txt"),
            NewVersion::default(),
            None,
        )
        .unwrap();
    let before = snapshot_durable(&root);
    let good1 = write_file(dir.path(), "g1", &random_bytes(20, 4000));
    let good2 = write_file(dir.path(), "g2", &random_bytes(21, 2 * MIB));
    let later = write_file(dir.path(), "g4", &random_bytes(22, 100));
    let missing = dir.path().join("missing");
    let bad_name = ExperimentKey::new("local", "p", "e")
        .unwrap()
        .file("/b".into(), "a/b".into());
    let cases: Vec<(&str, PathBuf, FileKey, NewVersion)> = vec![
        ("missing source", missing, key("x"), NewVersion::default()),
        (
            "directory",
            dir.path().to_path_buf(),
            key("x"),
            NewVersion::default(),
        ),
        (
            "file name with /",
            later.clone(),
            bad_name,
            NewVersion::default(),
        ),
        (
            "bad metadata",
            later.clone(),
            key("x"),
            NewVersion {
                metadata: json!([1, 2]),
                ..Default::default()
            },
        ),
        (
            "empty tag",
            later.clone(),
            key("x"),
            NewVersion {
                tags: vec![String::new()],
                ..Default::default()
            },
        ),
    ];
    for (what, src, k, v) in cases {
        let r = store.put_files(&[
            (good1.clone(), key("g1"), NewVersion::default()),
            (good2.clone(), key("g2"), NewVersion::default()),
            (src, k, v),
            (later.clone(), key("g4"), NewVersion::default()),
        ]);
        assert!(r.is_err(), "{what}: accepted");
        assert_eq!(list_everything(&store).len(), 1, "{what}: stored something");
        assert_eq!(
            snapshot_durable(&root),
            before,
            "{what}: wrote to packs, manifests or events"
        );
    }
    // A source that changes while it is read (a /proc file says 0 bytes, then yields more) is
    // found only while reading: nothing is committed (its chunks are left for gc).
    let r = store.put_files(&[
        (good1.clone(), key("g1"), NewVersion::default()),
        (good2.clone(), key("g2"), NewVersion::default()),
        (
            PathBuf::from("/proc/self/status"),
            key("status"),
            NewVersion::default(),
        ),
    ]);
    assert!(matches!(r, Err(Error::SourceChanged { .. })), "{r:?}");
    assert_eq!(list_everything(&store).len(), 1);
    assert!(store.verify().unwrap().ok);
    // The store still takes the good files (and stores their bytes again where needed).
    let recs = store
        .put_files(&[
            (good1, key("g1"), NewVersion::default()),
            (good2, key("g2"), NewVersion::default()),
        ])
        .unwrap();
    assert_eq!(recs.len(), 2);
    assert!(store.verify().unwrap().ok);
}

#[test]
fn commit_each_keeps_the_files_that_check_out() {
    let dir = tmp();
    let store = Store::open(dir.path().join("store")).unwrap();
    let data: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(30 + i, 1000 + ml_dash::testing::usize_from(i)))
        .collect();
    let mut batch = store.upload_batch();
    for (i, d) in data.iter().enumerate() {
        let src = write_file(dir.path(), &format!("f{i}"), d);
        let mut imported = ImportedVersion {
            uploaded_at: "2025-01-02T03:04:05.000006Z".into(),
            updated_at: "2025-01-02T03:04:05.000006Z".into(),
            checksum: sha256_hex(d).parse().unwrap(),
            size_bytes: d.len() as u64,
        };
        if i == 1 {
            imported.size_bytes += 1; // bytes that do not match their record
        }
        ml_dash::testing::imported_file(
            &mut batch,
            src,
            key(&format!("f{i}")),
            NewVersion::default(),
            imported,
        );
    }
    batch.file(dir.path().join("gone"), key("gone"), NewVersion::default());
    let results = batch.commit_each().unwrap();
    assert_eq!(results.len(), 5);
    assert!(
        matches!(results[1], Err(Error::Corrupt { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[4].is_err());
    for i in [0, 2, 3] {
        let r = results[i].as_ref().unwrap();
        assert_eq!(r.uploaded_at, "2025-01-02T03:04:05.000006Z");
        same_bytes(
            read(&store, &key(&format!("f{i}")), None),
            &data[i],
            "imported",
        );
    }
    assert_eq!(list_everything(&store).len(), 3);
    assert!(store.verify().unwrap().ok);
}

/// After a failed durable step in the middle of a batch's commit, neither reopening the store
/// nor rebuilding its index (`repair`, before anything else touches it) shows part of it.
#[test]
fn an_interrupted_batch_is_settled_all_or_none_by_open_and_by_repair() {
    for rebuild_first in [false, true] {
        // Failures that left some, not all, of the batch's manifests in place.
        let mut partial = 0;
        for n in 1.. {
            let dir = tmp();
            let root = dir.path().join("store");
            Store::open(&root)
                .unwrap()
                .put_reader(&b"base"[..], &key("base"), NewVersion::default(), None)
                .unwrap();
            let files = five_files(dir.path(), 40);
            let faults = Faults::fail_nth(FaultKind::Write, n);
            let store =
                Store::open_with(&root, StoreOptions::default().faults(faults.clone())).unwrap();
            let args: Vec<_> = files
                .iter()
                .map(|(p, k, _)| (p.clone(), k.clone(), NewVersion::default()))
                .collect();
            let r = store.put_files(&args);
            if !faults.fired() {
                r.unwrap();
                assert!(n > 5, "fewer than 5 writes");
                break;
            }
            assert!(r.is_err());
            drop(store);
            let placed = files_with_ext(&root.join("manifests"), "manifest").len() - 1;
            if placed > 0 && placed < 5 {
                partial += 1;
            }
            let store = Store::open(&root).unwrap();
            if rebuild_first {
                store.rebuild_index().unwrap();
            }
            let seen = list_everything(&store).len() - 1;
            assert!(
                seen == 0 || seen == 5,
                "write {n} failed (rebuild first: {rebuild_first}): {seen} of 5 versions visible"
            );
            for (_, k, data) in &files {
                match store.resolve(k, None) {
                    Ok(_) => same_bytes(read(&store, k, None), data, &k.display()),
                    Err(Error::NotFound(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(store.verify().unwrap().ok, "write {n}");
        }
        assert!(
            partial >= 3,
            "only {partial} failures left part of the batch in place"
        );
    }
}

/// `ml-dash upload A B C`: one commit, records printed as before; a file that changes while it
/// is read, or is missing, commits none of them.
#[test]
fn cli_upload_of_many_files_is_one_commit() {
    let dir = tmp();
    let root = dir.path().join("store");
    let files: Vec<PathBuf> = (0..4)
        .map(|i| write_file(dir.path(), &format!("f{i}.bin"), &random_bytes(50 + i, 100)))
        .collect();
    let mut args: Vec<&str> = vec!["upload"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args.extend(["--project", "p", "--experiment", "e", "--json"]);
    let out = json_lines(ok(&run(&root, &args)));
    let names: Vec<&str> = out
        .iter()
        .map(|r| r["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["f0.bin", "f1.bin", "f2.bin", "f3.bin"]);
    for bad in ["/proc/self/status", "/nonexistent/file"] {
        let mut args: Vec<&str> = vec!["upload"];
        args.extend(files[..2].iter().map(|f| f.to_str().unwrap()));
        args.extend([bad, "--project", "p", "--experiment", "e2", "--json"]);
        let r = run(&root, &args);
        assert_eq!(r.0, 2, "{bad}: {r:?}");
        assert_eq!(r.1, "", "{bad}: printed records");
        let listed = ok(&run(
            &root,
            &["list", "--experiment", "e2", "--project", "p", "--json"],
        ))
        .to_string();
        assert_eq!(listed, "", "{bad}: committed something");
    }
    assert_eq!(run(&root, &["verify"]).0, 0);
}

/// Bytes of every file under `dir` (pack files grow when anything is appended).
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_stream_that_does_not_match_its_declared_checksum_stores_nothing() {
    let d = tmp();
    let store = Store::open(d.path().join("s")).unwrap();
    // Something stored first, so that an open pack exists to be (not) appended to.
    store
        .put_reader(
            &b"first"[..],
            &key("first.bin"),
            NewVersion::default(),
            None,
        )
        .unwrap();
    let packs = d.path().join("s/packs");
    // Small (whole in memory before ingest) and large (ingested outside the store lock).
    for (i, size) in [100 * 1024, 24 * MIB].into_iter().enumerate() {
        let before = bytes_under(&packs);
        let data = random_bytes(40 + i as u64, size);
        let mut wrong = data.clone();
        wrong[size / 2] ^= 1;
        let declared: ml_dash::Sha256 = sha256_hex(&data).parse().unwrap();
        let mut b = store.upload_batch();
        b.reader_checked(&wrong[..], key("x.bin"), NewVersion::default(), declared);
        let err = b.commit().unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains("nothing was stored"), "{err}");
        assert!(store.resolve(&key("x.bin"), None).is_err());
        assert!(files_with_ext(&packs, "incoming").is_empty());
        assert_eq!(
            bytes_under(&packs),
            before,
            "a refused upload left bytes in packs/"
        );
        // The same bytes, declared right, are stored as version 1: no number was used up.
        let mut b = store.upload_batch();
        b.reader_checked(
            &data[..],
            key(&format!("ok{i}.bin")),
            NewVersion::default(),
            declared,
        );
        assert_eq!(b.commit().unwrap()[0].version, 1);
        let mut b = store.upload_batch();
        b.reader_checked(&data[..], key("x.bin"), NewVersion::default(), declared);
        let r = b.commit().unwrap();
        assert_eq!(r[0].checksum, declared);
        store.delete(&key("x.bin")).unwrap();
    }
    ok(&run(&d.path().join("s"), &["verify"]));
}

/// A stream whose sender declares its checksum after the bytes: `declared` is set when the
/// reader reaches the end, as a server does when the checksum part follows the file.
struct DeclaresAtEnd<'a> {
    data: &'a [u8],
    at: usize,
    declared: Option<ml_dash::Sha256>,
    cell: std::sync::Arc<std::sync::OnceLock<ml_dash::Sha256>>,
}

impl std::io::Read for DeclaresAtEnd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at).min(1 << 20);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        if n == 0
            && let Some(c) = self.declared.take()
        {
            let _ = self.cell.set(c);
        }
        Ok(n)
    }
}

#[test]
fn a_checksum_declared_after_the_stream_is_checked_before_anything_is_stored() {
    let d = tmp();
    let store = Store::open(d.path().join("s")).unwrap();
    let packs = d.path().join("s/packs");
    for (i, size) in [100 * 1024, 17 * MIB].into_iter().enumerate() {
        let data = random_bytes(60 + i as u64, size);
        let right: ml_dash::Sha256 = sha256_hex(&data).parse().unwrap();
        let wrong: ml_dash::Sha256 = sha256_hex(&data[1..]).parse().unwrap();
        let put = |name: &str, declared: Option<ml_dash::Sha256>| {
            let cell = std::sync::Arc::new(std::sync::OnceLock::new());
            let src = DeclaresAtEnd {
                data: &data,
                at: 0,
                declared,
                cell: cell.clone(),
            };
            let mut b = store.upload_batch();
            b.reader_checked_at_end(src, key(name), NewVersion::default(), cell);
            b.commit()
        };
        let (x, y) = (format!("x{i}.bin"), format!("y{i}.bin"));
        let before = bytes_under(&packs);
        let err = put(&x, Some(wrong)).unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        assert!(store.resolve(&key(&x), None).is_err());
        assert!(files_with_ext(&packs, "incoming").is_empty());
        assert_eq!(bytes_under(&packs), before, "a refused upload left bytes");
        // Declared right: stored, as version 1.
        let r = put(&x, Some(right)).unwrap();
        assert_eq!((r[0].version, r[0].checksum), (1, right));
        // Nothing declared by the end: stored unchecked, with the checksum computed.
        let r = put(&y, None).unwrap();
        assert_eq!(r[0].checksum, right);
        store.delete(&key(&x)).unwrap();
        store.delete(&key(&y)).unwrap();
    }
    drop(store);
    ok(&run(&d.path().join("s"), &["verify"]));
}
