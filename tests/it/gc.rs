//! Garbage collection: exactly the unreferenced bytes are reclaimed, shared chunks survive,
//! a dry run changes nothing, and version numbering survives the collection.

use ml_dash::Error;

use crate::util::*;

const MIB: usize = 1 << 20;

#[test]
fn gc_reclaims_exactly_the_garbage() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    // A and B share A's first 2 MiB; C is unrelated. A and C are deleted.
    let a = random_bytes(10, 4 * MIB);
    let mut b = a[..2 * MIB].to_vec();
    b.extend_from_slice(&random_bytes(11, 2 * MIB));
    let c = random_bytes(12, MIB);
    exp.file(write_file(dir.path(), "a.bin", &a))
        .save()
        .unwrap();
    let rb = exp
        .file(write_file(dir.path(), "b.bin", &b))
        .save()
        .unwrap();
    exp.file(write_file(dir.path(), "c.bin", &c))
        .save()
        .unwrap();
    assert!(rb.new_bytes < 3 * MIB as u64, "B shares A's first half");
    exp.delete("/a.bin").unwrap();
    exp.delete("/c.bin").unwrap();

    // A reader opened before the collection keeps working after it.
    let mut early = exp.open("/b.bin", None).unwrap();

    // Dry run: nothing on disk changes.
    let before = snapshot_durable(&root);
    let total_before = packs_total(&root);
    let dry = exp
        .store()
        .gc(&ml_dash::GcOptions::new()
            .dry_run(true)
            .rewrite_threshold(0.0))
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(snapshot_durable(&root), before, "a dry run changed files");
    assert_eq!(dry.deleted_versions, 2);
    assert!(dry.garbage_chunks > 0);
    // Garbage: at least all of C and A's second half, at most all of A and C (+ headers).
    let lo = (c.len() + 2 * MIB - 256 * 1024) as u64;
    let hi = (c.len() + a.len()) as u64 + dry.garbage_chunks as u64 * RECORD_HEADER_LEN;
    assert!(
        dry.garbage_bytes >= lo && dry.garbage_bytes <= hi,
        "garbage {} not in {lo}..={hi}",
        dry.garbage_bytes
    );
    assert_eq!(
        list_everything(exp.store()).len(),
        3,
        "dry run keeps versions"
    );

    let rep = exp
        .store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(!rep.dry_run);
    assert_eq!(
        rep.garbage_bytes, dry.garbage_bytes,
        "dry run reported other garbage"
    );
    assert_eq!(rep.garbage_chunks, dry.garbage_chunks);
    assert_eq!(rep.deleted_versions, 2);
    let total_after = packs_total(&root);
    assert_eq!(
        total_before - total_after,
        rep.garbage_bytes,
        "packs shrank by {} but garbage was {}",
        total_before - total_after,
        rep.garbage_bytes
    );
    assert_eq!(rep.reclaimed_bytes, total_before - total_after);
    assert_eq!(dry.reclaimed_bytes, rep.reclaimed_bytes);
    assert_eq!(rep.remaining_garbage_bytes, 0);

    // B (sharing chunks with the deleted A) is intact; A and C are gone for good.
    same_bytes(
        read_via_download(&exp, "/b.bin", None),
        &b,
        "/b.bin via download",
    );
    same_bytes(read_via_reader(&exp, "/b.bin", None), &b, "/b.bin via Read");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut early, &mut got).unwrap();
    assert!(got == b, "reader opened before gc returned other bytes");
    assert!(matches!(
        exp.open("/a.bin", Some(1)),
        Err(Error::NotFound(_))
    ));
    let everything = list_everything(exp.store());
    assert_eq!(everything.len(), 1, "deleted versions leave the index");
    assert_eq!(everything[0].filename, "b.bin");
    let rep_v = exp.store().verify().unwrap();
    assert!(rep_v.ok, "{rep_v:?}");
    // Only B's manifest is left.
    assert_eq!(files_with_ext(&root.join("manifests"), "manifest").len(), 1);
    let st = exp.store().stats(&Default::default()).unwrap();
    assert_eq!(
        st.pack_bytes, total_after,
        "index pack lengths match the disk"
    );

    // Nothing left to collect.
    let again = exp
        .store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(
        (
            again.garbage_bytes,
            again.reclaimed_bytes,
            again.deleted_versions
        ),
        (0, 0, 0)
    );
    assert_eq!(packs_total(&root), total_after);

    // A deleted path continues its numbering after gc, and new uploads work.
    let r = exp
        .file(write_file(dir.path(), "a.bin", b"new a"))
        .save()
        .unwrap();
    assert_eq!(r.version, 2, "version numbers must not be reused after gc");
    same_bytes(
        read_via_reader(&exp, "/a.bin", None),
        b"new a",
        "/a.bin via Read",
    );
    // Re-uploading content whose chunks were collected stores them again.
    let rc = exp
        .file(write_file(dir.path(), "c2.bin", &c))
        .save()
        .unwrap();
    assert!(rc.new_bytes >= c.len() as u64);
    same_bytes(
        read_via_download(&exp, "/c2.bin", None),
        &c,
        "/c2.bin via download",
    );
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn whole_pack_garbage_is_deleted() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let a = random_bytes(20, MIB);
    exp.file(write_file(dir.path(), "a.bin", &a))
        .save()
        .unwrap();
    exp.delete("/a.bin").unwrap();
    let total = packs_total(&root);
    let n_packs = pack_files(&root).len();
    assert!(n_packs >= 1);
    let rep = exp.store().gc(&ml_dash::GcOptions::new()).unwrap();
    assert_eq!(rep.packs_deleted, n_packs);
    assert_eq!(rep.reclaimed_bytes, total);
    assert_eq!(packs_total(&root), 0);
    // The pack header is not chunk garbage.
    assert_eq!(rep.garbage_bytes, total - n_packs as u64 * PACK_HEADER_LEN);
    // The store keeps working after its active pack was removed.
    let b = random_bytes(21, 100_000);
    exp.file(write_file(dir.path(), "b.bin", &b))
        .save()
        .unwrap();
    same_bytes(read_via_reader(&exp, "/b.bin", None), &b, "/b.bin via Read");
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
fn gc_below_threshold_keeps_the_pack_and_reports_leftover() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let big = random_bytes(30, 3 * MIB);
    let small = random_bytes(31, 100_000);
    exp.file(write_file(dir.path(), "big.bin", &big))
        .save()
        .unwrap();
    exp.file(write_file(dir.path(), "small.bin", &small))
        .save()
        .unwrap();
    exp.delete("/small.bin").unwrap();
    let before = packs_total(&root);
    let rep = exp.store().gc(&ml_dash::GcOptions::new()).unwrap();
    assert_eq!(rep.deleted_versions, 1);
    assert_eq!(rep.packs_rewritten + rep.packs_deleted, 0);
    assert_eq!(rep.reclaimed_bytes, 0);
    assert_eq!(rep.remaining_garbage_bytes, rep.garbage_bytes);
    assert!(rep.garbage_bytes >= small.len() as u64);
    assert_eq!(packs_total(&root), before);
    same_bytes(
        read_via_download(&exp, "/big.bin", None),
        &big,
        "/big.bin via download",
    );
    assert!(exp.store().verify().unwrap().ok);
    // A later gc with a lower threshold reclaims the leftover exactly.
    let rep2 = exp
        .store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(rep2.reclaimed_bytes, rep.remaining_garbage_bytes);
    assert_eq!(before - packs_total(&root), rep.remaining_garbage_bytes);
    same_bytes(
        read_via_reader(&exp, "/big.bin", None),
        &big,
        "/big.bin via Read",
    );
    assert!(exp.store().verify().unwrap().ok);
}

