//! push / pull: every test runs against a directory remote (`file://`, no server), and also
//! against a real S3 server when `ML_DASH_S3_TEST=1` (set by `.ci/run` after
//! `scripts/garage.sh start` has started Garage on 127.0.0.1 and exported its credentials).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ml_dash::remote::{Remote, RemoteConfig};
use ml_dash::{ListFilter, Store, StoreOptions};
use serde_json::Value;

use crate::util::*;

/// The remotes to test against: a fresh directory, and a fresh prefix in the S3 test bucket.
fn remotes(tmp: &Path, name: &str) -> Vec<RemoteConfig> {
    let mut v = vec![RemoteConfig::new(format!(
        "file://{}",
        tmp.join(format!("remote-{name}")).display()
    ))];
    if std::env::var("ML_DASH_S3_TEST").as_deref() == Ok("1") {
        let bucket = std::env::var("ML_DASH_S3_BUCKET")
            .expect("ML_DASH_S3_TEST=1 needs ML_DASH_S3_BUCKET (source target/garage/env)");
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(std::env::var(k).is_ok(), "ML_DASH_S3_TEST=1 needs {k}");
        }
        let run = ml_dash::id::Id::generate();
        v.push(RemoteConfig::new(format!("s3://{bucket}/it/{name}/{run}")));
    } else {
        eprintln!("{name}: S3 part skipped (ML_DASH_S3_TEST is not 1; .ci/run starts Garage)");
    }
    v
}

fn small_packs() -> StoreOptions {
    StoreOptions::default().pack_target(1 << 20)
}

/// Every version (deleted ones too) as JSON, for comparing two stores.
fn all_records(s: &Store) -> Vec<Value> {
    s.list(&ListFilter {
        all_versions: true,
        include_deleted: true,
        ..ListFilter::default()
    })
    .unwrap()
    .iter()
    .map(|r| serde_json::to_value(r).unwrap())
    .collect()
}

/// Store `data` as `/prefix/name` in experiment `exp` of project `remote`.
fn put(s: &Store, exp: &str, full: &str, data: &[u8], tags: &[&str], meta: Value) {
    let (p, name) = ml_dash::path::split_full(full).unwrap();
    let key = ml_dash::path::ExperimentKey::new("local", "remote", exp)
        .unwrap()
        .file(p, name);
    let v = ml_dash::NewVersion {
        description: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        metadata: meta,
    };
    s.put_reader(data, &key, v, None).unwrap();
}

fn delete(s: &Store, exp: &str, full: &str) {
    let (p, name) = ml_dash::path::split_full(full).unwrap();
    let key = ml_dash::path::ExperimentKey::new("local", "remote", exp)
        .unwrap()
        .file(p, name);
    s.delete(&key).unwrap();
}

fn pack_bytes(s: &Store) -> u64 {
    s.stats(&ml_dash::index::Scope::default())
        .unwrap()
        .pack_bytes
}

/// Two experiments sharing most of their bytes, versions, a delete and a metadata update.
/// Returns the logical bytes uploaded.
fn populate(s: &Store, seed: u64, exp: &str) -> u64 {
    let base = random_bytes(seed, 3 << 20);
    let mut logical = 0;
    for v in 0..3u8 {
        let mut b = base.clone();
        b[(v as usize) * 1000] ^= 0xff; // a small change per version
        logical += b.len() as u64;
        put(
            s,
            exp,
            "/models/model.bin",
            &b,
            &["ckpt"],
            serde_json::json!({"v": v}),
        );
    }
    let text = b"epoch,loss\n1,0.5\n2,0.25\n".repeat(1000);
    logical += text.len() as u64;
    put(s, exp, "/results/results.csv", &text, &[], Value::Null);
    put(s, exp, "/scratch.txt", b"temporary", &[], Value::Null);
    logical += 9;
    delete(s, exp, "/scratch.txt");
    logical
}

fn check_same(a: &Store, b: &Store) {
    assert_eq!(all_records(a), all_records(b), "records differ");
    for r in a
        .list(&ListFilter {
            all_versions: true,
            ..ListFilter::default()
        })
        .unwrap()
    {
        let x = ml_dash::read::read_all(&a.open_version(r.id).unwrap()).unwrap();
        let y = ml_dash::read::read_all(&b.open_version(r.id).unwrap()).unwrap();
        assert!(x == y, "bytes of {} differ", r.full_path());
        assert_eq!(sha256_hex(&y), r.checksum.to_string());
    }
    let v = b.verify().unwrap();
    assert!(v.ok, "{v:?}");
}

