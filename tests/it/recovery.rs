//! The index is derived data: rebuilding it (library `rebuild_index`, or deleting
//! `<root>/index` and running `ml-dash repair`) must give back exactly the same store.

use ml_dash::{Error, FileRecord, Store};

use crate::util::*;

struct Setup {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    contents: Vec<(String, u32, Vec<u8>)>,
}

/// Several files and versions, one path deleted, one version's description, tags and
/// metadata updated.
fn populate() -> Setup {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "proj", "exp");
    let exp2 = experiment(&root, "proj", "other");
    let mut contents = Vec::new();
    let mut up = |e: &ml_dash::Experiment, prefix: &str, name: &str, seed: u64, n: usize| {
        let data = random_bytes(seed, n);
        let r = e
            .file(write_file(dir.path(), name, &data))
            .prefix(prefix)
            .tags(["t1"])
            .description(format!("about {name}"))
            .metadata(serde_json::json!({"seed": seed, "nested": {"n": n}}))
            .save()
            .unwrap();
        contents.push((format!("{prefix}/{name}"), r.version, data));
        r
    };
    up(&exp, "/models", "a.pth", 1, 300_000);
    up(&exp, "/models", "a.pth", 2, 310_000);
    let b = up(&exp, "/models", "b.pth", 3, 50_000);
    up(&exp, "/logs", "gone.log", 4, 20_000);
    up(&exp, "/logs", "gone.log", 5, 20_000);
    up(&exp2, "/data", "c.npy", 6, 400_000);
    exp.delete("/logs/gone.log").unwrap();
    exp.store()
        .update(
            b.id,
            &ml_dash::RecordChanges {
                description: Some(Some("updated description".into())),
                tags: Some(vec!["best".into(), "v2".into()]),
                metadata: Some(serde_json::json!({"score": 0.93, "list": [1, 2, 3]})),
            },
        )
        .unwrap();
    // Clearing a description and the tags (the cleared values must survive a rebuild).
    let a2 = exp.get("/models/a.pth", None).unwrap();
    exp.store()
        .update(
            a2.id,
            &ml_dash::RecordChanges {
                description: Some(None),
                tags: Some(vec![]),
                metadata: None,
            },
        )
        .unwrap();
    // A path deleted, then uploaded again: the new version stays live through a rebuild.
    up(&exp2, "/data", "again.bin", 7, 1000);
    exp2.delete("/data/again.bin").unwrap();
    up(&exp2, "/data", "again.bin", 8, 1000);
    Setup {
        dir,
        root,
        contents,
    }
}

fn full_listing(store: &Store) -> Vec<FileRecord> {
    list_everything(store)
}

#[track_caller]
fn check_contents(s: &Setup, deleted: &[&str]) {
    let exp = experiment(&s.root, "proj", "exp");
    let exp2 = experiment(&s.root, "proj", "other");
    for (path, version, data) in &s.contents {
        let e = if path.starts_with("/data") {
            &exp2
        } else {
            &exp
        };
        let dead = deleted.contains(&path.as_str()) || (path == "/data/again.bin" && *version == 1);
        if dead {
            assert!(
                matches!(e.open(path, Some(*version)), Err(Error::NotFound(_))),
                "{path} v{version} must stay deleted"
            );
        } else {
            same_bytes(
                read_via_download(e, path, Some(*version)),
                &data,
                &format!("{path} v{version}"),
            );
        }
    }
}

