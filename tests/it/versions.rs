//! Versions, soft delete, updates and list filters through the library.

use ml_dash::{Error, ListFilter};

use crate::util::*;

#[test]
fn old_version_stays_readable() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let old = random_bytes(1, 300_000);
    let new = random_bytes(2, 200_000);
    let r1 = exp
        .file(write_file(dir.path(), "m.pth", &old))
        .prefix("/models")
        .save()
        .unwrap();
    let r2 = exp
        .file(write_file(dir.path(), "m.pth", &new))
        .prefix("/models")
        .save()
        .unwrap();
    assert_eq!((r1.version, r2.version), (1, 2));
    assert_ne!(r1.id, r2.id);

    same_bytes(
        read_via_reader(&exp, "/models/m.pth", Some(1)),
        &old,
        "/models/m.pth v1 via Read",
    );
    same_bytes(
        read_via_download(&exp, "/models/m.pth", Some(1)),
        &old,
        "/models/m.pth v1 via download",
    );
    same_bytes(
        read_via_reader(&exp, "/models/m.pth", None),
        &new,
        "/models/m.pth via Read",
    );
    same_bytes(
        read_via_reader(&exp, "/models/m.pth", Some(2)),
        &new,
        "/models/m.pth v2 via Read",
    );
    assert_eq!(exp.get("/models/m.pth", Some(1)).unwrap(), r1);
    assert_eq!(exp.get("/models/m.pth", None).unwrap(), r2);
    assert!(matches!(
        exp.get("/models/m.pth", Some(3)),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        exp.open("/models/m.pth", Some(0)),
        Err(Error::NotFound(_))
    ));

    let all = exp
        .list(ListFilter {
            all_versions: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all, vec![r1.clone(), r2.clone()]);
    let latest = exp.files("/").unwrap();
    assert_eq!(latest, vec![r2.clone()]);
    // Opening by id reaches a specific version too.
    let r = exp.store().open_version(r1.id).unwrap();
    same_bytes(ml_dash::testing::read_all(&r).unwrap(), &old, "read_all");
}

#[test]
fn delete_hides_every_version_and_numbering_continues() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let keep = exp
        .file(write_file(dir.path(), "keep.txt", b"keep me"))
        .prefix("/models")
        .save()
        .unwrap();
    for v in 1..=2u64 {
        exp.file(write_file(dir.path(), "m.pth", &random_bytes(v, 5000)))
            .prefix("/models")
            .save()
            .unwrap();
    }
    let hidden = exp.delete("/models/m.pth").unwrap();
    assert_eq!(
        hidden.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1, 2]
    );

    assert!(matches!(
        exp.get("/models/m.pth", None),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        exp.get("/models/m.pth", Some(1)),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        exp.open("/models/m.pth", None),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        exp.open("/models/m.pth", Some(2)),
        Err(Error::NotFound(_))
    ));
    let dest = dir.path().join("dl");
    assert!(exp.download("/models/m.pth", &dest).is_err());
    assert!(!dest.exists());
    assert_eq!(exp.files("/").unwrap(), vec![keep.clone()]);
    let all_live = exp
        .list(ListFilter {
            all_versions: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all_live, vec![keep.clone()]);
    // The deleted versions are still there for `include_deleted`, marked deleted.
    let with_deleted = exp
        .list(ListFilter {
            all_versions: true,
            include_deleted: true,
            ..Default::default()
        })
        .unwrap();
    let deleted: Vec<_> = with_deleted
        .iter()
        .filter(|r| r.filename == "m.pth")
        .collect();
    assert_eq!(deleted.len(), 2);
    for r in &deleted {
        let at = r.deleted_at.as_deref().expect("deletedAt set");
        assert!(is_iso_utc(at), "{at}");
    }
    // Deleting again: nothing live left.
    assert!(matches!(
        exp.delete("/models/m.pth"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        exp.delete("/models/never.pth"),
        Err(Error::NotFound(_))
    ));
    // Updating a deleted version is refused.
    assert!(
        exp.store()
            .update(
                deleted[0].id,
                &ml_dash::RecordChanges {
                    description: None,
                    tags: Some(vec!["x".into()]),
                    metadata: None
                }
            )
            .is_err()
    );

    // Re-upload: the next number, live, and only it is visible.
    let again = random_bytes(3, 7000);
    let r3 = exp
        .file(write_file(dir.path(), "m.pth", &again))
        .prefix("/models")
        .save()
        .unwrap();
    assert_eq!(r3.version, 3, "numbering must continue after a delete");
    assert!(r3.deleted_at.is_none());
    same_bytes(
        read_via_reader(&exp, "/models/m.pth", None),
        &again,
        "/models/m.pth via Read",
    );
    assert!(matches!(
        exp.open("/models/m.pth", Some(1)),
        Err(Error::NotFound(_))
    ));
    let files = exp.files("/models").unwrap();
    assert_eq!(files.len(), 2);
    assert!(files.contains(&r3) && files.contains(&keep));
}

#[test]
fn update_changes_description_tags_metadata() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let src = write_file(dir.path(), "cfg.json", b"{}");
    let r = exp
        .file(&src)
        .tags(["a"])
        .description("first")
        .metadata(serde_json::json!({"epoch": 1}))
        .save()
        .unwrap();
    assert_eq!(r.content_type, "application/json");
    let u = exp
        .update(
            "/cfg.json",
            &ml_dash::RecordChanges {
                description: Some(Some("second".into())),
                tags: Some(vec!["b".into(), "c".into()]),
                metadata: Some(serde_json::json!({"epoch": 2})),
            },
        )
        .unwrap();
    assert_eq!(u.id, r.id);
    assert_eq!(u.version, 1);
    assert_eq!(u.description.as_deref(), Some("second"));
    assert_eq!(u.tags, vec!["b", "c"]);
    assert_eq!(u.metadata, serde_json::json!({"epoch": 2}));
    assert_eq!(u.uploaded_at, r.uploaded_at);
    assert_eq!(u.checksum, r.checksum);
    assert!(is_iso_utc(&u.updated_at));
    assert_eq!(exp.get("/cfg.json", None).unwrap(), u);
    // Absent arguments stay as they are; Some(None) clears the description.
    let u2 = exp
        .update(
            "/cfg.json",
            &ml_dash::RecordChanges {
                description: Some(None),
                tags: None,
                metadata: None,
            },
        )
        .unwrap();
    assert_eq!(u2.description, None);
    assert_eq!(u2.tags, vec!["b", "c"]);
    assert_eq!(u2.metadata, serde_json::json!({"epoch": 2}));
    // Bad updates are refused and change nothing.
    assert!(
        exp.update_version(
            r.id,
            &ml_dash::RecordChanges::new().metadata(serde_json::json!([1]))
        )
        .is_err()
    );
    assert!(
        exp.update(
            "/cfg.json",
            &ml_dash::RecordChanges {
                description: None,
                tags: Some(vec![String::new()]),
                metadata: None
            }
        )
        .is_err()
    );
    assert_eq!(exp.get("/cfg.json", None).unwrap(), u2);
}

