//! `ml-dash export` and `ml-dash import`: the tutorial's tree, incremental re-exports, refusals
//! (namespace clashes, symbolic links, files export did not write), the ml-dash 0.11 layout,
//! and interop with the real ml-dash 0.11 client (a venv in `target/mldash-venv`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use ml_dash::Store;

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Every regular file under `dir` (relative, `/`-separated); symbolic links are listed too.
fn tree_files(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(base).unwrap().to_path_buf();
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Run `export` and parse its `--json` summary (whatever the exit code).
fn export(root: &Path, dir: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["export", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let r = run(root, &args);
    assert!(!r.2.contains("panicked"), "{}", r.2);
    let v = serde_json::from_str(r.1.trim())
        .unwrap_or_else(|_| panic!("export printed {:?}, stderr {:?}", r.1, r.2));
    (r.0, v, r.2)
}

fn import(root: &Path, dir: &Path) -> (i32, Value) {
    let r = run(root, &["import", dir.to_str().unwrap(), "--json"]);
    assert!(!r.2.contains("panicked"), "{}", r.2);
    let v = serde_json::from_str(r.1.trim())
        .unwrap_or_else(|_| panic!("import printed {:?}, stderr {:?}", r.1, r.2));
    (r.0, v)
}

/// `(mtime, inode)`: a rewrite (temp file + rename) changes the inode.
fn stamp(p: &Path) -> (std::time::SystemTime, u64) {
    let m = fs::metadata(p).unwrap();
    (m.modified().unwrap(), m.ino())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn jsonl(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The "Organizing Files" example of the ml-dash Files tutorial; returns (store root, path → bytes).
fn organizing_files(base: &Path) -> (PathBuf, BTreeMap<&'static str, Vec<u8>>) {
    let root = base.join("store");
    let src = base.join("src");
    let exp = experiment(&root, "project", "my-experiment");
    let files: [(&str, &str, Vec<u8>); 6] = [
        ("model.pth", "/models", random_bytes(1, 300_000)),
        (
            "best_model.pth",
            "/models/checkpoints",
            random_bytes(2, 70_000),
        ),
        ("loss_curve.png", "/visualizations", random_bytes(3, 5_000)),
        (
            "confusion_matrix.png",
            "/visualizations",
            random_bytes(4, 4_000),
        ),
        ("config.json", "/config", br#"{"lr": 0.001}"#.to_vec()),
        ("results.csv", "/results", b"epoch,loss\n0,1.5\n".to_vec()),
    ];
    let mut want = BTreeMap::new();
    for (name, prefix, data) in files {
        let p = write_file(&src, name, &data);
        exp.file(&p).prefix(prefix).save().unwrap();
        let rel = match (prefix, name) {
            ("/models", _) => "project/my-experiment/files/models/model.pth",
            ("/models/checkpoints", _) => {
                "project/my-experiment/files/models/checkpoints/best_model.pth"
            }
            (_, "loss_curve.png") => "project/my-experiment/files/visualizations/loss_curve.png",
            (_, "confusion_matrix.png") => {
                "project/my-experiment/files/visualizations/confusion_matrix.png"
            }
            ("/config", _) => "project/my-experiment/files/config/config.json",
            _ => "project/my-experiment/files/results/results.csv",
        };
        want.insert(rel, data);
    }
    (root, want)
}

// ---------------------------------------------------------------------------------------------
// The tree layout.

#[test]
fn tree_export_is_the_seeds_documented_tree() {
    let dir = tmp();
    let (root, want) = organizing_files(dir.path());
    let out = dir.path().join("experiments");
    let (code, sum, err) = export(&root, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sum,
        json!({"files": 6, "written": 6, "skipped": 0, "bytes": want.values().map(Vec::len).sum::<usize>(), "experiments": 1})
    );
    let mut expected: BTreeSet<String> = want.keys().map(|s| s.to_string()).collect();
    expected.insert("project/my-experiment/.ml-dash-records.json".into());
    assert_eq!(
        tree_files(&out),
        expected,
        "exactly the tutorial's tree plus the records dotfile"
    );
    for (rel, data) in &want {
        same_bytes(fs::read(out.join(rel)).unwrap(), data, rel);
    }
    let recs = read_json(&out.join("project/my-experiment/.ml-dash-records.json"));
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 6);
    for r in recs {
        let rel = format!(
            "project/my-experiment/files{}/{}",
            r["path"].as_str().unwrap(),
            r["filename"].as_str().unwrap()
        );
        assert_eq!(r["checksum"], sha256_hex(&want[rel.as_str()]), "{rel}");
        assert_eq!(r["namespace"], "local");
    }
}

#[test]
fn tree_reexport_is_incremental_and_leaves_foreign_files_alone() {
    let dir = tmp();
    let root = dir.path().join("store");
    let src = dir.path().join("src");
    let out = dir.path().join("out");
    let exp = experiment(&root, "p", "e");
    let v1 = random_bytes(10, 200_000);
    let v2 = random_bytes(11, 150_000);
    exp.file(write_file(&src, "model.pth", &v1))
        .prefix("/models")
        .save()
        .unwrap();
    exp.file(write_file(&src, "model.pth", &v2))
        .prefix("/models")
        .save()
        .unwrap();
    exp.file(write_file(&src, "gone.bin", b"deleted before export"))
        .save()
        .unwrap();
    exp.delete("/gone.bin").unwrap();
    exp.file(write_file(
        &src,
        "later.bin",
        b"deleted after the first export",
    ))
    .prefix("/x")
    .save()
    .unwrap();
    // Files export did not write: beside the tree, and inside it.
    let foreign = [
        out.join("README.txt"),
        out.join("p/e/files/models/notes.txt"),
        out.join("p/e/files/x/mine.bin"),
    ];
    for f in &foreign {
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, b"not yours").unwrap();
    }

    let (code, sum, err) = export(&root, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (sum["files"].as_u64(), sum["written"].as_u64()),
        (Some(2), Some(2))
    );
    let model = out.join("p/e/files/models/model.pth");
    same_bytes(
        fs::read(&model).unwrap(),
        &v2,
        "the latest version is exported",
    );
    assert!(
        !out.join("p/e/files/gone.bin").exists(),
        "deleted path absent"
    );
    let later = out.join("p/e/files/x/later.bin");
    assert!(later.exists());

    // Again: nothing written, nothing touched.
    let before: Vec<_> = [&model, &later].iter().map(|p| stamp(p)).collect();
    let records = out.join("p/e/.ml-dash-records.json");
    let records_before = stamp(&records);
    let (code, sum, _) = export(&root, &out, &[]);
    assert_eq!(code, 0);
    assert_eq!(
        sum,
        json!({"files": 2, "written": 0, "skipped": 2, "bytes": 0, "experiments": 1})
    );
    let after: Vec<_> = [&model, &later].iter().map(|p| stamp(p)).collect();
    assert_eq!(before, after, "files untouched (mtime and inode)");
    assert_eq!(records_before, stamp(&records), "records dotfile untouched");

    // A delete and a new version since: the deleted path goes, the new bytes come.
    exp.delete("/x/later.bin").unwrap();
    let v3 = random_bytes(12, 1000);
    exp.file(write_file(&src, "model.pth", &v3))
        .prefix("/models")
        .save()
        .unwrap();
    let (code, sum, _) = export(&root, &out, &[]);
    assert_eq!(code, 0);
    assert_eq!(
        (sum["written"].as_u64(), sum["removed"].as_u64()),
        (Some(1), Some(1))
    );
    same_bytes(fs::read(&model).unwrap(), &v3, "new version");
    assert!(
        !later.exists(),
        "a path deleted since the last export is removed"
    );
    for f in &foreign {
        assert_eq!(
            fs::read(f).unwrap(),
            b"not yours",
            "{} untouched",
            f.display()
        );
    }

    // Someone edits an exported file: the next export leaves it alone and says so.
    fs::write(&model, b"edited by hand").unwrap();
    exp.file(write_file(&src, "model.pth", &v1))
        .prefix("/models")
        .save()
        .unwrap();
    let (code, sum, _) = export(&root, &out, &[]);
    assert_eq!(code, 1, "a file export could not write is reported");
    assert_eq!(sum["written"], 0);
    let problems = sum["problems"].as_array().unwrap();
    assert!(
        problems[0].as_str().unwrap().contains("did not write"),
        "{problems:?}"
    );
    assert_eq!(fs::read(&model).unwrap(), b"edited by hand");
}

#[test]
fn tree_export_refuses_a_namespace_clash_unless_narrowed() {
    let dir = tmp();
    let root = dir.path().join("store");
    let src = write_file(dir.path(), "f.txt", b"x");
    for ns in ["alice", "bob"] {
        ml_dash::Experiment::new("e", "p")
            .namespace(ns)
            .local_path(&root)
            .open()
            .unwrap()
            .file(&src)
            .save()
            .unwrap();
    }
    let out = dir.path().join("out");
    let r = run(&root, &["export", out.to_str().unwrap()]);
    refused(&r, "two namespaces, one tree path");
    assert!(r.2.contains("--namespace"), "{}", r.2);
    assert!(!out.join("p").exists(), "nothing written");
    let (code, sum, _) = export(&root, &out, &["--namespace", "bob"]);
    assert_eq!((code, sum["written"].as_u64()), (0, Some(1)));
    // The ml-dash layout has a namespace level: no clash.
    let (code, sum, _) = export(&root, &dir.path().join("ml"), &["--layout", "ml-dash"]);
    assert_eq!((code, sum["experiments"].as_u64()), (0, Some(2)));
}

#[test]
fn export_never_escapes_and_never_follows_symlinks() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let src = write_file(dir.path(), "f.bin", b"payload");
    // Hostile names never reach the store.
    for prefix in ["/../../etc", "/a/../..", "/.", "/a\\b"] {
        assert!(exp.file(&src).prefix(prefix).save().is_err(), "{prefix}");
    }
    for to in ["../x", "..", "/etc/passwd", "a/../../x", "x\u{0}y"] {
        assert!(exp.file(&src).to(to).save().is_err(), "{to:?}");
    }
    for (p, e) in [("..", "e"), ("p", "."), ("a/b", "e")] {
        assert!(
            ml_dash::Experiment::new(e, p)
                .local_path(&root)
                .open()
                .is_err(),
            "{p}/{e}"
        );
    }
    exp.file(&src).prefix("/sub").save().unwrap();

    // A symbolic link inside DIR pointing outside is not followed, on the way or at the end.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(out.join("p/e/files")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("p/e/files/sub")).unwrap();
    let (code, sum, _) = export(&root, &out, &[]);
    assert_eq!(code, 1);
    assert!(
        sum["problems"][0]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{sum}"
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    let out2 = dir.path().join("out2");
    let victim = outside.join("victim");
    fs::write(&victim, b"keep me").unwrap();
    fs::create_dir_all(out2.join("p/e/files/sub")).unwrap();
    std::os::unix::fs::symlink(&victim, out2.join("p/e/files/sub/f.bin")).unwrap();
    let (code, _, _) = export(&root, &out2, &[]);
    assert_eq!(code, 1);
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    assert!(
        fs::symlink_metadata(out2.join("p/e/files/sub/f.bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // The experiment directory itself a link: refused too.
    let out3 = dir.path().join("out3");
    fs::create_dir_all(out3.join("p")).unwrap();
    std::os::unix::fs::symlink(&outside, out3.join("p/e")).unwrap();
    let (code, _, _) = export(&root, &out3, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "only the victim"
    );
}

// ---------------------------------------------------------------------------------------------
// The ml-dash layout, checked without Python.

const MLDASH_RECORD_KEYS: [&str; 14] = [
    "id",
    "experimentId",
    "path",
    "filename",
    "description",
    "tags",
    "bindrs",
    "contentType",
    "sizeBytes",
    "checksum",
    "metadata",
    "uploadedAt",
    "updatedAt",
    "deletedAt",
];

#[test]
fn mldash_layout_has_the_clients_keys_and_formats() {
    let dir = tmp();
    let (root, want) = organizing_files(dir.path());
    let exp = experiment(&root, "project", "my-experiment");
    exp.update(
        "/models/model.pth",
        &ml_dash::RecordChanges {
            description: Some(Some("Best model".into())),
            tags: Some(vec!["best".into()]),
            metadata: Some(json!({"epoch": 50})),
        },
    )
    .unwrap();
    exp.parameters()
        .set(&json!({"model": {"arch": "resnet50"}, "lr": 0.1}))
        .unwrap();
    exp.log("Starting training").unwrap();
    exp.log_with("critical", "boom", Some(json!({"code": 3})))
        .unwrap();
    for e in 0..3 {
        exp.metric("train_loss")
            .append(&json!({"value": 1.0 / f64::from(e + 1), "epoch": e}))
            .unwrap();
    }
    let out = dir.path().join("dash");
    let (code, sum, err) = export(&root, &out, &["--layout", "ml-dash"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (sum["files"].as_u64(), sum["written"].as_u64()),
        (Some(6), Some(6))
    );
    let e = out.join("local/project/my-experiment");

    let index = fs::read_to_string(e.join("files/.files_metadata.json")).unwrap();
    assert_eq!(index.lines().count(), 1, "one compact document");
    let index: Value = serde_json::from_str(&index).unwrap();
    let recs = index["files"].as_array().unwrap();
    assert_eq!(recs.len(), 6);
    let mut ids = BTreeSet::new();
    for r in recs {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            MLDASH_RECORD_KEYS.into_iter().collect(),
            "record keys"
        );
        let id = r["id"].as_str().unwrap();
        assert!(id.parse::<u64>().is_ok(), "decimal id {id}");
        assert!(ids.insert(id.to_string()), "unique id");
        assert_eq!(r["experimentId"], "project/local/project/my-experiment");
        assert_eq!(r["deletedAt"], Value::Null);
        assert_eq!(r["bindrs"], json!([]));
        assert!(is_iso_utc(r["uploadedAt"].as_str().unwrap()));
        let path = r["path"].as_str().unwrap();
        let name = r["filename"].as_str().unwrap();
        let tree_rel = format!("project/my-experiment/files{path}/{name}");
        let data = &want[tree_rel.as_str()];
        assert_eq!(r["checksum"], sha256_hex(data));
        assert_eq!(r["sizeBytes"], data.len());
        let on_disk = e.join(format!("files{path}/{id}/{name}"));
        same_bytes(fs::read(&on_disk).unwrap(), data, &tree_rel);
    }
    let model = recs.iter().find(|r| r["filename"] == "model.pth").unwrap();
    assert_eq!(model["description"], "Best model");
    assert_eq!(model["tags"], json!(["best"]));
    assert_eq!(model["metadata"], json!({"epoch": 50}));
    assert_eq!(
        recs.iter()
            .find(|r| r["filename"] == "config.json")
            .unwrap()["contentType"],
        "application/json"
    );

    let x = read_json(&e.join("experiment.json"));
    let keys: Vec<&str> = x.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "name",
            "project",
            "description",
            "tags",
            "bindrs",
            "prefix",
            "metadata",
            "created_at",
            "write_protected"
        ]
    );
    assert_eq!(x["prefix"], "local/project/my-experiment");
    assert_eq!(x["name"], "my-experiment");

    let p = read_json(&e.join("parameters.json"));
    assert_eq!(p["data"], json!({"lr": 0.1, "model.arch": "resnet50"}));
    assert_eq!(p["version"], 1);
    assert!(is_iso_utc(p["updatedAt"].as_str().unwrap()));

    let logs = jsonl(&e.join("logs/logs.jsonl"));
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["message"], "Starting training");
    assert!(
        logs[0].get("metadata").is_none(),
        "no metadata key when there is none"
    );
    assert_eq!(logs[1]["level"], "fatal", "ml-dash's name for critical");
    assert_eq!(logs[1]["metadata"], json!({"code": 3}));
    let keys: Vec<&str> = logs[1]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "sequenceNumber",
            "timestamp",
            "level",
            "message",
            "metadata"
        ]
    );

    let points = jsonl(&e.join("metrics/train_loss/data.jsonl"));
    assert_eq!(points.len(), 3);
    assert_eq!(points[2]["index"], 2);
    assert_eq!(points[2]["data"]["epoch"], 2);
    assert!(points[2]["data"]["_ts"].is_f64());
    let m = read_json(&e.join("metrics/train_loss/metadata.json"));
    assert_eq!(m["metricId"], "local-metric-train_loss");
    assert_eq!(
        (m["totalDataPoints"].as_u64(), m["nextIndex"].as_u64()),
        (Some(3), Some(3))
    );

    // Stable: a re-export writes nothing and keeps the ids.
    let before = stamp(&e.join("files/.files_metadata.json"));
    let (code, sum, _) = export(&root, &out, &["--layout", "ml-dash"]);
    assert_eq!(
        (code, sum["written"].as_u64(), sum["skipped"].as_u64()),
        (0, Some(0), Some(6))
    );
    assert_eq!(before, stamp(&e.join("files/.files_metadata.json")));
}

#[test]
fn import_keeps_records_and_reports_damage_without_python() {
    // An older-layout tree (project/experiment, no namespace level) written by hand.
    let dir = tmp();
    let tree = dir.path().join("old");
    let good = b"good bytes".to_vec();
    let e = tree.join("proj/run1/files");
    write_file(&e, "models/111/good.bin", &good);
    write_file(&e, "222/bad.bin", b"tampered");
    let rec = |id: &str, path: &str, name: &str, data: &[u8], deleted: Value| {
        json!({"id": id, "experimentId": "x", "path": path, "filename": name,
               "description": "d", "tags": ["t"], "bindrs": [], "contentType": "application/octet-stream",
               "sizeBytes": data.len(), "checksum": sha256_hex(data), "metadata": {"k": 1},
               "uploadedAt": "2025-01-02T03:04:05.000006Z", "updatedAt": "2025-01-02T03:04:06Z",
               "deletedAt": deleted})
    };
    let index = json!({"files": [
        rec("111", "/models", "good.bin", &good, Value::Null),
        rec("222", "/", "bad.bin", b"original", Value::Null),
        rec("333", "/", "gone.bin", b"whatever", json!("2025-01-03T00:00:00Z")),
    ]});
    fs::write(e.join(".files_metadata.json"), index.to_string()).unwrap();

    let root = dir.path().join("store");
    let (code, sum) = import(&root, &tree);
    assert_eq!(code, 1, "damage exits 1: {sum}");
    assert_eq!(
        (sum["imported"].as_u64(), sum["deleted"].as_u64()),
        (Some(1), Some(1))
    );
    let problems = sum["problems"].to_string();
    assert!(
        problems.contains("bad.bin") && problems.contains("SHA-256"),
        "{problems}"
    );

    let store = Store::open(&root).unwrap();
    let live = list_live(&store);
    assert_eq!(live.len(), 1, "only the good file is live");
    let r = &live[0];
    assert_eq!(
        (
            r.namespace.as_str(),
            r.project.as_str(),
            r.experiment.as_str()
        ),
        ("local", "proj", "run1")
    );
    assert_eq!(r.full_path(), "/models/good.bin");
    assert_eq!(
        r.uploaded_at, "2025-01-02T03:04:05.000006Z",
        "original upload time kept"
    );
    assert_eq!(r.updated_at, "2025-01-02T03:04:06Z");
    assert_eq!(
        (r.description.as_deref(), r.tags.clone()),
        (Some("d"), vec!["t".to_string()])
    );
    assert_eq!(r.metadata, json!({"k": 1}));

    // A torn index: the complete records before the tear still import.
    let text = index.to_string();
    let cut = text.find("\"222\"").unwrap() + 40;
    fs::write(e.join(".files_metadata.json"), &text[..cut]).unwrap();
    let root2 = dir.path().join("store2");
    let (code, sum) = import(&root2, &tree);
    assert_eq!(code, 1);
    assert_eq!(sum["imported"], 1);
    assert!(sum["problems"].to_string().contains("damaged"), "{sum}");
}

/// Import commits an experiment's files together, in upload order: a path's history keeps its
/// order, a record whose bytes are already the path's latest version is skipped (also when that
/// version came earlier in the same import), a file whose bytes do not match its record is
/// reported and the others are imported; a second import adds nothing.
#[test]
fn import_commits_files_together_in_upload_order() {
    let dir = tmp();
    let tree = dir.path().join("tree");
    let e = tree.join("proj/run1/files");
    let (a0, a1, b) = (
        random_bytes(1, 3000),
        random_bytes(3, 2000),
        random_bytes(2, 100),
    );
    let mut records = Vec::new();
    let mut add = |id: &str, path: &str, name: &str, data: &[u8], claimed: &[u8], at: u32| {
        let segs = path.trim_start_matches('/');
        let rel = if segs.is_empty() {
            format!("{id}/{name}")
        } else {
            format!("{segs}/{id}/{name}")
        };
        write_file(&e, &rel, data);
        records.push(json!({"id": id, "path": path, "filename": name,
            "sizeBytes": claimed.len(), "checksum": sha256_hex(claimed), "metadata": null,
            "uploadedAt": format!("2025-01-02T03:04:{at:02}.000000Z"),
            "updatedAt": format!("2025-01-02T03:04:{at:02}.000000Z"), "deletedAt": null}));
    };
    add("1", "/m", "a.bin", &a0, &a0, 1);
    add("2", "/", "b.bin", &b, &b, 2);
    add("3", "/m", "a.bin", &a1, &a1, 3);
    add("4", "/", "c.bin", b"tampered", b"original", 4);
    add("5", "/m", "a.bin", &a1, &a1, 5); // the same bytes again: skipped
    let tiny: Vec<Vec<u8>> = (0..40).map(|i| random_bytes(100 + i, 50)).collect();
    for (i, t) in tiny.iter().enumerate() {
        add(
            &format!("t{i}"),
            "/t",
            &format!("t{i}.txt"),
            t,
            t,
            10 + u32::try_from(i).unwrap(),
        );
    }
    fs::write(
        e.join(".files_metadata.json"),
        json!({ "files": records }).to_string(),
    )
    .unwrap();

    let root = dir.path().join("store");
    let (code, sum) = import(&root, &tree);
    assert_eq!(code, 1, "a damaged file exits 1: {sum}");
    assert_eq!(
        (sum["imported"].as_u64(), sum["skipped"].as_u64()),
        (Some(43), Some(1)),
        "{sum}"
    );
    assert!(sum["problems"].to_string().contains("c.bin"), "{sum}");
    let exp = experiment(&root, "proj", "run1");
    let history: Vec<(u32, String)> = list_everything(exp.store())
        .into_iter()
        .filter(|r| r.filename == "a.bin")
        .map(|r| (r.version, r.uploaded_at))
        .collect();
    assert_eq!(
        history,
        [
            (1, "2025-01-02T03:04:01.000000Z".to_string()),
            (2, "2025-01-02T03:04:03.000000Z".to_string())
        ]
    );
    same_bytes(read_via_reader(&exp, "/m/a.bin", Some(1)), &a0, "a.bin v1");
    same_bytes(read_via_reader(&exp, "/m/a.bin", None), &a1, "a.bin latest");
    same_bytes(read_via_reader(&exp, "/t/t39.txt", None), &tiny[39], "t39");
    assert!(exp.store().verify().unwrap().ok);

    let (_, again) = import(&root, &tree);
    assert_eq!(again["imported"], 0, "{again}");
}

// ---------------------------------------------------------------------------------------------
// The real ml-dash 0.11 client.

/// `target/mldash-venv/bin/python` with ml-dash 0.11.0, created on first use. Fails (never
/// skips) when it cannot be made.
fn mldash_python() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mldash-venv");
            let python = venv.join("bin/python");
            fs::create_dir_all(venv.parent().unwrap()).unwrap();
            // One creator across test processes.
            let lock = fs::File::create(venv.with_extension("lock")).unwrap();
            lock.lock().unwrap();
            let works = || {
                Command::new(&python)
                    .args(["-c", "import ml_dash, sys; sys.exit(ml_dash.__version__ != '0.11.0')"])
                    .env("ML_DASH_NO_VERSION_CHECK", "1")
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !works() {
                let step = |what: &str, c: &mut Command| {
                    let o = c.output().unwrap_or_else(|e| {
                        panic!("cannot create the ml-dash venv ({what}): {e}; this test needs python3 with venv and PyPI access")
                    });
                    assert!(
                        o.status.success(),
                        "cannot create the ml-dash venv at {} ({what}): {}{}",
                        venv.display(),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                };
                step("python3 -m venv", Command::new("python3").args(["-m", "venv"]).arg(&venv));
                step(
                    "pip install ml-dash==0.11.0",
                    Command::new(venv.join("bin/pip")).args(["install", "--quiet", "ml-dash==0.11.0"]),
                );
                assert!(works(), "ml-dash 0.11.0 does not import in {}", venv.display());
            }
            python
        })
        .clone()
}