#[test]
#[allow(
    clippy::cast_possible_truncation,
    reason = "in an assertion: a count of test packs"
)]
fn gc_across_many_small_packs() {
    let dir = tmp();
    let root = dir.path().join("store");
    // 1 MiB packs (the smallest allowed): every upload spans several packs.
    let exp = ml_dash::Experiment::new("e", "p")
        .local_path(&root)
        .options(ml_dash::StoreOptions::default().pack_target(1 << 20))
        .open()
        .unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(40 + i, 900_000)).collect();
    for (i, f) in files.iter().enumerate() {
        exp.file(write_file(dir.path(), &format!("f{i}"), f))
            .save()
            .unwrap();
    }
    let packs = pack_files(&root);
    assert!(packs.len() >= 5, "only {} packs", packs.len());
    for p in &packs {
        assert!(std::fs::metadata(p).unwrap().len() <= (1 << 20) + 300 * 1024);
    }
    assert!(exp.store().verify().unwrap().ok);
    for i in [0, 2, 4] {
        exp.delete(&format!("/f{i}")).unwrap();
    }
    let before = packs_total(&root);
    let dry = exp
        .store()
        .gc(&ml_dash::GcOptions::new()
            .dry_run(true)
            .rewrite_threshold(0.0))
        .unwrap();
    let rep = exp
        .store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(dry.garbage_bytes, rep.garbage_bytes);
    assert!(rep.garbage_bytes >= 3 * 900_000);
    // Packs that held only garbage go entirely (their 32-byte headers too); the others are
    // rewritten without their garbage.
    let drop = before - packs_total(&root);
    assert_eq!(
        drop,
        rep.garbage_bytes + PACK_HEADER_LEN * rep.packs_deleted as u64,
        "{rep:?}"
    );
    assert_eq!(rep.reclaimed_bytes, drop);
    for i in [1, 3, 5] {
        same_bytes(
            read_via_download(&exp, &format!("/f{i}"), None),
            &files[i],
            &format!("/f{i} after gc"),
        );
    }
    let v = exp.store().verify().unwrap();
    assert!(v.ok, "{v:?}");
    // New uploads after the rewrite land in packs the index knows.
    let more = random_bytes(49, 1_500_000);
    exp.file(write_file(dir.path(), "more", &more))
        .save()
        .unwrap();
    same_bytes(read_via_reader(&exp, "/more", None), &more, "/more");
    let st = exp.store().stats(&Default::default()).unwrap();
    assert_eq!(st.pack_bytes, packs_total(&root));
    assert_eq!(st.packs as usize, pack_files(&root).len());
}