#[test]
fn list_filters_prefix_tag_glob_scope() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let other = experiment(&root, "p", "e2");
    let src = write_file(dir.path(), "x", b"bytes");
    let up = |e: &ml_dash::Experiment, prefix: &str, to: &str, tags: &[&str]| {
        e.file(&src)
            .prefix(prefix)
            .to(to)
            .tags(tags.iter().copied())
            .save()
            .unwrap()
    };
    up(&exp, "/models", "a.pth", &["best"]);
    up(&exp, "/models/sub", "b.pth", &[]);
    up(&exp, "/models_old", "c.pth", &["best"]);
    up(&exp, "/logs", "train.log", &["best", "final"]);
    up(&other, "/models", "z.pth", &["best"]);

    let names = |f: ListFilter| -> Vec<String> {
        exp.list(f).unwrap().iter().map(|r| r.full_path()).collect()
    };
    assert_eq!(
        names(ListFilter {
            prefix: Some("/models".into()),
            ..Default::default()
        }),
        vec!["/models/a.pth", "/models/sub/b.pth"]
    );
    assert_eq!(
        exp.files("models/").unwrap().len(),
        2,
        "prefix given without leading slash, with a trailing one"
    );
    assert_eq!(exp.files("/models/sub").unwrap().len(), 1);
    assert_eq!(
        exp.files("/model").unwrap().len(),
        0,
        "prefix is whole segments"
    );
    assert!(exp.files("/a//b").is_err());
    assert_eq!(
        names(ListFilter {
            tags: vec!["best".into()],
            ..Default::default()
        }),
        vec!["/logs/train.log", "/models/a.pth", "/models_old/c.pth"]
    );
    assert_eq!(
        names(ListFilter {
            tags: vec!["best".into(), "final".into()],
            ..Default::default()
        }),
        vec!["/logs/train.log"]
    );
    let glob = |g: &str| Some(ml_dash::Glob::new(g).unwrap());
    assert_eq!(
        names(ListFilter {
            glob: glob("*.pth"),
            ..Default::default()
        }),
        vec!["/models/a.pth", "/models/sub/b.pth", "/models_old/c.pth"]
    );
    // `*` stays inside one segment, `**` crosses them (one meaning in Rust, the CLI, Python).
    assert_eq!(
        names(ListFilter {
            glob: glob("/models/*"),
            ..Default::default()
        }),
        vec!["/models/a.pth"]
    );
    assert_eq!(
        names(ListFilter {
            glob: glob("/models/**"),
            ..Default::default()
        }),
        vec!["/models/a.pth", "/models/sub/b.pth"]
    );
    // The whole store, and one other experiment.
    assert_eq!(list_live(exp.store()).len(), 5);
    assert_eq!(
        other
            .files("/")
            .unwrap()
            .iter()
            .map(|r| r.full_path())
            .collect::<Vec<_>>(),
        vec!["/models/z.pth"]
    );
}
