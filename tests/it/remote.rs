//! push / pull: every test runs against a directory remote (`file://`, no server), and also
//! against a real S3 server when `ML_DASH_S3_TEST=1` (set by `.ci/run` after
//! `scripts/garage.sh start` has started Garage on 127.0.0.1 and exported its credentials).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ml_dash::{ListFilter, Store, StoreOptions};
use ml_dash::{Remote, RemoteConfig};
use serde_json::Value;

use crate::util::*;

/// The remotes to test against: a fresh directory, and a fresh prefix in the S3 test bucket.
pub(crate) fn remotes(tmp: &Path, name: &str) -> Vec<RemoteConfig> {
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
        let run = ml_dash::Id::generate();
        v.push(RemoteConfig::new(format!("s3://{bucket}/it/{name}/{run}")));
    } else {
        eprintln!("{name}: S3 part skipped (ML_DASH_S3_TEST is not 1; .ci/run starts Garage)");
    }
    v
}

pub(crate) fn small_packs() -> StoreOptions {
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
pub(crate) fn put(s: &Store, exp: &str, full: &str, data: &[u8], tags: &[&str], meta: Value) {
    let (p, name) = ml_dash::validate::split_full(full).unwrap();
    let key = ml_dash::ExperimentKey::new("local", "remote", exp)
        .unwrap()
        .file(p, name);
    let v = ml_dash::NewVersion {
        description: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        metadata: meta,
    };
    s.put_reader(data, &key, v, None).unwrap();
}

pub(crate) fn delete(s: &Store, exp: &str, full: &str) {
    let (p, name) = ml_dash::validate::split_full(full).unwrap();
    let key = ml_dash::ExperimentKey::new("local", "remote", exp)
        .unwrap()
        .file(p, name);
    s.delete(&key).unwrap();
}

fn pack_bytes(s: &Store) -> u64 {
    s.stats(&ml_dash::Scope::default()).unwrap().pack_bytes
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
        let x = ml_dash::testing::read_all(&a.open_version(r.id).unwrap()).unwrap();
        let y = ml_dash::testing::read_all(&b.open_version(r.id).unwrap()).unwrap();
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
    // The rotten record is skipped and reported; the versions that need it are kept out,
    // the others are pulled, and nothing half-visible enters: what arrived verifies.
    let first = b.pull(&remote, None).unwrap();
    assert!(
        first.damaged.iter().any(|d| d.contains("BLAKE3")),
        "{first:?}"
    );
    let kept_out = first
        .damaged
        .iter()
        .filter(|d| d.contains("kept out"))
        .count();
    assert!(kept_out >= 1, "{first:?}");
    assert_eq!(all_records(&b).len() + kept_out, all_records(&a).len());
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
    let already: bool = m
        .file_stem()
        .and_then(|n| n.to_str())
        .is_some_and(|id| all_records(&b).iter().any(|r| r["id"] == id));
    let p = b.pull(&remote, None).unwrap();
    // The restored record is tried again (it was only reported, not forgotten).
    let total = all_records(&a).len();
    if already {
        assert!(p.damaged.is_empty(), "{p:?}");
        assert_eq!(all_records(&b).len(), total);
    } else {
        assert_eq!(p.damaged.len(), 1, "{p:?}");
        assert_eq!(all_records(&b).len(), total - 1);
    }
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
        let mut child = Command::new(bin())
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
        // Manifests go up only after all packs. The kill lands some time after the check above
        // saw two packs; a fast push (a local directory) may have finished its packs by then.
        let local_chunks = a.stats(&ml_dash::Scope::default()).unwrap().chunks;
        let packs_done = mid.distinct_chunks == local_chunks;
        assert!(
            mid.manifests == 0 || packs_done,
            "a manifest went up before all packs ({mid:?})"
        );
        let rep = a.push(&remote, None).unwrap();
        assert!(
            (rep.packs > 0 || packs_done) && rep.manifests + mid.manifests == 4,
            "{rep:?} after {mid:?}"
        );
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
            let out = Command::new(bin())
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
    let out = Command::new(bin())
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

// ---------------------------------------------------------------------------------------------
// Adversarial tests: killed pulls, gc between pulls, damaged remote objects and local caches,
// unusual file names, empty stores, the bucket root, and a push landing while a pull lists.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// The object store under a test remote, reached directly (not through ml-dash), and the
/// key prefix ml-dash uses there: for planting damage and reading what was written.
pub(crate) struct Raw {
    pub(crate) os: Arc<dyn ObjectStore>,
    pub(crate) prefix: String,
    rt: tokio::runtime::Runtime,
}

impl Raw {
    pub(crate) fn new(cfg: &RemoteConfig) -> Raw {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        if let Some(dir) = cfg.url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).unwrap();
            let os = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
            return Raw {
                os: Arc::new(os),
                prefix: String::new(),
                rt,
            };
        }
        let rest = cfg.url.strip_prefix("s3://").unwrap();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
        let os = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_endpoint(endpoint)
            .build()
            .unwrap();
        Raw {
            os: Arc::new(os),
            prefix: prefix.trim_matches('/').to_string(),
            rt,
        }
    }

    pub(crate) fn key(&self, rel: &str) -> OPath {
        if self.prefix.is_empty() {
            OPath::parse(rel).unwrap()
        } else {
            OPath::parse(format!("{}/{rel}", self.prefix)).unwrap()
        }
    }

    /// `(name under dir/, size)` of every object under `dir/`, names as stored.
    pub(crate) fn list(&self, dir: &str) -> Vec<(String, u64)> {
        use futures::TryStreamExt;
        let base = self.key(dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.os.list(Some(&base)).try_collect())
            .unwrap();
        let skip = match base.as_ref().len() {
            0 => 0,
            n => n + 1,
        };
        let mut v: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| (m.location.as_ref()[skip..].to_string(), m.size))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn get(&self, rel: &str) -> Vec<u8> {
        let k = self.key(rel);
        self.rt
            .block_on(async { self.os.get(&k).await.unwrap().bytes().await.unwrap() })
            .to_vec()
    }

    pub(crate) fn put(&self, rel: &str, bytes: Vec<u8>) {
        let k = self.key(rel);
        self.rt.block_on(self.os.put(&k, bytes.into())).unwrap();
    }
}

