//! The `ml-dash` binary against its contract: output shapes, filters, exit codes, refusals.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::util::*;

const RECORD_KEYS: [&str; 17] = [
    "id",
    "namespace",
    "project",
    "experiment",
    "path",
    "filename",
    "version",
    "sizeBytes",
    "checksum",
    "contentType",
    "description",
    "tags",
    "metadata",
    "uploadedAt",
    "updatedAt",
    "deletedAt",
    "newBytes",
];

#[track_caller]
fn check_record_shape(r: &Map<String, Value>) {
    // `list --json` adds how the version is stored; every other key is the record's.
    let keys: BTreeSet<&str> = r
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "storage")
        .collect();
    let want: BTreeSet<&str> = RECORD_KEYS.into_iter().collect();
    assert_eq!(keys, want, "record keys");
    if let Some(st) = r.get("storage") {
        for k in [
            "logicalBytes",
            "uniqueBytes",
            "storedBytes",
            "newBytes",
            "deltaDepth",
        ] {
            assert!(st[k].is_u64(), "storage.{k}: {st}");
        }
        for k in ["whole", "planes", "delta"] {
            assert!(st["codecBytes"][k].is_u64(), "storage.codecBytes.{k}: {st}");
        }
        assert_eq!(st["logicalBytes"], r["sizeBytes"]);
        assert_eq!(st["newBytes"], r["newBytes"]);
    }
    for k in ["uploadedAt", "updatedAt"] {
        let s = r[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} is not a string"));
        assert!(is_iso_utc(s), "{k} = {s:?}");
    }
    match &r["deletedAt"] {
        Value::Null => {}
        Value::String(s) => assert!(is_iso_utc(s), "deletedAt = {s:?}"),
        other => panic!("deletedAt = {other:?}"),
    }
    let sum = r["checksum"].as_str().unwrap();
    assert_eq!(sum.len(), 64);
    assert!(
        sum.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    );
    assert!(r["version"].as_u64().unwrap() >= 1);
    assert!(r["sizeBytes"].is_u64() && r["newBytes"].is_u64());
    assert!(r["tags"].is_array());
    assert!(r["metadata"].is_object() || r["metadata"].is_null());
}

/// An empty store under a fresh temp dir, plus a directory for source files.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tmp();
    let root = dir.path().join("store");
    ml_dash::Store::open(&root).expect("create the store");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    (dir, root, src)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn upload(root: &Path, files: &[&Path], extra: &[&str]) -> Vec<Map<String, Value>> {
    let mut args = vec!["upload"];
    args.extend(files.iter().map(|p| s(p)));
    args.extend(["--project", "p", "--experiment", "e", "--json"]);
    args.extend(extra);
    let r = run(root, &args);
    json_lines(ok(&r))
}

fn list_json(root: &Path, extra: &[&str]) -> Vec<Map<String, Value>> {
    let mut args = vec!["list", "--json"];
    args.extend(extra);
    let r = run(root, &args);
    let lines = json_lines(ok(&r));
    for l in &lines {
        check_record_shape(l);
    }
    lines
}

fn full_paths(recs: &[Map<String, Value>]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            let p = r["path"].as_str().unwrap();
            let n = r["filename"].as_str().unwrap();
            if p == "/" {
                format!("/{n}")
            } else {
                format!("{p}/{n}")
            }
        })
        .collect()
}

#[test]
fn upload_json_prints_one_record_per_file() {
    let (_d, root, src) = setup();
    let a = random_bytes(1, 100_000);
    let b = random_bytes(2, 5);
    let c = Vec::new();
    let fa = write_file(&src, "a.pth", &a);
    let fb = write_file(&src, "b.json", &b);
    let fc = write_file(&src, "empty.txt", &c);
    let out = upload(
        &root,
        &[&fa, &fb, &fc],
        &[
            "--prefix",
            "/models/run1/",
            "--description",
            "three files",
            "--tag",
            "best",
            "--tag",
            "epoch-3",
            "--metadata",
            r#"{"lr": 0.01, "layers": [1, 2]}"#,
        ],
    );
    assert_eq!(out.len(), 3, "one line per file");
    for (r, (name, data, ctype)) in out.iter().zip([
        ("a.pth", &a, "application/octet-stream"),
        ("b.json", &b, "application/json"),
        ("empty.txt", &c, "text/plain"),
    ]) {
        check_record_shape(r);
        assert_eq!(r["namespace"], "local");
        assert_eq!(r["project"], "p");
        assert_eq!(r["experiment"], "e");
        assert_eq!(r["path"], "/models/run1");
        assert_eq!(r["filename"], name);
        assert_eq!(r["version"], 1);
        assert_eq!(r["sizeBytes"], data.len() as u64);
        assert_eq!(r["checksum"], sha256_hex(data));
        assert_eq!(r["contentType"], ctype);
        assert_eq!(r["description"], "three files");
        assert_eq!(r["tags"], serde_json::json!(["best", "epoch-3"]));
        assert_eq!(
            r["metadata"],
            serde_json::json!({"lr": 0.01, "layers": [1, 2]})
        );
        assert_eq!(r["deletedAt"], Value::Null);
    }
    assert!(out[0]["newBytes"].as_u64().unwrap() >= a.len() as u64);
    // The listing shows the same records (and how each is stored).
    let mut listed = list_json(&root, &[]);
    assert_eq!(listed.len(), 3);
    for l in &mut listed {
        assert!(l.remove("storage").is_some());
    }
    for r in &out {
        assert!(listed.contains(r), "{r:?} not listed");
    }
    // Upload again: version 2, nothing new stored for identical bytes; text output mode works.
    let again = upload(&root, &[&fa], &["--prefix", "/models/run1"]);
    assert_eq!(again[0]["version"], 2);
    assert_eq!(again[0]["newBytes"], 0);
    assert_eq!(again[0]["description"], Value::Null);
    assert_eq!(again[0]["tags"], serde_json::json!([]));
    assert_eq!(again[0]["metadata"], Value::Null);
    let text = run(
        &root,
        &["upload", s(&fb), "--project", "p", "--experiment", "e"],
    );
    assert!(ok(&text).contains("b.json"), "{}", text.1);
}