/// Run a script of `tests/interop/` with the venv's Python; returns its stdout.
fn python(script: &str, args: &[&Path]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let o = Command::new(mldash_python())
        .arg(&path)
        .args(args)
        .env("ML_DASH_NO_VERSION_CHECK", "1")
        .env("ML_DASH_BUFFER_ENABLED", "false")
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The last line of a script's output: its JSON report (the client prints log lines first).
fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().expect("a report line")).unwrap()
}

#[test]
fn real_client_reads_an_mldash_export() {
    let dir = tmp();
    let (root, want) = organizing_files(dir.path());
    let exp = experiment(&root, "project", "my-experiment");
    exp.parameters()
        .set(&json!({"model": {"architecture": "resnet50"}, "lr": 0.001}))
        .unwrap();
    for e in 0..4 {
        exp.metric("train_loss")
            .append(&json!({"value": 0.1 + 1.0 / f64::from(e + 1), "epoch": e}))
            .unwrap();
    }
    let out = dir.path().join("dash");
    let (code, _, err) = export(&root, &out, &["--layout", "ml-dash"]);
    assert_eq!(code, 0, "{err}");
    let dl = dir.path().join("downloads");
    fs::create_dir(&dl).unwrap();
    let r = report(&python(
        "read_export.py",
        &[&out, Path::new("local/project/my-experiment"), &dl],
    ));
    assert_eq!(r["version"], "0.11.0");
    let files = r["files"].as_array().unwrap();
    let listed: BTreeSet<String> = files
        .iter()
        .map(|f| {
            format!(
                "project/my-experiment/files{}/{}",
                f["path"].as_str().unwrap(),
                f["filename"].as_str().unwrap()
            )
            .replace("files//", "files/")
        })
        .collect();
    assert_eq!(
        listed,
        want.keys().map(|s| s.to_string()).collect(),
        "the client lists every file"
    );
    for f in files {
        let rel = format!(
            "project/my-experiment/files{}/{}",
            f["path"].as_str().unwrap(),
            f["filename"].as_str().unwrap()
        );
        let sha = sha256_hex(&want[rel.as_str()]);
        assert_eq!(f["checksum"], sha, "{rel}");
        assert_eq!(f["downloadedSha256"], sha, "{rel}: downloaded bytes");
        assert_eq!(f["downloadedSize"], want[rel.as_str()].len());
    }
    assert_eq!(
        r["params"],
        json!({"lr": 0.001, "model.architecture": "resnet50"})
    );
    let pts = exp.metric("train_loss").points().unwrap();
    let got = r["metrics"]["train_loss"].as_array().unwrap();
    assert_eq!(got.len(), 4);
    for (g, p) in got.iter().zip(&pts) {
        assert_eq!(
            g,
            &Value::Object(p.data.clone()),
            "metric point read by the client"
        );
    }
}