pub(crate) fn ids(s: &Store) -> HashSet<String> {
    all_records(s)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn live_paths(s: &Store) -> Vec<String> {
    s.list(&ListFilter {
        all_versions: true,
        ..ListFilter::default()
    })
    .unwrap()
    .iter()
    .map(|r| format!("{} v{}", r.full_path(), r.version))
    .collect()
}

/// Files named `*.<ext>` in `dir`, temp files (`.name.tmp-...`) not counted.
fn count_named(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.ends_with(&format!(".{ext}")) && !n.starts_with('.')
                })
                .count()
        })
        .unwrap_or(0)
}

/// The binary is SIGKILLed while pulling (1 MiB packs): while fetching chunks, right after
/// the first pulled pack appears, in the middle of the commit (manifests being written under
/// the multi-id `pending` marker) and at fixed delays. After every kill the store verifies
/// (the pending marker is resolved on open) and holds only versions of the source; the last,
/// uninterrupted pull makes it identical to the source.
#[test]
fn a_pull_killed_at_any_point_leaves_a_store_that_verifies_and_a_rerun_completes() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "pullkill").into_iter().enumerate() {
        let a = Store::open_with(t.path().join(format!("a{i}")), small_packs()).unwrap();
        for k in 0..4u64 {
            let data = random_bytes(700 + k, 3 << 20);
            put(&a, "big", &format!("/big-{k}.bin"), &data, &[], Value::Null);
        }
        // Many manifests: the commit phase takes long enough to be killed inside.
        for k in 0..80u64 {
            let body = format!("small file {k}\n").repeat(1 + usize_from(k % 7));
            put(
                &a,
                "small",
                &format!("/s/f{k}.txt"),
                body.as_bytes(),
                &[],
                Value::Null,
            );
        }
        populate(&a, 21, "mixed");
        let first = all_records(&a)[0]["id"].clone();
        let first: ml_dash::Id = serde_json::from_value(first).unwrap();
        a.update(
            first,
            &ml_dash::RecordChanges {
                description: Some(Some("updated".into())),
                tags: None,
                metadata: None,
            },
        )
        .unwrap();
        let remote = Remote::open(&cfg).unwrap();
        a.push(&remote, None).unwrap();
        let want = ids(&a);

        let broot = t.path().join(format!("b{i}"));
        #[derive(Debug)]
        enum Kill {
            NewPacks(usize),
            NewManifests(usize),
            After(u64),
        }
        let plan = [
            Kill::NewPacks(1),
            Kill::NewPacks(3),
            Kill::NewManifests(1),
            Kill::NewManifests(25),
            Kill::After(0),
            Kill::After(40),
            Kill::NewManifests(10),
        ];
        let mut killed_midway = 0;
        for (round, kill) in plan.iter().enumerate() {
            let packs0 = count_named(&broot.join("packs"), "pack");
            let mans0 = count_named(&broot.join("manifests"), "manifest");
            let mut child = Command::new(bin())
                .args([
                    "--root",
                    broot.to_str().unwrap(),
                    "pull",
                    &cfg.url,
                    "--json",
                ])
                .env("ML_DASH_PACK_TARGET", "1048576")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t0 = Instant::now();
            let mut exited = false;
            loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    exited = true;
                    break;
                }
                let fire = match kill {
                    Kill::NewPacks(n) => count_named(&broot.join("packs"), "pack") >= packs0 + n,
                    Kill::NewManifests(n) => {
                        count_named(&broot.join("manifests"), "manifest") >= mans0 + n
                    }
                    Kill::After(ms) => t0.elapsed() >= Duration::from_millis(*ms),
                };
                // A safety net only (never asserted on): a stuck child is killed anyway.
                if fire || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            if !exited {
                killed_midway += 1;
            }
            let b = Store::open(&broot).unwrap();
            // Every other round the next pull (not verify) is the first to open the store.
            if round % 2 == 0 || round + 1 == plan.len() {
                let v = b.verify().unwrap();
                assert!(v.ok, "after kill {round} ({kill:?}): {v:?}");
            }
            let got = ids(&b);
            assert!(
                got.is_subset(&want),
                "after kill {round}: versions that are not in the source"
            );
        }
        assert!(
            killed_midway >= 3,
            "only {killed_midway} kills landed before the pull finished"
        );
        let b = Store::open_with(&broot, small_packs()).unwrap();
        let p = b.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty() && p.conflicts.is_empty(), "{p:?}");
        check_same(&a, &b);
        let again = b.pull(&remote, None).unwrap();
        assert_eq!((again.manifests, again.events, again.chunks), (0, 0, 0));
    }
}