#[test]
fn upload_from_standard_input() {
    let (_d, root, src) = setup();
    let data = random_bytes(3, 1_500_000);
    let args = [
        "upload",
        "-",
        "--to",
        "sub/piped.bin",
        "--prefix",
        "/in",
        "--project",
        "p",
        "--experiment",
        "e",
        "--json",
    ];
    let (code, out, err) = run_bytes(&root, &args, Some(&data));
    assert_eq!(code, 0, "{err}");
    let recs = json_lines(std::str::from_utf8(&out).unwrap());
    assert_eq!(recs.len(), 1);
    check_record_shape(&recs[0]);
    assert_eq!(recs[0]["path"], "/in/sub");
    assert_eq!(recs[0]["filename"], "piped.bin");
    assert_eq!(recs[0]["sizeBytes"], data.len() as u64);
    assert_eq!(recs[0]["checksum"], sha256_hex(&data));
    let dl = [
        "download",
        "--project",
        "p",
        "--experiment",
        "e",
        "/in/sub/piped.bin",
        "-o",
        "-",
    ];
    let (code, got, err) = run_bytes(&root, &dl, None);
    assert_eq!(code, 0, "{err}");
    assert!(got == data, "stdin upload does not round-trip");

    // `-` without --to, `-` twice, and --to with two files are refused; nothing stored.
    let r = run(
        &root,
        &["upload", "-", "--project", "p", "--experiment", "f"],
    );
    refused(&r, "stdin without --to");
    let r = run(
        &root,
        &[
            "upload",
            "-",
            "-",
            "--to",
            "x",
            "--project",
            "p",
            "--experiment",
            "f",
        ],
    );
    refused(&r, "stdin twice");
    let f1 = write_file(&src, "one.bin", b"1");
    let f2 = write_file(&src, "two.bin", b"2");
    let r = run(
        &root,
        &[
            "upload",
            s(&f1),
            s(&f2),
            "--to",
            "x.bin",
            "--project",
            "p",
            "--experiment",
            "f",
        ],
    );
    refused(&r, "--to with two files");
    assert!(list_json(&root, &["--experiment", "f"]).is_empty());
    assert_eq!(list_json(&root, &[]).len(), 1);
}

/// Files for the list tests: (experiment, prefix, name, tags).
fn populate_for_list(root: &Path, src: &Path) {
    let items: [(&str, &str, &str, &str, &[&str]); 6] = [
        ("p", "e", "/models", "a.pth", &["best"]),
        ("p", "e", "/models/sub", "b.pth", &[]),
        ("p", "e", "/models_old", "c.pth", &["best"]),
        ("p", "e", "/logs", "train.log", &["best", "final"]),
        ("p", "e2", "/models", "z.pth", &["best"]),
        ("q", "e", "/models", "q.pth", &[]),
    ];
    for (i, (project, exp, prefix, name, tags)) in items.iter().enumerate() {
        let f = write_file(src, name, &random_bytes(i as u64, 100 + i));
        let mut args = vec![
            "upload",
            s(&f),
            "--project",
            project,
            "--experiment",
            exp,
            "--prefix",
            prefix,
        ];
        for t in *tags {
            args.extend(["--tag", t]);
        }
        ok(&run(root, &args));
    }
    // A second version of a.pth.
    let f = write_file(src, "a.pth", b"version two");
    ok(&run(
        root,
        &[
            "upload",
            s(&f),
            "--project",
            "p",
            "--experiment",
            "e",
            "--prefix",
            "/models",
            "--tag",
            "best",
        ],
    ));
}

