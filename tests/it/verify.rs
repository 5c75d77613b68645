//! `verify` and the read path against damaged packs and manifests: damage is found and named,
//! and no read ever returns wrong bytes.

use std::io::Read;

use crate::util::*;

const MIB: usize = 1 << 20;

#[test]
fn healthy_store_verifies() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let rep = exp.store().verify().unwrap();
    assert!(rep.ok && rep.damaged_files.is_empty() && rep.problems.is_empty());
    assert_eq!((rep.packs, rep.chunks, rep.versions), (0, 0, 0));
    for i in 0..3u64 {
        let data = random_bytes(i, 200_000);
        exp.file(write_file(dir.path(), &format!("f{i}"), &data))
            .save()
            .unwrap();
    }
    exp.delete("/f0").unwrap();
    let rep = exp.store().verify().unwrap();
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.versions, 3);
    assert_eq!(rep.events, 1);
    assert_eq!(rep.packs, pack_files(&root).len());
    assert!(rep.chunks >= 3);
}

/// Store `victim` first (so its chunk records come first in the pack), then `bystander`.
/// Returns the victim's record range in the pack: [32, end).
fn two_files(
    dir: &std::path::Path,
    root: &std::path::Path,
) -> (ml_dash::Experiment, Vec<u8>, Vec<u8>, u64) {
    let exp = experiment(root, "proj", "exp");
    let victim = random_bytes(50, MIB + 12345);
    let bystander = random_bytes(51, 700_000);
    exp.file(write_file(dir, "victim.bin", &victim))
        .prefix("/models/ckpt")
        .save()
        .unwrap();
    let packs = pack_files(root);
    assert_eq!(packs.len(), 1);
    let victim_end = packs_total(root);
    exp.file(write_file(dir, "bystander.bin", &bystander))
        .prefix("/models")
        .save()
        .unwrap();
    assert_eq!(pack_files(root), packs, "both files share one pack");
    (exp, victim, bystander, victim_end)
}

#[test]
#[allow(
    clippy::cast_possible_truncation,
    reason = "in an assertion: an offset in a test file of a few MB"
)]
fn flipped_chunk_byte_is_found_and_never_read_back() {
    let dir = tmp();
    let root = dir.path().join("store");
    let (exp, victim, bystander, victim_end) = two_files(dir.path(), &root);
    let pack = pack_files(&root)[0].clone();
    let recs: Vec<PackRecord> = pack_records(&pack)
        .into_iter()
        .filter(|r| r.end() <= victim_end)
        .collect();
    assert!(recs.len() >= 3, "victim has several chunks");
    // The middle record of the victim, the middle byte of its data.
    let rec = recs[recs.len() / 2];
    assert_eq!(rec.codec, 0, "random data is stored raw");
    flip_byte(&pack, rec.data_start() + rec.stored_len / 2);

    let rep = exp.store().verify().unwrap();
    assert!(!rep.ok);
    assert_eq!(rep.damaged_files.len(), 1, "{:?}", rep.damaged_files);
    assert!(
        rep.damaged_files[0].starts_with("local/proj/exp/models/ckpt/victim.bin v1"),
        "{:?}",
        rep.damaged_files
    );
    assert!(!rep.problems.is_empty(), "the bad record is reported");

    // Read: an error, and whatever came before the error is a true prefix.
    let mut r = exp.open("/models/ckpt/victim.bin", None).unwrap();
    let mut got = Vec::new();
    let res = r.read_to_end(&mut got);
    assert!(res.is_err(), "reading damaged data must fail");
    assert!(got.len() < victim.len());
    assert!(got[..] == victim[..got.len()], "read returned wrong bytes");
    // Seeking: the chunk before the damaged one reads fine, the damaged one fails.
    // (All victim records are raw, so file offsets are sums of stored lengths.)
    assert!(recs.iter().all(|r| r.codec == 0));
    let k = recs.len() / 2;
    let chunk_start: u64 = recs[..k].iter().map(|r| r.stored_len).sum();
    let mut r = exp.open("/models/ckpt/victim.bin", None).unwrap();
    let mut buf = [0u8; 1];
    std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(chunk_start - 1)).unwrap();
    r.read_exact(&mut buf).unwrap();
    assert_eq!(buf[0], victim[chunk_start as usize - 1]);
    std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(chunk_start + 10)).unwrap();
    assert!(
        r.read(&mut buf).is_err(),
        "reading the damaged chunk must fail"
    );

    // download_to a writer: an error (bytes before it are a true prefix).
    let mut out = Vec::new();
    assert!(
        exp.download_to("/models/ckpt/victim.bin", None, &mut out)
            .is_err()
    );
    assert!(out.len() < victim.len() && out[..] == victim[..out.len()]);

    // download to a path: an error, no destination, no temp file left behind.
    let outdir = dir.path().join("downloads");
    std::fs::create_dir(&outdir).unwrap();
    let dest = outdir.join("victim.bin");
    assert!(exp.download("/models/ckpt/victim.bin", &dest).is_err());
    assert!(!dest.exists(), "damaged download left a file");
    assert!(
        dir_names(&outdir).is_empty(),
        "left behind: {:?}",
        dir_names(&outdir)
    );
    // An existing destination is not replaced by a failed download.
    std::fs::write(&dest, b"precious").unwrap();
    assert!(exp.download("/models/ckpt/victim.bin", &dest).is_err());
    same_bytes(
        std::fs::read(&dest).unwrap(),
        b"precious",
        "existing destination",
    );
    assert_eq!(dir_names(&outdir), vec!["victim.bin"]);

    // The other file in the same pack is unaffected.
    same_bytes(
        read_via_download(&exp, "/models/bystander.bin", None),
        &bystander,
        "/models/bystander.bin via download",
    );
    let dest2 = outdir.join("bystander.bin");
    exp.download("/models/bystander.bin", &dest2).unwrap();
    same_bytes(
        std::fs::read(&dest2).unwrap(),
        &bystander,
        "downloaded file",
    );
}