/// Live records of a `.files_metadata.json`, by `path/filename`.
fn live_records(exp_dir: &Path) -> BTreeMap<String, Value> {
    let v = read_json(&exp_dir.join("files/.files_metadata.json"));
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["deletedAt"].is_null())
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["path"].as_str().unwrap(),
                    r["filename"].as_str().unwrap()
                ),
                r.clone(),
            )
        })
        .collect()
}

fn blob(exp_dir: &Path, r: &Value) -> Vec<u8> {
    let path = r["path"].as_str().unwrap().trim_start_matches('/');
    let mut p = exp_dir.join("files");
    if !path.is_empty() {
        p = p.join(path);
    }
    fs::read(
        p.join(r["id"].as_str().unwrap())
            .join(r["filename"].as_str().unwrap()),
    )
    .unwrap()
}

#[test]
fn real_client_tree_round_trips_through_import_and_export() {
    let dir = tmp();
    let src = dir.path().join("client");
    python("write_tree.py", &[&src, &dir.path().join("scratch")]);
    let root = dir.path().join("store");
    let (code, sum) = import(&root, &src);
    assert_eq!(code, 0, "{sum}");
    assert_eq!(
        sum,
        json!({"experiments": 2, "files": 6, "imported": 6, "skipped": 0, "deleted": 1,
               "bytes": sum["bytes"], "params": 1, "logs": 6, "metricPoints": 6, "problems": []})
    );
    let store = Store::open(&root).unwrap();
    assert!(
        list_live(&store)
            .iter()
            .all(|r| r.filename != "scratch.bin"),
        "the deleted file is not live"
    );

    let out = dir.path().join("dash");
    let (code, _, err) = export(&root, &out, &["--layout", "ml-dash"]);
    assert_eq!(code, 0, "{err}");
    for name in ["exp", "exp2"] {
        let a = src.join("ns/proj").join(name);
        let b = out.join("ns/proj").join(name);
        let (ra, rb) = (live_records(&a), live_records(&b));
        assert_eq!(
            ra.keys().collect::<Vec<_>>(),
            rb.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (k, x) in &ra {
            let y = &rb[k];
            for key in [
                "sizeBytes",
                "checksum",
                "description",
                "tags",
                "metadata",
                "uploadedAt",
                "updatedAt",
                "contentType",
            ] {
                assert_eq!(x[key], y[key], "{name} {k} {key}");
            }
            same_bytes(blob(&b, y), &blob(&a, x), k);
        }
    }
    let (a, b) = (src.join("ns/proj/exp"), out.join("ns/proj/exp"));
    assert_eq!(
        read_json(&a.join("parameters.json"))["data"],
        read_json(&b.join("parameters.json"))["data"]
    );
    assert_eq!(
        jsonl(&a.join("logs/logs.jsonl")),
        jsonl(&b.join("logs/logs.jsonl")),
        "log lines: sequence numbers, timestamps, levels, messages, metadata"
    );
    for m in ["train_loss", "val"] {
        let rel = format!("metrics/{m}/data.jsonl");
        assert_eq!(
            jsonl(&a.join(&rel)),
            jsonl(&b.join(&rel)),
            "{m}: index, data, createdAt"
        );
    }
    // Byte for byte, even: same key order, same spacing, floats in their shortest form.
    for rel in [
        "logs/logs.jsonl",
        "metrics/train_loss/data.jsonl",
        "metrics/val/data.jsonl",
    ] {
        assert_eq!(
            fs::read_to_string(a.join(rel)).unwrap(),
            fs::read_to_string(b.join(rel)).unwrap(),
            "{rel}"
        );
    }

    // Importing again adds nothing.
    let before = list_everything(&store).len();
    let (code, again) = import(&root, &src);
    assert_eq!(code, 0);
    for k in ["imported", "params", "logs", "metricPoints"] {
        assert_eq!(again[k], 0, "{k}: {again}");
    }
    assert_eq!(again["skipped"], 6);
    assert_eq!(list_everything(&store).len(), before);
    let r = run(
        &root,
        &[
            "logs",
            "--project",
            "proj",
            "--experiment",
            "exp",
            "--namespace",
            "ns",
            "--json",
        ],
    );
    assert_eq!(json_lines(ok(&r)).len(), 6);

    // A later change is never undone by importing the old tree again.
    let e = ml_dash::Experiment::new("exp", "proj")
        .namespace("ns")
        .local_path(&root)
        .open()
        .unwrap();
    e.parameters().set(&json!({"lr": 0.5})).unwrap();
    let (code, again) = import(&root, &src);
    assert_eq!((code, again["params"].as_u64()), (0, Some(0)));
    assert_eq!(e.parameters().get().unwrap().unwrap().data["lr"], 0.5);

    // DIR may also be the namespace folder: experiment.json's prefix names the experiment.
    let root2 = dir.path().join("store2");
    let (code, _) = import(&root2, &src.join("ns"));
    assert_eq!(code, 0);
    let keys: BTreeSet<String> = list_live(&Store::open(&root2).unwrap())
        .iter()
        .map(|r| format!("{}/{}/{}", r.namespace, r.project, r.experiment))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["ns/proj/exp".into(), "ns/proj/exp2".into()])
    );
}