#[test]
fn list_filters() {
    let (_d, root, src) = setup();
    populate_for_list(&root, &src);
    let pe = ["--project", "p", "--experiment", "e"];
    let with = |extra: &[&str]| {
        let mut a = pe.to_vec();
        a.extend(extra);
        full_paths(&list_json(&root, &a))
    };
    assert_eq!(
        with(&[]),
        vec![
            "/logs/train.log",
            "/models/a.pth",
            "/models/sub/b.pth",
            "/models_old/c.pth"
        ]
    );
    // Prefix: whole segments only.
    assert_eq!(
        with(&["--prefix", "/models"]),
        vec!["/models/a.pth", "/models/sub/b.pth"]
    );
    assert_eq!(
        with(&["--prefix", "/models/"]),
        vec!["/models/a.pth", "/models/sub/b.pth"]
    );
    assert_eq!(
        with(&["--prefix", "/models_old"]),
        vec!["/models_old/c.pth"]
    );
    assert_eq!(with(&["--prefix", "/model"]), Vec::<String>::new());
    assert_eq!(
        with(&["--prefix", "/models/sub"]),
        vec!["/models/sub/b.pth"]
    );
    // Tags: every tag must be present.
    assert_eq!(
        with(&["--tag", "best"]),
        vec!["/logs/train.log", "/models/a.pth", "/models_old/c.pth"]
    );
    assert_eq!(
        with(&["--tag", "best", "--tag", "final"]),
        vec!["/logs/train.log"]
    );
    assert_eq!(with(&["--tag", "nope"]), Vec::<String>::new());
    // Glob on the file name, or on the full path when it has a `/`.
    assert_eq!(
        with(&["--glob", "*.pth"]),
        vec!["/models/a.pth", "/models/sub/b.pth", "/models_old/c.pth"]
    );
    assert_eq!(with(&["--glob", "/models/*.pth"]), vec!["/models/a.pth"]);
    assert_eq!(with(&["--glob", "*.log"]), vec!["/logs/train.log"]);
    assert_eq!(
        with(&["--glob", "*.pth", "--prefix", "/models", "--tag", "best"]),
        vec!["/models/a.pth"]
    );
    // Scope.
    assert_eq!(full_paths(&list_json(&root, &[])).len(), 6);
    assert_eq!(
        full_paths(&list_json(&root, &["--project", "p", "--experiment", "e2"])),
        vec!["/models/z.pth"]
    );
    assert_eq!(
        full_paths(&list_json(&root, &["--project", "q"])),
        vec!["/models/q.pth"]
    );
    assert_eq!(full_paths(&list_json(&root, &["--project", "p"])).len(), 5);
    let in_e: Vec<_> = list_json(&root, &["--experiment", "e"]);
    assert_eq!(in_e.len(), 5, "experiment `e` in projects p and q");
    assert!(list_json(&root, &["--namespace", "other"]).is_empty());
    assert_eq!(list_json(&root, &["--namespace", "local"]).len(), 6);
    // Latest version by default, every version with --all-versions.
    let latest = list_json(
        &root,
        &["--project", "p", "--experiment", "e", "--glob", "a.pth"],
    );
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["version"], 2);
    let all = list_json(
        &root,
        &[
            "--project",
            "p",
            "--experiment",
            "e",
            "--glob",
            "a.pth",
            "--all-versions",
        ],
    );
    let versions: Vec<u64> = all.iter().map(|r| r["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(all[1], latest[0]);
    // Text output: one line per file.
    let text = run(&root, &["list", "--project", "p", "--experiment", "e"]);
    assert_eq!(ok(&text).lines().count(), 4);
    assert!(text.1.contains("local/p/e/models/a.pth"));
}

#[test]
fn download_to_file_stdout_and_by_version() {
    let (d, root, src) = setup();
    let v1 = random_bytes(10, 3_000_000);
    let v2 = random_bytes(11, 123_457);
    let f = write_file(&src, "m.pth", &v1);
    upload(&root, &[&f], &["--prefix", "/models"]);
    let f = write_file(&src, "m.pth", &v2);
    upload(&root, &[&f], &["--prefix", "/models"]);
    let base = [
        "download",
        "--project",
        "p",
        "--experiment",
        "e",
        "/models/m.pth",
    ];

    let out = d.path().join("out.pth");
    let mut a = base.to_vec();
    a.extend(["-o", s(&out)]);
    let r = run(&root, &a);
    ok(&r);
    same_bytes(
        std::fs::read(&out).unwrap(),
        &v2,
        "-o FILE gives the latest version",
    );

    let mut a = base.to_vec();
    a.extend(["-o", "-"]);
    let (code, got, err) = run_bytes(&root, &a, None);
    assert_eq!(code, 0, "{err}");
    assert!(got == v2, "-o - must write exactly the bytes to stdout");

    let mut a = base.to_vec();
    a.extend(["--version", "1", "-o", "-"]);
    let (code, got, err) = run_bytes(&root, &a, None);
    assert_eq!(code, 0, "{err}");
    assert!(got == v1, "--version 1");
    let out1 = d.path().join("v1.pth");
    let mut a = base.to_vec();
    a.extend(["--version", "1", "--output", s(&out1)]);
    ok(&run(&root, &a));
    same_bytes(std::fs::read(&out1).unwrap(), &v1, "downloaded file");
    // Replacing an existing file.
    let mut a = base.to_vec();
    a.extend(["-o", s(&out1)]);
    ok(&run(&root, &a));
    same_bytes(std::fs::read(&out1).unwrap(), &v2, "downloaded file");
    // Without -o: ./FILENAME in the working directory (the store's parent here).
    ok(&run(&root, &base));
    same_bytes(
        std::fs::read(d.path().join("m.pth")).unwrap(),
        &v2,
        "downloaded file",
    );

    // Missing version / path: refused, no output file.
    let out3 = d.path().join("v3.pth");
    let mut a = base.to_vec();
    a.extend(["--version", "3", "-o", s(&out3)]);
    refused(&run(&root, &a), "missing version");
    assert!(!out3.exists());
    let r = run(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            "/models/none.pth",
            "-o",
            s(&out3),
        ],
    );
    refused(&r, "missing path");
    assert!(!out3.exists());
    let r = run(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            "models/m.pth",
            "-o",
            s(&out3),
        ],
    );
    refused(&r, "relative path");
    assert!(!out3.exists());
}