#[test]
fn flipped_record_header_byte_is_found() {
    let dir = tmp();
    let root = dir.path().join("store");
    let (exp, victim, bystander, victim_end) = two_files(dir.path(), &root);
    let pack = pack_files(&root)[0].clone();
    let recs: Vec<PackRecord> = pack_records(&pack)
        .into_iter()
        .filter(|r| r.end() <= victim_end)
        .collect();
    // The raw-length field of the victim's last record.
    let rec = *recs.last().unwrap();
    flip_byte(&pack, rec.offset + 9);
    let rep = exp.store().verify().unwrap();
    assert!(!rep.ok);
    assert!(
        rep.damaged_files
            .iter()
            .any(|f| f.starts_with("local/proj/exp/models/ckpt/victim.bin v1")),
        "{:?}",
        rep.damaged_files
    );
    let mut out = Vec::new();
    assert!(
        exp.download_to("/models/ckpt/victim.bin", None, &mut out)
            .is_err()
    );
    assert!(out.len() < victim.len() && out[..] == victim[..out.len()]);
    // Records after the damaged header are located through the index: still readable.
    same_bytes(
        read_via_reader(&exp, "/models/bystander.bin", None),
        &bystander,
        "/models/bystander.bin via Read",
    );
}

#[test]
fn flipped_manifest_byte_is_found() {
    let dir = tmp();
    let root = dir.path().join("store");
    let (exp, _victim, bystander, _) = two_files(dir.path(), &root);
    let rec = exp.get("/models/ckpt/victim.bin", None).unwrap();
    let manifest = root.join("manifests").join(format!("{}.manifest", rec.id));
    assert!(manifest.exists(), "manifest file for {}", rec.id);
    let len = std::fs::metadata(&manifest).unwrap().len();
    flip_byte(&manifest, len / 2);

    let rep = exp.store().verify().unwrap();
    assert!(!rep.ok);
    assert_eq!(rep.damaged_files.len(), 1, "{:?}", rep.damaged_files);
    assert!(
        rep.damaged_files[0].starts_with("local/proj/exp/models/ckpt/victim.bin v1"),
        "{:?}",
        rep.damaged_files
    );
    assert!(exp.open("/models/ckpt/victim.bin", None).is_err());
    let dest = dir.path().join("m.out");
    assert!(exp.download("/models/ckpt/victim.bin", &dest).is_err());
    assert!(!dest.exists());
    same_bytes(
        read_via_reader(&exp, "/models/bystander.bin", None),
        &bystander,
        "/models/bystander.bin via Read",
    );

    // A damaged manifest header is found as well.
    let rec2 = exp.get("/models/bystander.bin", None).unwrap();
    let m2 = root.join("manifests").join(format!("{}.manifest", rec2.id));
    flip_byte(&m2, 2);
    let rep = exp.store().verify().unwrap();
    assert_eq!(rep.damaged_files.len(), 2, "{:?}", rep.damaged_files);
}

#[test]
fn truncated_pack_is_found() {
    let dir = tmp();
    let root = dir.path().join("store");
    let (exp, _victim, _bystander, _) = two_files(dir.path(), &root);
    let pack = pack_files(&root)[0].clone();
    let len = std::fs::metadata(&pack).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f.set_len(len - 1000).unwrap();
    drop(f);
    let rep = exp.store().verify().unwrap();
    assert!(!rep.ok);
    assert!(
        rep.damaged_files
            .iter()
            .any(|f| f.starts_with("local/proj/exp/models/bystander.bin v1")),
        "{rep:?}"
    );
    assert!(
        exp.download_to("/models/bystander.bin", None, &mut Vec::new())
            .is_err()
    );
}

#[test]
fn damaged_event_is_found() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    exp.file(write_file(dir.path(), "x", b"x")).save().unwrap();
    exp.file(write_file(dir.path(), "y", b"y")).save().unwrap();
    exp.delete("/x").unwrap();
    assert!(exp.store().verify().unwrap().ok);
    let events = files_with_ext(&root.join("events"), "event");
    assert_eq!(events.len(), 1);
    let len = std::fs::metadata(&events[0]).unwrap().len();
    flip_byte(&events[0], len - 3);
    let rep = exp.store().verify().unwrap();
    assert!(!rep.ok);
    assert!(!rep.problems.is_empty());
    // A rebuild reports the damaged event instead of silently dropping it.
    let rb = exp.store().rebuild_index().unwrap();
    assert_eq!(rb.damaged.len(), 1, "{:?}", rb.damaged);
}