#[test]
fn gc_never_copies_damage_forward() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    // One pack: garbage A, damaged live B, healthy live C.
    let a = random_bytes(60, 600_000);
    let b = random_bytes(61, 600_000);
    let c = random_bytes(62, 600_000);
    exp.file(write_file(dir.path(), "a", &a)).save().unwrap();
    let a_end = packs_total(&root);
    exp.file(write_file(dir.path(), "b", &b)).save().unwrap();
    let b_end = packs_total(&root);
    exp.file(write_file(dir.path(), "c", &c)).save().unwrap();
    assert_eq!(pack_files(&root).len(), 1);
    exp.delete("/a").unwrap();
    let pack = pack_files(&root)[0].clone();
    let rec = pack_records(&pack)
        .into_iter()
        .find(|r| r.offset >= a_end && r.end() <= b_end)
        .unwrap();
    flip_byte(&pack, rec.data_start() + rec.stored_len / 2);

    // Rewriting the pack would copy B's damaged chunk: gc must leave that pack alone (and
    // say so), not launder it.
    let rep = exp
        .store()
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(rep.packs_rewritten, 0, "{rep:?}");
    assert_eq!(
        pack_files(&root),
        vec![pack.clone()],
        "the pack is where it was"
    );
    assert!(
        rep.problems.iter().any(|p| p.contains("fails its check")),
        "gc does not say why it left the pack: {rep:?}"
    );
    // Whatever happened, no wrong bytes are ever served and C is intact.
    let fresh = experiment(&root, "p", "e");
    let mut out = Vec::new();
    assert!(fresh.download_to("/b", None, &mut out).is_err());
    same_bytes(&out[..], &b[..out.len()], "bytes before the damage");
    same_bytes(read_via_download(&fresh, "/c", None), &c, "/c");
    let v = fresh.store().verify().unwrap();
    assert!(!v.ok);
    assert_eq!(v.damaged_files.len(), 1, "{:?}", v.damaged_files);
    assert!(v.damaged_files[0].starts_with("local/p/e/b v1"));
}

/// A version that was updated, deleted and collected leaves no record update behind that a
/// rebuild would take for a lost version.
#[test]
fn a_collected_version_with_updates_is_not_reported_lost_by_repair() {
    let dir = tmp();
    let store = ml_dash::Store::open(dir.path().join("store")).unwrap();
    let key = ml_dash::ExperimentKey::new("local", "p", "e")
        .unwrap()
        .file("/".into(), "notes.txt".into());
    let rec = store
        .put_reader(&b"v1"[..], &key, ml_dash::NewVersion::default(), None)
        .unwrap();
    let kept = store
        .put_reader(
            &b"other"[..],
            &ml_dash::ExperimentKey::new("local", "p", "e")
                .unwrap()
                .file("/".into(), "kept.txt".into()),
            ml_dash::NewVersion::default(),
            None,
        )
        .unwrap();
    let changes = ml_dash::RecordChanges::new().description("first try");
    store.update(rec.id, &changes).unwrap();
    store.update(kept.id, &changes).unwrap();
    store.delete(&key).unwrap();
    store.gc(&ml_dash::GcOptions::new()).unwrap();
    let rep = store.rebuild_index().unwrap();
    assert!(rep.lost_versions.is_empty(), "{rep:?}");
    assert!(rep.damaged.is_empty(), "{rep:?}");
    // The update of the version that stays is kept.
    let listed = list_everything(&store);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].description.as_deref(), Some("first try"));
    assert!(store.verify().unwrap().ok);
}