#[test]
fn delete_then_list_is_empty() {
    let (_d, root, src) = setup();
    let f = write_file(&src, "m.pth", b"one");
    upload(&root, &[&f], &["--prefix", "/models"]);
    let f = write_file(&src, "m.pth", b"two");
    upload(&root, &[&f], &["--prefix", "/models"]);
    let del = [
        "delete",
        "--project",
        "p",
        "--experiment",
        "e",
        "/models/m.pth",
    ];
    let r = run(&root, &del);
    ok(&r);
    assert!(list_json(&root, &[]).is_empty());
    assert!(list_json(&root, &["--all-versions"]).is_empty());
    let gone = list_json(&root, &["--all-versions", "--deleted"]);
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|r| r["deletedAt"].is_string()));
    refused(&run(&root, &del), "delete twice");
    let dl = [
        "download",
        "--project",
        "p",
        "--experiment",
        "e",
        "/models/m.pth",
        "-o",
        "-",
    ];
    refused(&run(&root, &dl), "download deleted");
    // Upload again: version 3.
    let f = write_file(&src, "m.pth", b"three");
    let again = upload(&root, &[&f], &["--prefix", "/models"]);
    assert_eq!(again[0]["version"], 3);
    assert_eq!(full_paths(&list_json(&root, &[])), vec!["/models/m.pth"]);
}

#[test]
fn verify_exit_codes_and_damage_named() {
    let (_d, root, src) = setup();
    let data = random_bytes(20, 600_000);
    let f = write_file(&src, "a.pth", &data);
    upload(&root, &[&f], &["--prefix", "/models"]);
    let r = run(&root, &["verify"]);
    assert_eq!(r.0, 0, "healthy store: {} {}", r.1, r.2);
    let r = run(&root, &["verify", "--json"]);
    assert_eq!(r.0, 0);
    let rep = json_lines(&r.1);
    assert_eq!(rep.len(), 1);
    assert_eq!(rep[0]["ok"], true);
    assert_eq!(rep[0]["damagedFiles"], serde_json::json!([]));

    let pack = pack_files(&root)[0].clone();
    let recs = pack_records(&pack);
    let rec = recs[recs.len() / 2];
    flip_byte(&pack, rec.data_start() + rec.stored_len / 2);

    let r = run(&root, &["verify"]);
    assert_eq!(r.0, 1, "damage must exit 1: {} {}", r.1, r.2);
    assert!(!r.2.contains("panicked"));
    assert!(
        r.1.contains("local/p/e/models/a.pth v1"),
        "damaged file not named: {}",
        r.1
    );
    let r = run(&root, &["verify", "--json"]);
    assert_eq!(r.0, 1);
    let rep = json_lines(&r.1);
    assert_eq!(rep[0]["ok"], false);
    let damaged = rep[0]["damagedFiles"].as_array().unwrap();
    assert_eq!(damaged.len(), 1);
    assert!(
        damaged[0]
            .as_str()
            .unwrap()
            .starts_with("local/p/e/models/a.pth v1")
    );
    // Downloading the damaged file fails and writes nothing.
    let out = root.parent().unwrap().join("dl.pth");
    let r = run(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            "/models/a.pth",
            "-o",
            s(&out),
        ],
    );
    refused(&r, "download of a damaged file");
    assert!(!out.exists());
}