/// A store that pulls regularly and runs gc: the versions gc collected (deleted here, their
/// manifests removed, the delete event kept) are still on the remote. The next pull must not
/// bring them back as live versions (the delete event is already here and is not re-applied).
#[test]
fn a_gc_between_pulls_does_not_bring_deleted_versions_back() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "gcpull").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        populate(&a, 31, "exp");
        put(
            &a,
            "exp",
            "/gone.bin",
            &random_bytes(32, 200_000),
            &[],
            Value::Null,
        );
        delete(&a, "exp", "/gone.bin");
        a.push(&remote, None).unwrap();

        // A itself collects, then pulls from the remote it pushed to.
        let live_before = live_paths(&a);
        let g = a
            .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
            .unwrap();
        assert!(g.deleted_versions >= 2, "{g:?}");
        let p = a.pull(&remote, None).unwrap();
        assert_eq!(
            live_paths(&a),
            live_before,
            "gc'd versions came back: {p:?}"
        );
        assert_eq!((p.manifests, p.chunks), (0, 0), "{p:?}");
        assert!(a.verify().unwrap().ok);

        // B pulls (deleted versions arrive as deleted), collects, pulls again.
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        b.pull(&remote, None).unwrap();
        assert_eq!(live_paths(&b), live_before);
        b.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
            .unwrap();
        let p = b.pull(&remote, None).unwrap();
        assert_eq!(
            live_paths(&b),
            live_before,
            "gc'd versions came back: {p:?}"
        );
        let g = b
            .gc(&ml_dash::GcOptions::new()
                .dry_run(true)
                .rewrite_threshold(0.0))
            .unwrap();
        assert_eq!(
            g.garbage_chunks, 0,
            "the pull fetched collected chunks again: {g:?}"
        );
        assert!(b.verify().unwrap().ok);
        // New versions of a deleted path still arrive.
        put(&a, "exp", "/gone.bin", b"back again", &[], Value::Null);
        a.push(&remote, None).unwrap();
        b.pull(&remote, None).unwrap();
        assert!(live_paths(&b).iter().any(|p| p.ends_with("/gone.bin v2")));
    }
}

/// Remote pack objects that are too short for a footer (0 and 10 bytes), have a damaged
/// footer, or an index block (with a valid checksum) whose entry offset overflows: a pull
/// reports them and takes everything else; nothing panics. A push then sends again the chunks
/// that only a damaged pack held, after which a pull completes.
#[test]
fn damaged_or_truncated_remote_packs_are_reported_and_skipped() {
    use ml_dash::testing::rpack;
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "badpacks").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open_with(t.path().join(format!("a{i}")), small_packs()).unwrap();
        populate(&a, 41, "first");
        a.push(&remote, None).unwrap();
        let first_packs: Vec<String> = raw.list("packs").into_iter().map(|p| p.0).collect();
        populate(&a, 42, "second");
        a.push(&remote, None).unwrap();

        // Foreign objects under pack names.
        let name = |id: ml_dash::Id| format!("packs/{id}.pack");
        raw.put(&name(ml_dash::Id::generate()), Vec::new());
        raw.put(&name(ml_dash::Id::generate()), b"MLDPACK\0xx".to_vec());
        let id = ml_dash::Id::generate();
        let entry = rpack::Entry {
            id: ml_dash::ChunkId::of(b"x"),
            offset: u64::MAX - 10,
            stored_len: 1,
            raw_len: 1,
            codec: ml_dash::testing::codec::Codec::Raw,
            base: None,
        };
        let idx = rpack::encode_index(&[entry]);
        let mut obj = vec![0u8; 32];
        obj.extend_from_slice(&idx);
        obj.extend_from_slice(&rpack::encode_footer(32, &idx));
        raw.put(&name(id), obj);
        // One real pack (of the first push) with a damaged footer magic.
        let victim = &first_packs[0];
        let mut bytes = raw.get(&format!("packs/{victim}"));
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        raw.put(&format!("packs/{victim}"), bytes.clone());

        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        let p = b.pull(&remote, None).unwrap();
        let bad_packs = p.damaged.iter().filter(|d| d.starts_with("packs/")).count();
        assert_eq!(bad_packs, 4, "{:#?}", p.damaged);
        assert!(p.manifests > 0, "{p:?}");
        assert!(b.verify().unwrap().ok);
        assert!(ids(&b).is_subset(&ids(&a)));

        // The source pushes again: the chunks only the damaged pack held go up again. (Its
        // cache of the pack's index, read before the damage, would vouch for the pack: remote
        // objects are immutable, so a push does not read them again.)
        std::fs::remove_dir_all(a.root().join("cache")).unwrap();
        let again = a.push(&remote, None).unwrap();
        assert!(again.chunks > 0, "{again:?}");
        let p = b.pull(&remote, None).unwrap();
        assert!(
            p.damaged.iter().all(|d| d.starts_with("packs/")),
            "{:#?}",
            p.damaged
        );
        check_same(&a, &b);
        // Restore the victim: both copies of those chunks are now readable.
        bytes[n - 1] ^= 0xff;
        raw.put(&format!("packs/{victim}"), bytes);
        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        c.pull(&remote, None).unwrap();
        check_same(&a, &c);
    }
}