#[test]
fn import_of_a_damaged_client_tree_reports_and_imports_the_rest() {
    let dir = tmp();
    let src = dir.path().join("client");
    python("write_tree.py", &[&src, &dir.path().join("scratch")]);
    // exp: one file's bytes no longer match the record. exp2: the index is torn mid-record.
    let exp = src.join("ns/proj/exp");
    let recs = live_records(&exp);
    let model = &recs["/models/model.pth"];
    let p = exp
        .join("files/models")
        .join(model["id"].as_str().unwrap())
        .join("model.pth");
    flip_byte(&p, 1234);
    let idx = src.join("ns/proj/exp2/files/.files_metadata.json");
    let text = fs::read_to_string(&idx).unwrap();
    let second = text.rfind("{\"id\"").unwrap();
    fs::write(&idx, &text[..second + 30]).unwrap();

    let root = dir.path().join("store");
    let (code, sum) = import(&root, &src);
    assert_eq!(code, 1, "damage exits 1");
    let problems = sum["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| {
        let p = p.as_str().unwrap();
        p.contains("model.pth") && p.contains("SHA-256")
    }));
    assert!(problems.iter().any(|p| {
        let p = p.as_str().unwrap();
        p.contains("exp2") && p.contains(".files_metadata.json")
    }));
    assert_eq!(
        sum["imported"], 4,
        "the 3 good files of exp and the first of exp2"
    );
    assert_eq!(
        (sum["params"].as_u64(), sum["logs"].as_u64()),
        (Some(1), Some(6))
    );
    let store = Store::open(&root).unwrap();
    let names: BTreeSet<String> = list_live(&store).iter().map(|r| r.full_path()).collect();
    assert!(
        !names.contains("/models/model.pth"),
        "bad bytes are not a version"
    );
    assert!(names.contains("/models/checkpoints/ckpt_1.pth") && names.contains("/a/one.txt"));
    assert!(store.verify().unwrap().ok, "the store stays healthy");
}