#[test]
fn gc_and_stats_json() {
    let (_d, root, src) = setup();
    let a = random_bytes(30, 1_000_000);
    let b = random_bytes(31, 500_000);
    let fa = write_file(&src, "a.bin", &a);
    let fb = write_file(&src, "b.bin", &b);
    upload(&root, &[&fa, &fb], &[]);
    upload(&root, &[&fa], &["--prefix", "/copy"]);

    let r = run(&root, &["stats", "--json"]);
    let st = json_lines(ok(&r));
    assert_eq!(st.len(), 1);
    for k in [
        "files",
        "versions",
        "logicalBytes",
        "uniqueBytes",
        "storedBytes",
        "chunks",
    ] {
        assert!(st[0].contains_key(k), "stats lacks {k}: {:?}", st[0]);
        assert!(st[0][k].is_u64(), "{k} is not a count");
    }
    assert_eq!(st[0]["files"], 3);
    assert_eq!(st[0]["versions"], 3);
    assert_eq!(st[0]["logicalBytes"], (2 * a.len() + b.len()) as u64);
    assert_eq!(st[0]["uniqueBytes"], (a.len() + b.len()) as u64);
    let stored = st[0]["storedBytes"].as_u64().unwrap();
    assert!(stored >= (a.len() + b.len()) as u64);
    let r = run(
        &root,
        &["stats", "--project", "p", "--experiment", "nope", "--json"],
    );
    let st0 = json_lines(ok(&r));
    assert_eq!(
        (st0[0]["files"].as_u64(), st0[0]["logicalBytes"].as_u64()),
        (Some(0), Some(0))
    );
    ok(&run(&root, &["stats"]));

    ok(&run(
        &root,
        &["delete", "--project", "p", "--experiment", "e", "/b.bin"],
    ));
    let snap = snapshot_durable(&root);
    let before = packs_total(&root);
    let r = run(&root, &["gc", "--dry-run", "--json"]);
    let g = json_lines(ok(&r));
    assert_eq!(g.len(), 1);
    let keys: BTreeSet<&str> = g[0].keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "dryRun",
        "deletedVersions",
        "retentionDropped",
        "garbageChunks",
        "garbageBytes",
        "packsDeleted",
        "packsRewritten",
        "reclaimedBytes",
        "remainingGarbageBytes",
        "keptAsDeltaBases",
        "heldPacks",
        "packsQuarantined",
        "problems",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, want, "gc --json keys");
    assert_eq!(g[0]["dryRun"], true);
    assert_eq!(g[0]["deletedVersions"], 1);
    let garbage = g[0]["garbageBytes"].as_u64().unwrap();
    assert!(garbage >= b.len() as u64);
    assert_eq!(
        snapshot_durable(&root),
        snap,
        "gc --dry-run changed the store"
    );

    let r = run(&root, &["gc", "--threshold", "0", "--json"]);
    let g2 = json_lines(ok(&r));
    assert_eq!(g2[0]["dryRun"], false);
    assert_eq!(g2[0]["garbageBytes"], garbage);
    assert_eq!(before - packs_total(&root), garbage);
    assert_eq!(g2[0]["reclaimedBytes"], garbage);
    ok(&run(&root, &["gc"]));
    refused(
        &run(&root, &["gc", "--threshold", "2"]),
        "threshold out of range",
    );
    let st = json_lines(ok(&run(&root, &["stats", "--json"])));
    assert_eq!(st[0]["uniqueBytes"], a.len() as u64);
    let out = run_bytes(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            "/copy/a.bin",
            "-o",
            "-",
        ],
        None,
    );
    assert_eq!(out.0, 0);
    assert!(out.1 == a);
}