/// The pack-index cache under `<root>/cache/remote/` is derived data: garbage, truncated or
/// swapped (valid, but another pack's) entries are fetched again, and a cache directory that
/// cannot be created (a file in its way) is done without.
#[test]
fn a_damaged_local_pack_index_cache_is_never_trusted() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "cache").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open_with(t.path().join(format!("a{i}")), small_packs()).unwrap();
        populate(&a, 51, "exp");
        put(
            &a,
            "exp",
            "/extra.bin",
            &random_bytes(52, 1 << 20),
            &[],
            Value::Null,
        );
        a.push(&remote, None).unwrap();

        // B pulls once (filling its cache), loses its data, keeps a damaged cache.
        let broot = t.path().join(format!("b{i}"));
        let b = Store::open(&broot).unwrap();
        b.pull(&remote, None).unwrap();
        let cache_root = broot.join("cache").join("remote");
        let dirs: Vec<_> = std::fs::read_dir(&cache_root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1);
        let mut idx: Vec<_> = std::fs::read_dir(&dirs[0])
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "idx"))
            .collect();
        idx.sort();
        assert!(idx.len() >= 3, "{idx:?}");
        let saved: Vec<Vec<u8>> = idx.iter().map(|p| std::fs::read(p).unwrap()).collect();

        let fresh = |name: &str| {
            let root = t.path().join(format!("{name}{i}"));
            let s = Store::open(&root).unwrap();
            std::fs::create_dir_all(root.join("cache")).unwrap();
            (root, s)
        };
        // 1. Entries swapped between packs (each one valid in itself), one truncated, one
        //    garbage.
        let (root, s) = fresh("swap");
        let dst = root.join("cache/remote").join(dirs[0].file_name().unwrap());
        std::fs::create_dir_all(&dst).unwrap();
        for (k, p) in idx.iter().enumerate() {
            let other = &saved[(k + 1) % saved.len()];
            std::fs::write(dst.join(p.file_name().unwrap()), other).unwrap();
        }
        std::fs::write(dst.join(idx[0].file_name().unwrap()), &saved[0][..30]).unwrap();
        std::fs::write(dst.join(idx[1].file_name().unwrap()), vec![7u8; 5000]).unwrap();
        let p = s.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty(), "{p:?}");
        check_same(&a, &s);

        // 2. A file where the cache directory should be.
        let (root, s) = fresh("blocked");
        std::fs::write(root.join("cache/remote"), b"not a directory").unwrap();
        let p = s.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty(), "{p:?}");
        check_same(&a, &s);
        let rep = s.push(&remote, None).unwrap();
        assert_eq!((rep.packs, rep.manifests), (0, 0), "{rep:?}");

        // 3. A pusher's cache entries swapped and truncated: its next push still knows what
        //    the remote holds (nothing is sent twice) and sends what is new.
        assert_eq!(a.push(&remote, None).unwrap().packs, 0); // reads (and caches) every index
        let acache = a
            .root()
            .join("cache/remote")
            .join(dirs[0].file_name().unwrap());
        let mut aidx: Vec<_> = std::fs::read_dir(&acache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        aidx.sort();
        assert!(aidx.len() >= 3, "{aidx:?}");
        let x = std::fs::read(&aidx[0]).unwrap();
        let y = std::fs::read(&aidx[1]).unwrap();
        std::fs::write(&aidx[0], &y).unwrap();
        std::fs::write(&aidx[1], &x).unwrap();
        std::fs::write(&aidx[2], &x[..x.len() / 2]).unwrap();
        put(
            &a,
            "exp",
            "/after.bin",
            &random_bytes(53, 100_000),
            &[],
            Value::Null,
        );
        let before = remote.inventory().unwrap();
        let rep = a.push(&remote, None).unwrap();
        assert_eq!((rep.packs, rep.manifests), (1, 1), "{rep:?}");
        let after = remote.inventory().unwrap();
        assert_eq!(
            after.chunk_records, after.distinct_chunks,
            "a chunk was sent twice"
        );
        assert_eq!(after.packs, before.packs + 1);
    }
}