#[test]
fn rebuild_index_gives_back_the_same_store() {
    let s = populate();
    let store = Store::open(&s.root).unwrap();
    let before = full_listing(&store);
    let before_live = list_live(&store);
    assert_eq!(before.len(), 8);
    assert_eq!(before.iter().filter(|r| r.deleted_at.is_some()).count(), 3);
    let a2 = before
        .iter()
        .find(|r| r.filename == "a.pth" && r.version == 2)
        .unwrap();
    assert_eq!((a2.description.as_deref(), a2.tags.len()), (None, 0));
    let b = before.iter().find(|r| r.filename == "b.pth").unwrap();
    assert_eq!(b.tags, vec!["best", "v2"]);
    assert_eq!(b.description.as_deref(), Some("updated description"));

    let rep = store.rebuild_index().unwrap();
    assert!(rep.damaged.is_empty(), "{:?}", rep.damaged);
    assert_eq!(rep.versions, 8);
    assert_eq!(rep.events, 4);

    let after = full_listing(&store);
    assert_eq!(after, before, "records differ after rebuild");
    assert_eq!(list_live(&store), before_live);
    check_contents(&s, &["/logs/gone.log"]);
    let v = store.verify().unwrap();
    assert!(v.ok, "{v:?}");

    // Writing after a rebuild: numbering continues, dedup still works.
    let exp = experiment(&s.root, "proj", "exp");
    let r = exp
        .file(write_file(s.dir.path(), "gone.log", b"back"))
        .prefix("/logs")
        .save()
        .unwrap();
    assert_eq!(r.version, 3);
    let a2 = &s.contents[1].2;
    let r = exp
        .file(write_file(s.dir.path(), "dup.pth", a2))
        .save()
        .unwrap();
    assert_eq!(r.new_bytes, 0, "chunks known after the rebuild");
    assert!(store.verify().unwrap().ok);
}

#[test]
fn repair_after_removing_the_index_directory() {
    let s = populate();
    let list_args = ["list", "--all-versions", "--deleted", "--json"];
    let before = run(&s.root, &list_args);
    ok(&before);
    assert_eq!(json_lines(&before.1).len(), 8);
    let store = Store::open(&s.root).unwrap();
    let before_records = full_listing(&store);

    std::fs::remove_dir_all(s.root.join("index")).unwrap();
    let rep = run(&s.root, &["repair", "--json"]);
    ok(&rep);
    let lines = json_lines(&rep.1);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["versions"], 8);
    assert_eq!(lines[0]["damaged"], serde_json::json!([]));

    let after = run(&s.root, &list_args);
    ok(&after);
    assert_eq!(after.1, before.1, "list --json differs after repair");
    assert_eq!(full_listing(&store), before_records);
    check_contents(&s, &["/logs/gone.log"]);
    let v = run(&s.root, &["verify"]);
    assert_eq!(v.0, 0, "{} {}", v.1, v.2);
}

#[test]
fn rebuild_after_gc_keeps_deletions_and_numbering() {
    let s = populate();
    let store = Store::open(&s.root).unwrap();
    let rep = store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!(rep.deleted_versions, 3);
    let before = full_listing(&store);
    assert_eq!(before.len(), 5);
    store.rebuild_index().unwrap();
    assert_eq!(full_listing(&store), before);
    check_contents(&s, &["/logs/gone.log"]);
    assert!(store.verify().unwrap().ok);
    let g = store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert_eq!((g.garbage_bytes, g.reclaimed_bytes), (0, 0));
    let exp = experiment(&s.root, "proj", "exp");
    let r = exp
        .file(write_file(s.dir.path(), "gone.log", b"back"))
        .prefix("/logs")
        .save()
        .unwrap();
    assert_eq!(r.version, 3, "numbering after gc + rebuild");
}

#[test]
fn rebuild_keeps_metadata_cleared_to_null() {
    // `update` accepts `Some(Value::Null)` (metadata may be null) and the index shows null;
    // the rebuilt index must show the same.
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let r = exp
        .file(write_file(dir.path(), "m.bin", b"x"))
        .metadata(serde_json::json!({"keep": false}))
        .save()
        .unwrap();
    let u = exp
        .store()
        .update(
            r.id,
            &ml_dash::RecordChanges {
                description: None,
                tags: None,
                metadata: Some(serde_json::Value::Null),
            },
        )
        .unwrap();
    assert_eq!(u.metadata, serde_json::Value::Null);
    let before = list_everything(exp.store());
    exp.store().rebuild_index().unwrap();
    let after = list_everything(exp.store());
    assert_eq!(
        after[0].metadata,
        serde_json::Value::Null,
        "metadata cleared by update came back after rebuild_index"
    );
    assert_eq!(after, before);
}