#[test]
fn refusals_leave_the_store_unchanged() {
    let (d, root, src) = setup();
    let good = write_file(&src, "good.bin", b"good bytes");
    let missing = src.join("missing.bin");
    let fifo = src.join("fifo");
    mkfifo(&fifo);
    let deep = {
        let mut v = String::from("1");
        for _ in 0..40 {
            v = format!("{{\"a\":{v}}}");
        }
        v
    };
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(70 * 1024));
    let g = s(&good);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("prefix with ..", vec![g, "--prefix", "/a/../b"]),
        ("prefix ..", vec![g, "--prefix", ".."]),
        ("empty segment", vec![g, "--prefix", "/a//b"]),
        ("control char in prefix", vec![g, "--prefix", "/a\nb"]),
        ("absolute --to", vec![g, "--to", "/etc/passwd"]),
        ("--to ..", vec![g, "--to", "../x"]),
        ("--to escaping", vec![g, "--to", "a/../../x"]),
        ("metadata array", vec![g, "--metadata", "[1,2]"]),
        ("metadata string", vec![g, "--metadata", "\"str\""]),
        ("metadata number", vec![g, "--metadata", "5"]),
        ("metadata not JSON", vec![g, "--metadata", "{oops"]),
        ("metadata too deep", vec![g, "--metadata", &deep]),
        ("metadata too big", vec![g, "--metadata", &big]),
        ("empty tag", vec![g, "--tag", ""]),
        ("directory", vec![s(&src)]),
        ("missing file", vec![s(&missing)]),
        ("fifo", vec![s(&fifo)]),
        ("a good and a missing file", vec![g, s(&missing)]),
    ];
    for (what, args) in &cases {
        let mut a = vec!["upload"];
        a.extend(args.iter().copied());
        a.extend(["--project", "p", "--experiment", "e"]);
        refused(&run(&root, &a), what);
        assert_eq!(
            ok(&run(&root, &["list", "--json"])),
            "",
            "{what} stored something"
        );
    }
    for (what, project, experiment) in [
        ("project with /", "a/b", "e"),
        ("project ..", "..", "e"),
        ("experiment with /", "p", "x/y"),
        ("experiment ..", "p", ".."),
    ] {
        let r = run(
            &root,
            &[
                "upload",
                g,
                "--project",
                project,
                "--experiment",
                experiment,
            ],
        );
        refused(&r, what);
    }
    let r = run(
        &root,
        &[
            "upload",
            g,
            "--project",
            "p",
            "--experiment",
            "e",
            "--namespace",
            "a/b",
        ],
    );
    refused(&r, "namespace with /");
    refused(
        &run(&root, &["list", "--prefix", "/a//b"]),
        "list bad prefix",
    );
    refused(
        &run(&root, &["list", "--project", ".."]),
        "list bad project",
    );
    refused(&run(&root, &["list", "--glob", "a[b"]), "list bad glob");
    refused(
        &run(
            &root,
            &["delete", "--project", "p", "--experiment", "e", "/nothing"],
        ),
        "delete missing",
    );
    refused(
        &run(
            &root,
            &["delete", "--project", "p", "--experiment", "e", "/a/../b"],
        ),
        "delete bad path",
    );

    assert_eq!(
        ok(&run(
            &root,
            &["list", "--json", "--all-versions", "--deleted"]
        )),
        ""
    );
    let v = run(&root, &["verify", "--json"]);
    assert_eq!(v.0, 0);
    assert_eq!(json_lines(&v.1)[0]["versions"], 0);
    assert_eq!(packs_total(&root), 0);
    assert!(!d.path().join("b").exists() && !d.path().join("x").exists());
    // A source that changes while it is read (a /proc file says 0 bytes, then yields more):
    // refused, nothing recorded, the store healthy.
    let r = run(
        &root,
        &[
            "upload",
            "/proc/self/status",
            "--project",
            "p",
            "--experiment",
            "e",
        ],
    );
    refused(&r, "file changing while read");
    assert_eq!(
        ok(&run(
            &root,
            &["list", "--json", "--all-versions", "--deleted"]
        )),
        ""
    );
    assert_eq!(run(&root, &["verify"]).0, 0);
    // The same store still accepts a good upload.
    assert_eq!(upload(&root, &[&good], &[]).len(), 1);
}

#[test]
fn root_from_environment() {
    let (d, _, src) = setup();
    let root = d.path().join("env-store");
    let f = write_file(&src, "env.bin", b"via env");
    let r = run_env(
        d.path(),
        &[("ML_DASH_ROOT", &root)],
        &[
            "upload",
            s(&f),
            "--project",
            "p",
            "--experiment",
            "e",
            "--json",
        ],
    );
    ok(&r);
    assert!(
        root.join("FORMAT").exists(),
        "store created at $ML_DASH_ROOT"
    );
    assert_eq!(full_paths(&list_json(&root, &[])), vec!["/env.bin"]);
    let r = run_env(d.path(), &[("ML_DASH_ROOT", &root)], &["list", "--json"]);
    assert_eq!(full_paths(&json_lines(ok(&r))), vec!["/env.bin"]);
    // --root wins over the environment.
    let other = d.path().join("other-store");
    let r = run_env(
        d.path(),
        &[("ML_DASH_ROOT", &other)],
        &["--root", s(&root), "list", "--json"],
    );
    assert_eq!(json_lines(ok(&r)).len(), 1);
    assert!(!other.exists());
    // Neither: ./.ml-dash in the working directory.
    let r = run_env(
        d.path(),
        &[],
        &["upload", s(&f), "--project", "p", "--experiment", "e"],
    );
    ok(&r);
    assert!(d.path().join(".ml-dash").join("FORMAT").exists());
}