/// `push --layout files` writes each file under its own name, byte for byte, whatever the
/// characters (spaces, unicode, '%', '#', '~', '[', '?', '+'), and a second push finds every
/// object again (nothing re-sent).
#[test]
fn push_layout_files_keeps_unusual_file_names_verbatim() {
    let t = tmp();
    let names = [
        "with space.bin",
        "ünïcødé-名前.txt",
        "100%.csv",
        "a%2Fb.txt",
        "run#3.log",
        "ckpt#12",
        "model~1[best].pth",
        "what?.json",
        "plus+sign&amp.bin",
        "empty.bin",
    ];
    for (i, cfg) in remotes(t.path(), "names").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let raw = Raw::new(&cfg);
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        for (k, n) in names.iter().enumerate() {
            let data = if *n == "empty.bin" {
                Vec::new()
            } else {
                random_bytes(60 + k as u64, 1000 + k * 77)
            };
            put(
                &a,
                "odd",
                &format!("/dir with space/{n}"),
                &data,
                &[],
                Value::Null,
            );
        }
        let rep = a.push_files(&remote, None).unwrap();
        assert_eq!(rep.uploaded, names.len() as u64, "{rep:?}");
        let again = a.push_files(&remote, None).unwrap();
        assert_eq!(
            (again.uploaded, again.skipped),
            (0, names.len() as u64),
            "unusual names were sent again: {again:?}"
        );
        let objects = raw.list("files");
        assert_eq!(objects.len(), 2 * names.len(), "{objects:#?}");
        for r in all_records(&a) {
            let name = r["filename"].as_str().unwrap();
            let base = format!("local/remote/odd/{}", r["id"].as_str().unwrap());
            let want = format!("{base}/{name}");
            // A directory remote cannot hold `...#<digits>` names (object_store reserves them).
            if cfg.url.starts_with("file://") && name == "ckpt#12" {
                assert!(
                    objects
                        .iter()
                        .any(|(o, _)| o.starts_with(&format!("{base}/")))
                );
                continue;
            }
            assert!(
                objects.iter().any(|(o, _)| *o == want),
                "no object {want:?} in {objects:#?}"
            );
            let body = raw.get(&format!("files/{want}"));
            assert_eq!(sha256_hex(&body), r["checksum"].as_str().unwrap(), "{name}");
        }
        // A pull of the pack layout is unaffected by the names.
        a.push(&remote, None).unwrap();
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        b.pull(&remote, None).unwrap();
        check_same(&a, &b);
    }
}

/// `push --layout files` replaces a data object that differs (here truncated) instead of
/// keeping it as "already there", and rewrites a record whose tags or metadata changed without
/// sending the data again.
#[test]
fn push_layout_files_repairs_differing_objects_and_refreshes_changed_records() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "filesfix").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let raw = Raw::new(&cfg);
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        let data = random_bytes(71, 300_000);
        put(
            &a,
            "fix",
            "/m.bin",
            &data,
            &["old"],
            serde_json::json!({"k": 1}),
        );
        put(&a, "fix", "/n.bin", b"small", &[], Value::Null);
        a.push_files(&remote, None).unwrap();
        let r = all_records(&a)
            .into_iter()
            .find(|r| r["filename"] == "m.bin")
            .unwrap();
        let base = format!("files/local/remote/fix/{}", r["id"].as_str().unwrap());
        let obj = format!("{base}/m.bin");
        raw.put(&obj, data[..1000].to_vec());
        let rep = a.push_files(&remote, None).unwrap();
        assert_eq!((rep.uploaded, rep.skipped), (1, 1), "{rep:?}");
        assert!(raw.get(&obj) == data, "the truncated object was kept");

        let id: ml_dash::Id = serde_json::from_value(r["id"].clone()).unwrap();
        a.update(
            id,
            &ml_dash::RecordChanges {
                description: None,
                tags: Some(vec!["new".into()]),
                metadata: Some(serde_json::json!({"k": 2})),
            },
        )
        .unwrap();
        let rep = a.push_files(&remote, None).unwrap();
        assert_eq!((rep.uploaded, rep.bytes), (0, 0), "{rep:?}");
        assert_eq!(rep.records_updated, 1, "{rep:?}");
        let doc: Value = serde_json::from_slice(&raw.get(&format!("{base}.json"))).unwrap();
        assert_eq!(doc["tags"], serde_json::json!(["new"]), "{doc}");
        assert_eq!(doc["metadata"]["k"], 2, "{doc}");
        let rep = a.push_files(&remote, None).unwrap();
        assert_eq!((rep.uploaded, rep.records_updated, rep.skipped), (0, 0, 2));
    }
}