#[test]
fn corrupt_index_is_repaired() {
    let s = populate();
    let store = Store::open(&s.root).unwrap();
    let before = full_listing(&store);
    // Replace the index with garbage. The index is derived data: the store treats an index
    // it cannot find as lost and rebuilds it before the next operation.
    let ix = s.root.join("index");
    std::fs::remove_dir_all(&ix).unwrap();
    std::fs::write(&ix, b"not a directory").unwrap();
    assert_eq!(full_listing(&store), before);
    assert!(
        ix.is_dir(),
        "the garbage index was replaced by a rebuilt one"
    );
    check_contents(&s, &["/logs/gone.log"]);

    // An index that exists but will not open is refused with a pointer to `repair`,
    // which rebuilds it.
    let db = ix.join("db");
    let len = usize_from(std::fs::metadata(&db).unwrap().len());
    std::fs::write(&db, vec![0xA5u8; len.max(4096)]).unwrap();
    let listed = store.list(&Default::default());
    if let Err(e) = &listed {
        assert!(e.to_string().contains("repair"), "{e}");
        let r = run(&s.root, &["list", "--json"]);
        refused(&r, "list with a damaged index");
        let r = run(&s.root, &["repair"]);
        assert_eq!(r.0, 0, "{}", r.2);
    }
    store.rebuild_index().unwrap();
    assert_eq!(full_listing(&store), before);
    check_contents(&s, &["/logs/gone.log"]);
}

#[test]
fn lost_index_never_costs_a_version() {
    // The index is derived data. If `<root>/index` is lost and the store is used before
    // `repair`, no stored version may become unreachable: either the store refuses to work
    // without its index, or whatever it accepts gets version numbers that do not collide
    // with the versions already on disk.
    let s = populate();
    let exp = experiment(&s.root, "proj", "exp");
    std::fs::remove_dir_all(s.root.join("index")).unwrap();
    let newer = random_bytes(99, 40_000);
    let accepted = exp
        .file(write_file(s.dir.path(), "a.pth", &newer))
        .prefix("/models")
        .save();
    let store = Store::open(&s.root).unwrap();
    store.rebuild_index().unwrap();
    // Every version uploaded before the loss is still reachable with its bytes.
    check_contents(&s, &["/logs/gone.log"]);
    if let Ok(rec) = accepted {
        assert!(
            rec.version > 2,
            "a.pth already had versions 1 and 2, got {}",
            rec.version
        );
        same_bytes(
            read_via_reader(&exp, "/models/a.pth", Some(rec.version)),
            &newer,
            "the upload accepted without an index",
        );
    }
}

#[test]
fn crash_leftovers_are_harmless() {
    let s = populate();
    let store = Store::open(&s.root).unwrap();
    let before = full_listing(&store);
    // A torn record at the end of the active pack (a crash mid-append) and temp files of an
    // interrupted atomic write.
    let pack = pack_files(&s.root).into_iter().last().unwrap();
    let records = pack_records(&pack);
    let last = *records.last().unwrap();
    let head = std::fs::read(&pack).unwrap()[usize_from(last.offset)..usize_from(last.offset) + 40]
        .to_vec();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&pack)
        .unwrap();
    std::io::Write::write_all(&mut f, &head).unwrap();
    drop(f);
    std::fs::write(
        s.root.join("manifests").join(".x.manifest.tmp-1"),
        b"partial",
    )
    .unwrap();
    std::fs::write(s.root.join("events").join(".y.event.tmp-2"), b"partial").unwrap();

    let rep = store.verify().unwrap();
    assert!(rep.ok, "{rep:?}");
    assert!(!rep.notes.is_empty(), "the torn tail is noted");
    assert_eq!(full_listing(&store), before);
    check_contents(&s, &["/logs/gone.log"]);
    // New uploads never append after a torn tail, and stay readable.
    let exp = experiment(&s.root, "proj", "exp");
    let torn_len = std::fs::metadata(&pack).unwrap().len();
    let data = random_bytes(77, 300_000);
    exp.file(write_file(s.dir.path(), "after.bin", &data))
        .save()
        .unwrap();
    same_bytes(
        read_via_download(&exp, "/after.bin", None),
        &data,
        "/after.bin via download",
    );
    assert_eq!(
        std::fs::metadata(&pack).unwrap().len(),
        torn_len,
        "a pack with a torn tail must not be appended to"
    );
    assert_eq!(pack_records(&pack).len(), records.len());
    let rb = store.rebuild_index().unwrap();
    assert!(rb.damaged.is_empty(), "{:?}", rb.damaged);
    same_bytes(
        read_via_reader(&exp, "/after.bin", None),
        &data,
        "/after.bin via Read",
    );
    let rep = store.verify().unwrap();
    assert!(rep.ok, "{rep:?}");
}