/// An export of many files that each span several packs stays within the process's limit of
/// open files: each open reader keeps its packs open, so readers are opened and handed on within
/// a budget of pack files.
#[test]
fn an_export_of_many_multi_pack_files_stays_within_the_open_file_limit() {
    let dir = tmp();
    let root = dir.path().join("store");
    // 1 MiB packs: each file of 3.5 MB spans 4 of them.
    let store =
        Store::open_with(&root, ml_dash::StoreOptions::default().pack_target(1 << 20)).unwrap();
    let exp = ml_dash::ExperimentKey::new("local", "p", "e").unwrap();
    let mut want = BTreeMap::new();
    for i in 0..64u64 {
        let data = random_bytes(900 + i, 3_500_000);
        let name = format!("f{i}.bin");
        store
            .put_reader(
                &data[..],
                &exp.file("/".into(), name.clone()),
                ml_dash::NewVersion::default(),
                None,
            )
            .unwrap();
        want.insert(name, sha256_hex(&data));
    }
    assert!(pack_files(&root).len() >= 200);
    let out = dir.path().join("out");
    let script = format!(
        "ulimit -n 200 && exec '{}' --root '{}' export '{}' --json",
        bin().display(),
        root.display(),
        out.display()
    );
    let r = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stdout = String::from_utf8(r.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stdout}\n{stderr}");
    let sum = &json_lines(&stdout)[0];
    assert_eq!(sum["written"], 64, "{sum:?}");
    for (name, sha) in &want {
        let got = fs::read(out.join("p/e/files").join(name)).unwrap();
        assert_eq!(&sha256_hex(&got), sha, "{name}");
    }
}