#[test]
fn concurrent_processes_upload_to_one_store() {
    let (_d, root, src) = setup();
    // The store exists before the writers start (creation races: see the next test).
    let mut children = Vec::new();
    let mut expected = Vec::new();
    for p in 0..3u64 {
        let mut files = Vec::new();
        for i in 0..4u64 {
            let data = random_bytes(p * 100 + i, 50_000 + usize_from(i) * 1000);
            let name = format!("proc{p}-file{i}.bin");
            files.push(write_file(&src, &name, &data));
            expected.push((format!("/par/{name}"), data));
        }
        let shared = write_file(&src, &format!("shared-{p}"), &random_bytes(p + 50, 30_000));
        let mut args: Vec<String> = vec!["upload".into()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        args.extend(
            [
                "--project",
                "p",
                "--experiment",
                "e",
                "--prefix",
                "/par",
                "--json",
            ]
            .map(String::from),
        );
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        children.push(spawn(&root, &a));
        let b = [
            "upload",
            s(&shared),
            "--to",
            "same.bin",
            "--project",
            "p",
            "--experiment",
            "e",
            "--json",
        ];
        children.push(spawn(&root, &b));
    }
    // Wait for every child before asserting anything (the temp dir outlives them all).
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in outputs {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a concurrent upload failed: {err}");
        assert!(!err.contains("panicked"));
        let lines = json_lines(std::str::from_utf8(&out.stdout).unwrap());
        assert!(lines.len() == 4 || lines.len() == 1);
    }
    let listed = list_json(&root, &["--prefix", "/par"]);
    assert_eq!(listed.len(), 12);
    for (path, data) in &expected {
        let (code, got, err) = run_bytes(
            &root,
            &[
                "download",
                "--project",
                "p",
                "--experiment",
                "e",
                path,
                "-o",
                "-",
            ],
            None,
        );
        assert_eq!(code, 0, "{path}: {err}");
        assert!(&got == data, "{path} differs");
    }
    let same = list_json(&root, &["--glob", "same.bin", "--all-versions"]);
    let mut versions: Vec<u64> = same
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        vec![1, 2, 3],
        "each concurrent upload gets its own version"
    );
    let ids: BTreeSet<String> = list_json(&root, &["--all-versions"])
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 15, "ids are unique");
    assert_eq!(run(&root, &["verify"]).0, 0);
}

#[test]
fn concurrent_processes_create_a_new_store() {
    // Several processes (say, training jobs started together) open a store that does not exist
    // yet: every one of them must succeed, whichever creates it. (Whether two of them overlap
    // depends on scheduling; `ingest::open_while_another_opener_is_creating_the_store` pins
    // down the state a late opener sees.)
    let (d, _root, src) = setup();
    let f = write_file(&src, "f.bin", b"bytes");
    let procs = 10;
    for round in 0..4 {
        let root = d.path().join(format!("fresh-{round}"));
        let children: Vec<_> = (0..procs)
            .map(|i| {
                let exp = format!("e{i}");
                spawn(
                    &root,
                    &[
                        "upload",
                        s(&f),
                        "--project",
                        "p",
                        "--experiment",
                        &exp,
                        "--json",
                    ],
                )
            })
            .collect();
        let outputs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        for out in outputs {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "round {round}: concurrent first open failed: {err}"
            );
        }
        assert_eq!(list_json(&root, &[]).len(), procs);
    }
}