/// An empty store pushes (the remote gets only its marker) and pulls (nothing, no error) in
/// both layouts; a store that pushed nothing but a deleted file round-trips too.
#[test]
fn empty_stores_push_and_pull() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "empty").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        let rep = a.push(&remote, None).unwrap();
        assert_eq!((rep.packs, rep.manifests, rep.events), (0, 0, 0), "{rep:?}");
        let f = a.push_files(&remote, None).unwrap();
        assert_eq!((f.files, f.uploaded), (0, 0));
        assert_eq!(remote.inventory().unwrap(), Default::default());
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        let p = b.pull(&remote, None).unwrap();
        assert_eq!((p.manifests, p.events, p.chunks), (0, 0, 0), "{p:?}");
        assert!(all_records(&b).is_empty());
        assert!(b.verify().unwrap().ok);

        put(&a, "e", "/zero.bin", b"", &[], Value::Null);
        put(&a, "e", "/tmp.bin", b"x", &[], Value::Null);
        delete(&a, "e", "/tmp.bin");
        a.push(&remote, None).unwrap();
        b.pull(&remote, None).unwrap();
        check_same(&a, &b);
    }
}

/// The bucket root (prefix ""): ml-dash's keys start at the top of the store. For S3 the
/// root of a per-run prefix store stands in for the bucket root (the test bucket is shared).
#[test]
fn a_remote_at_the_bucket_root_round_trips() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "root").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = if cfg.url.starts_with("s3://") {
            let inner: Arc<dyn ObjectStore> = Arc::new(object_store::prefix::PrefixStore::new(
                raw.os.clone(),
                raw.prefix.clone(),
            ));
            let bucket = std::env::var("ML_DASH_S3_BUCKET").unwrap();
            Remote::with_object_store(inner, String::new(), format!("s3://{bucket}")).unwrap()
        } else {
            Remote::open(&cfg).unwrap()
        };
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        put(
            &a,
            "root",
            "/a b/c%d#1.bin",
            &random_bytes(81, 70_000),
            &[],
            Value::Null,
        );
        populate(&a, 82, "root");
        a.push(&remote, None).unwrap();
        a.push_files(&remote, None).unwrap();
        let top: HashSet<String> = raw
            .list("")
            .into_iter()
            .map(|(n, _)| n.split('/').next().unwrap().to_string())
            .collect();
        let want: HashSet<String> = [
            "ml-dash-remote.json",
            "packs",
            "manifests",
            "events",
            "files",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(top, want);
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        b.pull(&remote, None).unwrap();
        check_same(&a, &b);
        assert_eq!(a.push_files(&remote, None).unwrap().uploaded, 0);
    }
}

/// An object store that hides some objects from listings until the first listing of
/// `packs/`: the moment a concurrent push finishes its pack and then its manifest.
#[derive(Debug)]
struct LateObjects {
    inner: Arc<dyn ObjectStore>,
    hidden: Mutex<HashSet<OPath>>,
}

impl std::fmt::Display for LateObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LateObjects({})", self.inner)
    }
}

type Fut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = object_store::Result<T>> + Send + 'a>>;

impl ObjectStore for LateObjects {
    fn put_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b OPath,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> Fut<'c, object_store::PutResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_opts(location, payload, opts)
    }

    fn put_multipart_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b OPath,
        opts: object_store::PutMultipartOptions,
    ) -> Fut<'c, Box<dyn object_store::MultipartUpload>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b OPath,
        options: object_store::GetOptions,
    ) -> Fut<'c, object_store::GetResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.get_opts(location, options)
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<OPath>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<OPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&OPath>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures::StreamExt;
        let mut hidden = self.hidden.lock().unwrap();
        let now = hidden.clone();
        if prefix.is_some_and(|p| p.filename() == Some("packs")) {
            hidden.clear();
        }
        self.inner
            .list(prefix)
            .filter(move |m| {
                let keep = !matches!(m, Ok(m) if now.contains(&m.location));
                futures::future::ready(keep)
            })
            .boxed()
    }

    fn list_with_delimiter<'a, 'b, 'c>(
        &'a self,
        prefix: Option<&'b OPath>,
    ) -> Fut<'c, object_store::ListResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'a, 'b, 'c, 'd>(
        &'a self,
        from: &'b OPath,
        to: &'c OPath,
        options: object_store::CopyOptions,
    ) -> Fut<'d, ()>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
        Self: 'd,
    {
        self.inner.copy_opts(from, to, options)
    }
}