#[test]
fn push_then_pull_into_a_fresh_root_is_identical_and_repush_writes_nothing() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "roundtrip").into_iter().enumerate() {
        let a = Store::open_with(t.path().join(format!("a{i}")), small_packs()).unwrap();
        let logical = populate(&a, 1, "exp-1") + populate(&a, 1, "exp-2");
        let remote = Remote::open(&cfg).unwrap();
        let rep = a.push(&remote, None).unwrap();
        assert!(rep.packs >= 2, "{rep:?}");
        let inv = remote.inventory().unwrap();
        assert_eq!(inv.manifests, rep.manifests);
        assert_eq!(inv.events, 2);
        assert_eq!(
            inv.chunk_records, inv.distinct_chunks,
            "a chunk was sent twice"
        );
        // Deduplicated: two experiments of three near-identical versions, ~1/6 of logical.
        let local = pack_bytes(&a);
        assert!(
            inv.pack_bytes < local + local / 20 + 4096,
            "{inv:?} vs {local}"
        );
        assert!(inv.pack_bytes * 4 < logical, "{inv:?} vs logical {logical}");

        let again = a.push(&remote, None).unwrap();
        assert_eq!(
            (again.packs, again.manifests, again.events, again.bytes),
            (0, 0, 0, 0),
            "{again:?}"
        );
        assert_eq!(
            remote.inventory().unwrap(),
            inv,
            "re-push changed the remote"
        );

        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        let p = b.pull(&remote, None).unwrap();
        assert!(p.conflicts.is_empty() && p.damaged.is_empty(), "{p:?}");
        assert_eq!(p.manifests, inv.manifests);
        check_same(&a, &b);
        let p2 = b.pull(&remote, None).unwrap();
        assert_eq!((p2.manifests, p2.events, p2.chunks), (0, 0, 0), "{p2:?}");
    }
}

#[test]
fn pull_into_a_non_empty_store_fetches_only_what_is_missing() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "merge").into_iter().enumerate() {
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        populate(&a, 7, "shared");
        let remote = Remote::open(&cfg).unwrap();
        a.push(&remote, None).unwrap();
        let remote_bytes = remote.inventory().unwrap().pack_bytes;

        // B already holds the same model bytes under another experiment, and its own work.
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        populate(&b, 7, "local-copy");
        let own = random_bytes(99, 1 << 20);
        put(&b, "mine", "/own.bin", &own, &[], Value::Null);
        let p = b.pull(&remote, None).unwrap();
        assert!(p.chunks_already_local > 0, "{p:?}");
        assert!(
            p.bytes * 10 < remote_bytes,
            "fetched {} of {remote_bytes}",
            p.bytes
        );
        assert_eq!(p.manifests, 5);

        // Then B pushes its own and A pulls: both stores list the same.
        b.push(&remote, None).unwrap();
        a.pull(&remote, None).unwrap();
        check_same(&a, &b);
        check_same(&b, &a);
    }
}

#[test]
fn machines_pushing_different_experiments_at_once_keep_everything() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "concurrent").into_iter().enumerate() {
        let stores: Vec<Store> = (0..3)
            .map(|k| {
                let s =
                    Store::open_with(t.path().join(format!("m{i}-{k}")), small_packs()).unwrap();
                populate(&s, 100 + k, &format!("machine-{k}"));
                s
            })
            .collect();
        std::thread::scope(|sc| {
            for s in &stores {
                let cfg = cfg.clone();
                sc.spawn(move || {
                    let r = Remote::open(&cfg).unwrap();
                    s.push(&r, None).unwrap();
                });
            }
        });
        let remote = Remote::open(&cfg).unwrap();
        let inv = remote.inventory().unwrap();
        assert_eq!(inv.manifests, 15);
        let merged = Store::open(t.path().join(format!("merged{i}"))).unwrap();
        merged.pull(&remote, None).unwrap();
        let mut want: Vec<Value> = stores.iter().flat_map(all_records).collect();
        let mut got = all_records(&merged);
        let key = |v: &Value| v["id"].as_str().unwrap().to_string();
        want.sort_by_key(key);
        got.sort_by_key(key);
        assert_eq!(got, want);
        assert!(merged.verify().unwrap().ok);
    }
}