#[test]
fn unicode_names_and_odd_destinations() {
    let (d, root, src) = setup();
    let name = "modèle ünï 模型.pth";
    let data = random_bytes(90, 70_000);
    let f = write_file(&src, name, &data);
    let out = upload(&root, &[&f], &["--prefix", "/résultats/été", "--tag", "ß"]);
    assert_eq!(out[0]["filename"], name);
    assert_eq!(out[0]["path"], "/résultats/été");
    let listed = list_json(
        &root,
        &["--glob", "*.pth", "--prefix", "/résultats", "--tag", "ß"],
    );
    assert_eq!(full_paths(&listed), vec![format!("/résultats/été/{name}")]);
    let full = format!("/résultats/été/{name}");
    let (code, got, err) = run_bytes(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            &full,
            "-o",
            "-",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    same_bytes(got, &data, "unicode download");
    let download_to = |out: &str| {
        run(
            &root,
            &[
                "download",
                "--project",
                "p",
                "--experiment",
                "e",
                &full,
                "-o",
                out,
            ],
        )
    };
    // A directory as the destination is refused and left as it was.
    let target = d.path().join("a-dir");
    std::fs::create_dir(&target).unwrap();
    refused(&download_to(s(&target)), "download into a directory");
    assert!(dir_names(&target).is_empty());
    // A destination in a missing directory is refused.
    let r = download_to(s(&d.path().join("missing-dir").join("x")));
    refused(&r, "download into a missing directory");
    // A named pipe (as `/dev/null` is a device) is written in place, not renamed over.
    let fifo = d.path().join("pipe");
    mkfifo(&fifo);
    let got = drain_fifo_while(&fifo, || {
        ok(&download_to(s(&fifo)));
    })
    .expect("the pipe was replaced");
    same_bytes(got, &data, "download into a pipe");
    assert_eq!(
        dir_names(d.path())
            .iter()
            .filter(|n| n.contains("tmp"))
            .count(),
        0
    );
    // Metadata with multi-byte characters longer than the error preview is refused cleanly.
    let long = format!("[\"{}\"]", "é".repeat(100));
    let r = run(
        &root,
        &[
            "upload",
            s(&f),
            "--project",
            "p",
            "--experiment",
            "e",
            "--metadata",
            &long,
        ],
    );
    refused(&r, "non-object metadata with multi-byte text");
    assert_eq!(list_json(&root, &["--all-versions"]).len(), 1);
}

/// `list --glob` follows the one glob table the library and the Python module also follow.
#[test]
fn glob_table_through_the_cli() {
    let (_d, root, src) = setup();
    let t: Value = serde_json::from_str(include_str!("../data/glob_table.json")).unwrap();
    for p in t["paths"].as_array().unwrap() {
        let (dir, name) = p.as_str().unwrap().rsplit_once('/').unwrap();
        let f = write_file(&src, name, dir.as_bytes());
        let prefix = if dir.is_empty() { "/" } else { dir };
        upload(&root, &[&f], &["--prefix", prefix]);
    }
    for case in t["cases"].as_array().unwrap() {
        let g = case["glob"].as_str().unwrap();
        let mut got = full_paths(&list_json(&root, &["--glob", g]));
        got.sort();
        let mut want: Vec<String> = case["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        want.sort();
        assert_eq!(got, want, "--glob {g:?}");
    }
    for bad in t["invalid"].as_array().unwrap() {
        refused(
            &run(&root, &["list", "--glob", bad.as_str().unwrap()]),
            "an invalid glob",
        );
    }
}

/// A checkpoint directory (`save_pretrained`, one shard per rank): `upload DIR` stores its tree
/// under the prefix in one commit, refuses a tree holding a FIFO or a link to a directory
/// without storing anything, and `download PREFIX` restores the tree byte-exact.
#[test]
fn a_directory_uploads_as_one_commit_and_downloads_as_a_tree() {
    let (_d, root, src) = setup();
    let ckpt = src.join("step-100");
    for (rel, data) in [
        ("config.json", b"{\"layers\": 2}".to_vec()),
        ("tokenizer/vocab.txt", b"a\nb\n".to_vec()),
        ("shards/rank0.bin", vec![1u8; 300_000]),
        ("shards/rank1.bin", vec![2u8; 300_000]),
    ] {
        let p = ckpt.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let recs = upload(&root, &[&ckpt], &["--prefix", "/ckpt"]);
    assert_eq!(
        full_paths(&recs),
        [
            "/ckpt/step-100/config.json",
            "/ckpt/step-100/shards/rank0.bin",
            "/ckpt/step-100/shards/rank1.bin",
            "/ckpt/step-100/tokenizer/vocab.txt"
        ]
    );
    // A tree that cannot be stored whole stores nothing.
    let fifo = ckpt.join("shards/pipe");
    mkfifo(&fifo);
    let args = [
        "upload",
        s(&ckpt),
        "--project",
        "p",
        "--experiment",
        "e",
        "--prefix",
        "/ckpt",
    ];
    let r = run(&root, &args);
    refused(&r, "a FIFO in the tree");
    assert!(r.2.contains("not a regular file"), "{}", r.2);
    std::fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink(&src, ckpt.join("loop")).unwrap();
    let r = run(&root, &args);
    refused(&r, "a link to a directory in the tree");
    assert!(r.2.contains("symbolic link to a directory"), "{}", r.2);
    std::fs::remove_file(ckpt.join("loop")).unwrap();
    assert_eq!(list_json(&root, &[]).len(), 4);
    // The next save: every file a new version, together.
    std::fs::write(ckpt.join("shards/rank1.bin"), vec![3u8; 300_000]).unwrap();
    let recs = upload(&root, &[&ckpt], &["--prefix", "/ckpt", "--to", "latest"]);
    assert_eq!(recs.len(), 4);
    assert!(
        recs.iter()
            .all(|r| r["path"].as_str().unwrap().starts_with("/ckpt/latest"))
    );
    let recs = upload(&root, &[&ckpt], &["--prefix", "/ckpt"]);
    assert!(recs.iter().all(|r| r["version"] == 2), "{recs:?}");
    // Back as a tree.
    let out = src.join("restored");
    let r = run(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            "/ckpt/step-100",
            "-o",
            s(&out),
        ],
    );
    ok(&r);
    for rel in [
        "config.json",
        "tokenizer/vocab.txt",
        "shards/rank0.bin",
        "shards/rank1.bin",
    ] {
        assert_eq!(
            std::fs::read(out.join(rel)).unwrap(),
            std::fs::read(ckpt.join(rel)).unwrap(),
            "{rel}"
        );
    }
    let r = run(
        &root,
        &[
            "download",
            "--project",
            "p",
            "--experiment",
            "e",
            "/ckpt/nothing-here",
        ],
    );
    assert_ne!(r.0, 0);
}