/// A push that lands while a pull lists the remote (its pack after the pull listed packs,
/// its manifest before the pull lists manifests) is not mistaken for a manifest whose chunks
/// the remote lacks: the pull takes what it saw consistently, the next pull the rest.
#[test]
fn a_push_landing_while_a_pull_lists_is_not_reported_as_damage() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "listrace").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        populate(&a, 91, "early");
        a.push(&remote, None).unwrap();
        let before: HashSet<String> = raw.list("").into_iter().map(|o| o.0).collect();
        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        put(
            &c,
            "late",
            "/late.bin",
            &random_bytes(92, 500_000),
            &[],
            Value::Null,
        );
        c.push(&remote, None).unwrap();
        let late: HashSet<OPath> = raw
            .list("")
            .into_iter()
            .filter(|o| !before.contains(&o.0))
            .map(|o| raw.key(&o.0))
            .collect();
        assert_eq!(late.len(), 2, "{late:?}"); // one pack, one manifest
        let racing = Arc::new(LateObjects {
            inner: raw.os.clone(),
            hidden: Mutex::new(late),
        });
        let racing =
            Remote::with_object_store(racing, raw.prefix.clone(), cfg.url.clone()).unwrap();
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        let p = b.pull(&racing, None).unwrap();
        assert!(p.damaged.is_empty(), "{:#?}", p.damaged);
        let p = b.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty(), "{:#?}", p.damaged);
        let mut want = ids(&a);
        want.extend(ids(&c));
        assert_eq!(ids(&b), want);
        assert!(b.verify().unwrap().ok);
    }
}

/// A delete pulled from another machine names a path and a version number; it must not hide
/// this store's own version with that number, which the other machine never saw.
#[test]
fn a_remote_delete_does_not_hide_a_version_the_remote_never_saw() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "delete-unseen").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        put(
            &a,
            "same",
            "/x.bin",
            &random_bytes(1, 4000),
            &[],
            Value::Null,
        );
        delete(&a, "same", "/x.bin");
        a.push(&remote, None).unwrap();
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        put(
            &b,
            "same",
            "/x.bin",
            &random_bytes(2, 4000),
            &[],
            Value::Null,
        );
        let p = b.pull(&remote, None).unwrap();
        assert!(
            p.conflicts
                .iter()
                .any(|c| c.contains("delete up to version 1")),
            "{p:?}"
        );
        let live = b.list(&ListFilter::default()).unwrap();
        assert_eq!(live.len(), 1, "B's own x.bin must stay live");
        assert!(b.verify().unwrap().ok);
    }
}

fn jexp(name: &str) -> ml_dash::ExperimentKey {
    ml_dash::ExperimentKey::new("local", "journals", name).unwrap()
}

fn journal_json(s: &Store, exp: &ml_dash::ExperimentKey) -> Value {
    let j = s.journal(exp).unwrap();
    serde_json::json!({
        "params": j.params.map(|p| p.data),
        "logs": j.logs,
        "metrics": j.metrics,
        "bad": j.bad_lines,
    })
}