#[test]
fn the_same_path_uploaded_on_two_machines_is_a_reported_conflict() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "conflict").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let mk = |n: &str, seed| {
            let s = Store::open(t.path().join(format!("{n}{i}"))).unwrap();
            put(
                &s,
                "same",
                "/x.bin",
                &random_bytes(seed, 5000),
                &[],
                Value::Null,
            );
            let own = format!("/only-{n}.bin");
            put(
                &s,
                "same",
                &own,
                &random_bytes(seed + 1, 5000),
                &[],
                Value::Null,
            );
            s
        };
        let a = mk("a", 1);
        let b = mk("b", 2);
        a.push(&remote, None).unwrap();
        let before = all_records(&b);
        let p = b.pull(&remote, None).unwrap();
        assert_eq!(p.conflicts.len(), 1, "{p:?}");
        assert!(p.conflicts[0].contains("/x.bin version 1"), "{p:?}");
        assert_eq!(p.manifests, 1, "the non-conflicting version is pulled");
        // B's own x.bin is untouched.
        let after = all_records(&b);
        assert!(before.iter().all(|r| after.contains(r)));
        assert!(b.verify().unwrap().ok);
    }
}

#[test]
fn damaged_remote_objects_are_detected_and_never_stored() {
    let t = tmp();
    let dir = t.path().join("remote-damage");
    let cfg = RemoteConfig::new(format!("file://{}", dir.display()));
    let a = Store::open(t.path().join("a")).unwrap();
    populate(&a, 3, "exp");
    let remote = Remote::open(&cfg).unwrap();
    a.push(&remote, None).unwrap();
    // Flip one byte in the middle of the (only) pack: inside some chunk's data.
    let pack = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let b = Store::open(t.path().join("b")).unwrap();
    let err = b.pull(&remote, None).unwrap_err();
    assert!(matches!(err, ml_dash::Error::Remote { .. }), "{err}");
    assert!(
        err.to_string().contains("damaged") || err.to_string().contains("BLAKE3"),
        "{err}"
    );
    // Nothing half-visible: no version entered, and what did arrive verifies.
    assert!(all_records(&b).is_empty());
    assert!(b.verify().unwrap().ok);

    // A damaged manifest is reported and skipped; the rest is pulled.
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let m = std::fs::read_dir(dir.join("manifests"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut mb = std::fs::read(&m).unwrap();
    let n = mb.len();
    mb[n - 3] ^= 1;
    std::fs::write(&m, &mb).unwrap();
    let p = b.pull(&remote, None).unwrap();
    assert_eq!(p.damaged.len(), 1, "{p:?}");
    assert_eq!(p.manifests, 4);
    assert!(b.verify().unwrap().ok);
}

#[test]
fn push_layout_files_writes_plain_objects_and_skips_present_ones() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "files").into_iter().enumerate() {
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        populate(&a, 5, "plain");
        let remote = Remote::open(&cfg).unwrap();
        let rep = a.push_files(&remote, None).unwrap();
        let live = a
            .list(&ListFilter {
                all_versions: true,
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!((rep.files, rep.uploaded, rep.skipped), (4, 4, 0));
        let inv = remote.inventory().unwrap();
        assert_eq!(
            inv.file_objects, 8,
            "a data object and a record per version"
        );
        let data: u64 = live.iter().map(|r| r.size_bytes).sum();
        assert!(inv.file_bytes >= data && inv.file_bytes < data + 8 * 4096);
        let again = a.push_files(&remote, None).unwrap();
        assert_eq!((again.uploaded, again.skipped), (0, 4));
        if let Some(dir) = cfg.url.strip_prefix("file://") {
            for r in &live {
                let base = Path::new(dir).join(format!(
                    "files/{}/{}/{}/{}",
                    r.namespace, r.project, r.experiment, r.id
                ));
                let body = std::fs::read(base.join(&r.filename)).unwrap();
                assert_eq!(sha256_hex(&body), r.checksum.to_string());
                let doc: Value =
                    serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap())
                        .unwrap();
                for k in [
                    "path",
                    "sizeBytes",
                    "checksum",
                    "tags",
                    "description",
                    "metadata",
                ] {
                    assert!(doc.get(k).is_some(), "record lacks {k}");
                }
                assert_eq!(doc["sizeBytes"], r.size_bytes);
            }
        }
    }
}

/// The binary, killed in the middle of a push, then re-run: the push completes, every
/// chunk is in exactly one remote pack, and a pull gives the same store.
#[test]
fn a_push_killed_midway_resumes_without_duplicate_data() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "killed").into_iter().enumerate() {
        let root = t.path().join(format!("a{i}"));
        let a = Store::open_with(&root, small_packs()).unwrap();
        for k in 0..4 {
            let data = random_bytes(500 + k, 24 << 20);
            put(&a, &format!("e{k}"), "/big.bin", &data, &[], Value::Null);
        }
        let remote = Remote::open(&cfg).unwrap();
        let mut child = Command::new(BIN)
            .args(["--root", root.to_str().unwrap(), "push", &cfg.url, "--json"])
            .env("ML_DASH_PACK_TARGET", "4194304")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let mut killed_after = None;
        let mut finished_early = false;
        while t0.elapsed() < Duration::from_secs(60) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                finished_early = true;
                break;
            }
            let n = remote.inventory().map(|v| v.packs).unwrap_or(0);
            if n >= 2 {
                killed_after = Some(n);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait();
        assert!(
            !finished_early,
            "push finished ({status:?}) before it was killed"
        );
        let killed_after = killed_after.expect("no pack appeared within 60 s");
        let mid = remote.inventory().unwrap();
        assert_eq!(mid.manifests, 0, "manifests go up only after all packs");
        let rep = a.push(&remote, None).unwrap();
        assert!(rep.packs > 0 && rep.manifests == 4, "{rep:?}");
        let inv = remote.inventory().unwrap();
        assert_eq!(
            inv.chunk_records, inv.distinct_chunks,
            "duplicate data after resume"
        );
        assert!(inv.packs >= killed_after);
        let local = pack_bytes(&a);
        assert!(inv.pack_bytes < local + local / 20, "{inv:?} vs {local}");
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        b.pull(&remote, None).unwrap();
        check_same(&a, &b);
    }
}

#[test]
fn cli_push_and_pull_with_credentials_from_the_environment() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "cli").into_iter().enumerate() {
        let a = t.path().join(format!("a{i}"));
        let f = write_file(t.path(), &format!("w{i}.bin"), &random_bytes(11, 300_000));
        let ok = |args: &[&str], root: &Path| -> Value {
            let out = Command::new(BIN)
                .arg("--root")
                .arg(root)
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{args:?}: {err}");
            if let Ok(secret) = std::env::var("AWS_SECRET_ACCESS_KEY") {
                assert!(
                    !err.contains(&secret)
                        && !String::from_utf8_lossy(&out.stdout).contains(&secret)
                );
            }
            // One JSON document, or one per line (list): the first line then.
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            serde_json::from_str(&text)
                .or_else(|_| serde_json::from_str(text.lines().next().unwrap_or("")))
                .unwrap_or(Value::Null)
        };
        ok(
            &[
                "upload",
                f.to_str().unwrap(),
                "--project",
                "p",
                "--experiment",
                "e",
            ],
            &a,
        );
        let p = ok(&["push", &cfg.url, "--json"], &a);
        for k in ["packs", "chunks", "bytes", "manifests", "events"] {
            assert!(p.get(k).is_some(), "push --json lacks {k}: {p}");
        }
        assert_eq!(p["manifests"], 1);
        let b = t.path().join(format!("b{i}"));
        let q = ok(&["pull", &cfg.url, "--json"], &b);
        assert_eq!(q["manifests"], 1, "{q}");
        let l = ok(&["list", "--json"], &b);
        assert_eq!(l["filename"], format!("w{i}.bin"), "{l}");
        let files = ok(&["push", &cfg.url, "--layout", "files", "--json"], &a);
        assert_eq!(files["uploaded"], 1, "{files}");
    }
    // A bad URL is a clear error, exit 2.
    let out = Command::new(BIN)
        .args([
            "--root",
            t.path().join("x").to_str().unwrap(),
            "pull",
            "http://x/y",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://BUCKET/PREFIX"));
}

#[test]
fn pull_from_an_empty_remote_is_a_clear_error() {
    let t = tmp();
    let cfg = RemoteConfig::new(format!("file://{}", t.path().join("empty").display()));
    let s = Store::open(t.path().join("s")).unwrap();
    let e = s.pull(&Remote::open(&cfg).unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("nothing was pushed"), "{e}");
}

#[test]
fn an_experiment_with_a_remote_pushes_on_close() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "close").into_iter().enumerate() {
        let root = t.path().join(format!("s{i}"));
        let exp = ml_dash::Experiment::new("run", "proj")
            .local_path(&root)
            .remote(cfg.clone())
            .open()
            .unwrap();
        let f = write_file(t.path(), &format!("m{i}.pth"), &random_bytes(3, 100_000));
        exp.file(&f).prefix("/models").save().unwrap();
        let rep = exp.close().unwrap().expect("a remote was given");
        assert_eq!(rep.manifests, 1);
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        b.pull(&Remote::open(&cfg).unwrap(), None).unwrap();
        check_same(exp.store(), &b);
    }
}