#[test]
fn journals_travel_incrementally_and_conflicts_are_kept_out() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "journals").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        let e = jexp("run");
        a.set_params(
            &e,
            &serde_json::json!({"model": {"arch": "resnet"}, "lr": 0.1}),
        )
        .unwrap();
        a.log(&e, "info", "start", None).unwrap();
        let pts: Vec<Value> = (0..1000)
            .map(|i| serde_json::json!({"value": f64::from(i) / 7.0, "step": i}))
            .collect();
        a.append_metrics(&e, "loss", &pts).unwrap();
        a.set_experiment_info(
            &e,
            ml_dash::ExperimentInfo {
                status: Some("RUNNING".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let p = a.push(&remote, None).unwrap();
        assert_eq!(p.journal_lines, 1003, "{p:?}");
        assert_eq!(
            a.push(&remote, None).unwrap().journal_lines,
            0,
            "nothing new"
        );

        let r = b.pull(&remote, None).unwrap();
        assert!(r.conflicts.is_empty() && r.damaged.is_empty(), "{r:?}");
        assert_eq!(r.journal_lines, 1003);
        assert_eq!(journal_json(&a, &e), journal_json(&b, &e));
        assert_eq!(
            b.journal(&e).unwrap().info.unwrap().status.as_deref(),
            Some("RUNNING")
        );
        assert_eq!(b.pull(&remote, None).unwrap().journal_lines, 0);

        // A second push sends only what is new, and b merges it after what it has.
        a.append_metric(&e, "loss", &serde_json::json!({"value": 0.01}))
            .unwrap();
        a.log(&e, "info", "epoch 1", None).unwrap();
        a.set_params(&e, &serde_json::json!({"lr": 0.01})).unwrap();
        assert_eq!(a.push(&remote, None).unwrap().journal_lines, 3);
        // b pushes nothing new of a's (it has a's lines) and nothing of its own.
        assert_eq!(b.push(&remote, None).unwrap().journal_lines, 0);
        let r = b.pull(&remote, None).unwrap();
        assert!(r.conflicts.is_empty(), "{r:?}");
        assert_eq!(r.journal_lines, 3);
        assert_eq!(journal_json(&a, &e), journal_json(&b, &e));
        assert_eq!(b.journal(&e).unwrap().params.unwrap().data["lr"], 0.01);

        // b's own lines travel back to a; then both log at once: a conflict, kept out and
        // reported, never merged.
        let e2 = jexp("other");
        b.log(&e2, "info", "b's experiment", None).unwrap();
        b.push(&remote, None).unwrap();
        a.pull(&remote, None).unwrap();
        assert_eq!(a.journal(&e2).unwrap().logs.len(), 1);

        a.log(&e, "warn", "from a", None).unwrap();
        a.set_params(&e, &serde_json::json!({"batch": 32})).unwrap();
        b.log(&e, "warn", "from b", None).unwrap();
        b.set_params(&e, &serde_json::json!({"batch": 64})).unwrap();
        b.append_metric(&e, "acc", &serde_json::json!({"value": 0.5}))
            .unwrap();
        a.push(&remote, None).unwrap();
        let r = b.pull(&remote, None).unwrap();
        assert_eq!(r.conflicts.len(), 2, "{:?}", r.conflicts);
        assert!(
            r.conflicts.iter().any(|c| c.message.contains("log line 3"))
                && r.conflicts
                    .iter()
                    .any(|c| c.message.contains("param batch")),
            "{:?}",
            r.conflicts
        );
        let jb = b.journal(&e).unwrap();
        assert_eq!(jb.logs[2].message, "from b");
        assert_eq!(jb.params.unwrap().data["batch"], 64);
        assert_eq!(jb.metrics["acc"].len(), 1);
        // Reported again at the next pull, until someone resolves it.
        assert_eq!(b.pull(&remote, None).unwrap().conflicts.len(), 2);
        assert!(a.verify().unwrap().ok && b.verify().unwrap().ok);
    }
}

#[test]
fn hostile_journal_segments_are_refused() {
    let t = tmp();
    let dir = t.path().join("remote-hostile-journals");
    let cfg = RemoteConfig::new(format!("file://{}", dir.display()));
    let remote = Remote::open(&cfg).unwrap();
    let a = Store::open(t.path().join("a")).unwrap();
    let e = jexp("run");
    a.log(&e, "info", "hello", None).unwrap();
    a.push(&remote, None).unwrap();
    let jdir = std::fs::read_dir(dir.join("journals"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let seg = std::fs::read_dir(&jdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let good = std::fs::read(&seg).unwrap();
    // 1. A segment whose bytes do not match its name.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    std::fs::write(&seg, &bad).unwrap();
    let b = Store::open(t.path().join("b")).unwrap();
    let r = b.pull(&remote, None).unwrap();
    assert_eq!(r.journal_lines, 0);
    assert!(
        r.damaged
            .iter()
            .any(|d| d.message.contains("do not match its name")),
        "{r:?}"
    );
    // 2. A well-named segment with a line of another experiment and a line of bad JSON.
    let other = {
        let c = Store::open(t.path().join("c")).unwrap();
        c.log(&jexp("elsewhere"), "info", "x", None).unwrap();
        let p = std::fs::read_dir(t.path().join("c/journals"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read(p).unwrap()
    };
    let mut body = other.clone();
    body.extend_from_slice(b"0123456789abcdef {not json}\n");
    body.extend_from_slice(&good);
    let name = &blake3::hash(&body).to_hex()[..32];
    std::fs::write(jdir.join(format!("{name}.jsonl")), &body).unwrap();
    std::fs::write(&seg, &good).unwrap();
    let r = b.pull(&remote, None).unwrap();
    assert_eq!(r.journal_lines, 1, "{r:?}");
    assert!(
        r.damaged
            .iter()
            .any(|d| d.message.contains("another experiment")),
        "{r:?}"
    );
    assert!(
        r.damaged.iter().any(|d| d.message.contains("damaged")),
        "{r:?}"
    );
    assert_eq!(b.journal(&e).unwrap().logs[0].message, "hello");
    assert!(b.journal(&jexp("elsewhere")).unwrap().logs.is_empty());
}

#[test]
fn a_parameter_set_on_two_stores_converges_once_both_are_pushed() {
    let t = tmp();
    let cfg = RemoteConfig::new(format!("file://{}", t.path().join("remote-lww").display()));
    let remote = Remote::open(&cfg).unwrap();
    let x = Store::open(t.path().join("x")).unwrap();
    let y = Store::open(t.path().join("y")).unwrap();
    let e = jexp("lww");
    x.set_params(&e, &serde_json::json!({"lr": 0.1})).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    y.set_params(&e, &serde_json::json!({"lr": 0.2})).unwrap();
    x.push(&remote, None).unwrap();
    // y's value was never pushed: a conflict, reported, nothing merged.
    let r = y.pull(&remote, None).unwrap();
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(y.journal(&e).unwrap().params.unwrap().data["lr"], 0.2);
    // y resolves by pushing its value: from now on the later one (y's) wins everywhere.
    y.push(&remote, None).unwrap();
    let rx = x.pull(&remote, None).unwrap();
    let ry = y.pull(&remote, None).unwrap();
    assert!(
        rx.conflicts.is_empty() && ry.conflicts.is_empty(),
        "{rx:?} {ry:?}"
    );
    assert_eq!(x.journal(&e).unwrap().params.unwrap().data["lr"], 0.2);
    assert_eq!(y.journal(&e).unwrap().params.unwrap().data["lr"], 0.2);
    assert!(y.pull(&remote, None).unwrap().conflicts.is_empty());
}
