//! gc of a remote (`Remote::gc`, `Store::gc_remote`, `ml-dash gc URL`): what it deletes,
//! rewrites and marks, what it never touches, and the race with a push that relies on a pack
//! gc found to be garbage. Each test runs against a directory remote and, with
//! `ML_DASH_S3_TEST=1`, against Garage.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use ml_dash::{
    GcOptions, ListFilter, Remote, RemoteGcOptions, RetentionPolicy, RetentionScope, Store,
};

use crate::remote::{Raw, delete, put, remotes, small_packs};
use crate::util::*;

const GRACE: Duration = Duration::from_secs(1);

fn grace(g: Duration) -> RemoteGcOptions {
    RemoteGcOptions::new().grace(g)
}

/// Wait until everything pushed so far is older than the grace period.
fn age() {
    std::thread::sleep(GRACE + Duration::from_millis(300));
}

fn key(exp: &str, full: &str) -> ml_dash::FileKey {
    let (p, name) = ml_dash::validate::split_full(full).unwrap();
    ml_dash::ExperimentKey::new("local", "remote", exp)
        .unwrap()
        .file(p, name)
}

fn read(s: &Store, exp: &str, full: &str, version: Option<u32>) -> Vec<u8> {
    s.open_file(&key(exp, full), version)
        .unwrap()
        .read_all()
        .unwrap()
}

fn pack_objects(raw: &Raw) -> Vec<(String, u64)> {
    raw.list("packs")
}

fn everything(raw: &Raw) -> Vec<(String, u64)> {
    raw.list("")
}

/// Keep-last 3 over ten versions: the local gc drops seven, the push carries the drop, and
/// the remote gc marks the packs only they used, then deletes them in a run after the grace
/// period. A dry run changes nothing and predicts the run; a fresh pull gets exactly the three
/// versions, a store that pulled all ten before gets the drop without a word of damage, and a
/// second push sends nothing.
#[test]
fn keep_last_3_reclaims_bucket_bytes_in_two_runs_a_grace_period_apart() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-keep3").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open_with(t.path().join(format!("a{i}")), small_packs()).unwrap();
        let versions: Vec<Vec<u8>> = (0..10).map(|v| random_bytes(700 + v, 1_500_000)).collect();
        for v in &versions {
            put(&a, "run", "/ckpt/model.bin", v, &[], Value::Null);
            a.push(&remote, None).unwrap();
        }
        let early = Store::open(t.path().join(format!("early{i}"))).unwrap();
        early.pull(&remote, None).unwrap();

        let policy = RetentionPolicy {
            keep_last: Some(3),
            ..RetentionPolicy::default()
        };
        a.gc(&GcOptions::new().retention(RetentionScope::default(), policy))
            .unwrap();
        let p = a.push(&remote, None).unwrap();
        assert_eq!((p.events, p.packs), (1, 0));
        let before: u64 = pack_objects(&raw).iter().map(|o| o.1).sum();

        // Young packs are not marked: they may belong to a push whose manifests are not up.
        let r = a
            .gc_remote(&remote, &grace(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(
            (r.packs_marked, r.packs_deleted, r.versions),
            (0, 0, 3),
            "{r:#?}"
        );
        assert!(r.packs_young > 0, "{r:#?}");
        age();

        let objects = everything(&raw);
        let dry = a.gc_remote(&remote, &grace(GRACE).dry_run(true)).unwrap();
        assert_eq!(everything(&raw), objects, "a dry run changes nothing");
        assert!(dry.packs_marked > 0 && dry.bytes_marked > 0, "{dry:#?}");

        let first = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(first.packs_deleted, 0, "nothing goes in the run that marks");
        assert_eq!(
            (first.packs_marked, first.bytes_marked),
            (dry.packs_marked, dry.bytes_marked)
        );
        assert_eq!((first.versions, first.deleted_versions), (3, 7));
        assert_eq!(raw.list("gc").len(), 1, "one mark");
        // Marked packs wait for their grace period.
        let soon = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(
            (soon.packs_deleted, soon.packs_pending),
            (0, first.packs_marked)
        );
        age();

        let second = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(second.packs_deleted, first.packs_marked, "{second:#?}");
        assert_eq!(second.bytes_deleted, first.bytes_marked);
        assert_eq!(second.packs_marked, 0);
        assert!(raw.list("gc").is_empty(), "the mark is finished");
        let after: u64 = pack_objects(&raw).iter().map(|o| o.1).sum();
        assert_eq!(after, before - second.bytes_deleted + first.bytes_uploaded);
        assert!(
            after < before / 2,
            "seven of ten versions were dropped: {before} -> {after}"
        );

        let fresh = Store::open(t.path().join(format!("fresh{i}"))).unwrap();
        let p = fresh.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty() && p.conflicts.is_empty(), "{p:#?}");
        let live = fresh
            .list(&ListFilter {
                all_versions: true,
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!(
            live.iter().map(|r| r.version).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        for v in 8..=10u32 {
            same_bytes(
                read(&fresh, "run", "/ckpt/model.bin", Some(v)),
                &versions[v as usize - 1],
                "a kept version",
            );
        }
        assert!(fresh.verify().unwrap().ok);

        let p = early.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty() && p.conflicts.is_empty(), "{p:#?}");
        assert_eq!(
            early
                .list(&ListFilter {
                    all_versions: true,
                    ..ListFilter::default()
                })
                .unwrap()
                .len(),
            3
        );

        let p = a.push(&remote, None).unwrap();
        assert_eq!((p.packs, p.manifests, p.events), (0, 0, 0), "{p:#?}");
    }
}

/// A pack whose records are mostly garbage is rewritten: the live records go to a new pack,
/// checked on the way, and the old pack goes (at once with a grace period of zero).
#[test]
fn a_mostly_garbage_pack_is_rewritten_and_what_it_held_reads_back() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-rewrite").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        let keep = random_bytes(11, 300_000);
        put(&a, "mix", "/keep.bin", &keep, &[], Value::Null);
        for n in 0..4 {
            put(
                &a,
                "mix",
                &format!("/drop{n}.bin"),
                &random_bytes(20 + n, 600_000),
                &[],
                Value::Null,
            );
        }
        a.push(&remote, None).unwrap();
        assert_eq!(pack_objects(&raw).len(), 1, "one pack holds all five files");
        for n in 0..4 {
            delete(&a, "mix", &format!("/drop{n}.bin"));
        }
        a.push(&remote, None).unwrap();
        let r = a.gc_remote(&remote, &grace(Duration::ZERO)).unwrap();
        assert_eq!((r.packs_rewritten, r.packs_deleted), (1, 1), "{r:#?}");
        assert!(r.problems.is_empty(), "{r:#?}");
        let packs = pack_objects(&raw);
        assert_eq!(packs.len(), 1);
        assert!(packs[0].1 < 400_000, "{packs:?}");
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        let p = b.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty(), "{p:#?}");
        same_bytes(read(&b, "mix", "/keep.bin", None), &keep, "the live file");
        assert_eq!(b.list(&ListFilter::default()).unwrap().len(), 1);
        // Nothing left to do.
        let r = a.gc_remote(&remote, &grace(Duration::ZERO)).unwrap();
        assert_eq!((r.packs_rewritten, r.packs_deleted), (0, 0), "{r:#?}");
    }
}

/// gc deletes nothing it cannot account for: an unreadable manifest stops it, a pack whose
/// index cannot be read is left alone, a forged rotten-record report does not make it drop
/// the only copy of a live chunk, and an unreadable mark names nothing.
#[test]
fn what_gc_cannot_read_it_never_deletes() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-hostile").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        let live = random_bytes(31, 400_000);
        put(&a, "h", "/live.bin", &live, &[], Value::Null);
        put(
            &a,
            "h",
            "/gone.bin",
            &random_bytes(32, 400_000),
            &[],
            Value::Null,
        );
        a.push(&remote, None).unwrap();
        delete(&a, "h", "/gone.bin");
        a.push(&remote, None).unwrap();

        // An unreadable manifest: gc cannot know what that version needs.
        let bogus = ml_dash::Id::generate();
        raw.put(
            &format!("manifests/{bogus}.manifest"),
            b"not a manifest".to_vec(),
        );
        let objects = everything(&raw);
        let e = a.gc_remote(&remote, &grace(Duration::ZERO)).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        assert_eq!(everything(&raw), objects, "nothing was deleted");
        let k = raw.key(&format!("manifests/{bogus}.manifest"));
        raw_delete(&raw, &k);

        // A forged report that the only copy of every live chunk is rotten.
        let (pack, _) = pack_objects(&raw).remove(0);
        let pack_id = pack.trim_end_matches(".pack").to_string();
        raw.put(
            &format!("damaged/{pack_id}-32.bad"),
            b"{\"reason\":\"forged\"}\n".to_vec(),
        );
        // An unreadable mark.
        raw.put(
            &format!("gc/{}.mark", ml_dash::Id::generate()),
            b"garbage".to_vec(),
        );
        let r = a.gc_remote(&remote, &grace(Duration::ZERO)).unwrap();
        assert_eq!(r.versions, 1);
        assert!(
            r.problems.iter().any(|p| p.contains("cannot be read")),
            "{r:#?}"
        );
        assert!(raw.list("gc").is_empty(), "the unreadable mark is removed");
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        b.pull(&remote, None).unwrap();
        same_bytes(read(&b, "h", "/live.bin", None), &live, "the live file");

        // A pack whose index is damaged: never deleted, reported every time.
        put(
            &a,
            "h",
            "/more.bin",
            &random_bytes(33, 200_000),
            &[],
            Value::Null,
        );
        a.push(&remote, None).unwrap();
        let newest = pack_objects(&raw)
            .into_iter()
            .max_by_key(|(n, _)| n.clone())
            .unwrap();
        let mut body = raw.get(&format!("packs/{}", newest.0));
        let n = body.len();
        body[n - 20] ^= 0xff;
        raw.put(&format!("packs/{}", newest.0), body);
        delete(&a, "h", "/more.bin");
        a.push(&remote, None).unwrap();
        for _ in 0..2 {
            let r = a.gc_remote(&remote, &grace(Duration::ZERO)).unwrap();
            assert!(
                r.problems.iter().any(|p| p.contains("left alone")),
                "{r:#?}"
            );
        }
        assert!(pack_objects(&raw).iter().any(|p| p.0 == newest.0));
    }
}

fn raw_delete(raw: &Raw, k: &OPath) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(raw.os.delete(k)).unwrap();
}

/// Where a `Gate` stops a push.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// At its first manifest upload (after its last look at the marks).
    ManifestPut,
    /// At its second listing of the marks (the check just before the manifests).
    MarkCheck,
}

/// An object store that stops the calling thread once at `stop`, tells the test, and goes on
/// when the test says so.
#[derive(Debug)]
struct Gate {
    inner: Arc<dyn ObjectStore>,
    stop: Stop,
    seen: Mutex<usize>,
    arrived: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Gate {
    fn hold(&self, at: Stop) {
        if at != self.stop {
            return;
        }
        let mut seen = self.seen.lock().unwrap();
        *seen += 1;
        let n = *seen;
        drop(seen);
        let wanted = match self.stop {
            Stop::ManifestPut => 1,
            Stop::MarkCheck => 2,
        };
        if n == wanted
            && let Some(tx) = self.arrived.lock().unwrap().take()
        {
            tx.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate({})", self.inner)
    }
}

type Fut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = object_store::Result<T>> + Send + 'a>>;

impl ObjectStore for Gate {
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
        if location.as_ref().contains("manifests/") {
            self.hold(Stop::ManifestPut);
        }
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
        if prefix.is_some_and(|p| p.filename() == Some("gc")) {
            self.hold(Stop::MarkCheck);
        }
        self.inner.list(prefix)
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

/// Store `a` pushes a checkpoint and then its delete: on the remote, the pack holding it is
/// garbage. Store `b` holds the same bytes under another name, so its push relies on that
/// pack instead of sending the chunks. Returns the stores and the bytes.
fn garbage_that_a_push_will_reuse(
    t: &std::path::Path,
    i: usize,
    remote: &Remote,
) -> (Store, Store, Vec<u8>) {
    let a = Store::open(t.join(format!("a{i}"))).unwrap();
    let data = random_bytes(77, 2_000_000);
    put(&a, "first", "/ckpt.bin", &data, &[], Value::Null);
    a.push(remote, None).unwrap();
    delete(&a, "first", "/ckpt.bin");
    a.push(remote, None).unwrap();
    let b = Store::open(t.join(format!("b{i}"))).unwrap();
    put(&b, "second", "/same.bin", &data, &[], Value::Null);
    (a, b, data)
}

/// Run `b`'s push through a gate that stops it at `stop`; while it is stopped, run a gc that
/// marks the garbage pack; then let the push finish. Returns the push report and the gc's.
fn push_racing_a_gc(
    cfg: &ml_dash::RemoteConfig,
    raw: &Raw,
    a: &Store,
    b: Store,
    remote: &Remote,
    stop: Stop,
) -> (ml_dash::PushReport, ml_dash::RemoteGcReport, Store) {
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        inner: raw.os.clone(),
        stop,
        seen: Mutex::new(0),
        arrived: Mutex::new(Some(arrived_tx)),
        release: Mutex::new(release_rx),
    });
    let gated = Remote::with_object_store(gate, raw.prefix.clone(), cfg.url.clone()).unwrap();
    let pusher = std::thread::spawn(move || {
        let r = b.push(&gated, None);
        (r, b)
    });
    arrived_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the push reaches the gate");
    let marked = a.gc_remote(remote, &grace(GRACE)).unwrap();
    release_tx.send(()).unwrap();
    let (r, b) = pusher.join().unwrap();
    (r.unwrap(), marked, b)
}

/// The race a remote gc must survive: a push planned while a pack was still unmarked relies
/// on it, gc marks it, and the push's manifest lands afterwards (within the grace period).
/// The run after the grace period lists that manifest and keeps the pack.
#[test]
fn gc_racing_a_push_whose_manifest_lands_after_the_mark_keeps_the_pack() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-race-late").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let (a, b, data) = garbage_that_a_push_will_reuse(t.path(), i, &remote);
        let packs = pack_objects(&raw);
        age();
        let (p, marked, _b) = push_racing_a_gc(&cfg, &raw, &a, b, &remote, Stop::ManifestPut);
        assert_eq!(marked.packs_marked, packs.len() as u64, "{marked:#?}");
        assert!(p.chunks_already_remote > 0 && p.packs == 0, "{p:#?}");
        assert_eq!(
            p.chunks_resent, 0,
            "the push looked before the mark: {p:#?}"
        );
        age();
        let after = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(after.packs_deleted, 0, "{after:#?}");
        assert_eq!(
            pack_objects(&raw),
            packs,
            "the pack the push relies on stays"
        );
        assert!(raw.list("gc").is_empty());

        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        let pr = c.pull(&remote, None).unwrap();
        assert!(pr.damaged.is_empty(), "{pr:#?}");
        same_bytes(
            read(&c, "second", "/same.bin", None),
            &data,
            "the pushed file",
        );
        assert_eq!(c.list(&ListFilter::default()).unwrap().len(), 1);
        assert!(c.verify().unwrap().ok);
    }
}

/// The other order: gc marks the pack while the push is between its packs and its last look
/// at the marks. The push sees the mark, sends the chunks again, and the run after the grace
/// period deletes the old pack: the bytes come back and nothing the push acknowledged is lost.
#[test]
fn gc_racing_a_push_that_sees_the_mark_sends_the_chunks_again() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-race-seen").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let (a, b, data) = garbage_that_a_push_will_reuse(t.path(), i, &remote);
        let old = pack_objects(&raw);
        age();
        let (p, marked, b) = push_racing_a_gc(&cfg, &raw, &a, b, &remote, Stop::MarkCheck);
        assert_eq!(marked.packs_marked, old.len() as u64, "{marked:#?}");
        assert!(p.chunks_resent > 0 && p.packs > 0, "{p:#?}");
        assert_eq!(p.manifests, 1);
        age();
        let after = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(after.packs_deleted, old.len() as u64, "{after:#?}");
        let now = pack_objects(&raw);
        assert!(now.iter().all(|p| !old.contains(p)), "{now:?} {old:?}");

        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        let pr = c.pull(&remote, None).unwrap();
        assert!(pr.damaged.is_empty(), "{pr:#?}");
        same_bytes(
            read(&c, "second", "/same.bin", None),
            &data,
            "the pushed file",
        );
        assert!(c.verify().unwrap().ok);
        // A later push of the same store finds everything in place.
        let p = b.push(&remote, None).unwrap();
        assert_eq!((p.packs, p.chunks_resent), (0, 0), "{p:#?}");
    }
}

/// A push that starts after the mark never relies on a marked pack: it sends those chunks
/// itself, so the marked pack can go.
#[test]
fn a_push_after_a_mark_does_not_rely_on_marked_packs() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-after-mark").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let (a, b, data) = garbage_that_a_push_will_reuse(t.path(), i, &remote);
        age();
        let m = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert!(m.packs_marked > 0, "{m:#?}");
        let p = b.push(&remote, None).unwrap();
        assert!(p.packs > 0 && p.chunks_already_remote == 0, "{p:#?}");
        age();
        let r = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(r.packs_deleted, m.packs_marked, "{r:#?}");
        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        assert!(c.pull(&remote, None).unwrap().damaged.is_empty());
        same_bytes(
            read(&c, "second", "/same.bin", None),
            &data,
            "the pushed file",
        );
        drop(raw);
    }
}

/// `ml-dash gc URL`: the dry run's JSON, and retention flags refused with a URL.
#[test]
fn cli_gc_of_a_remote() {
    let t = tmp();
    let root = t.path().join("store");
    let url = format!("file://{}", t.path().join("remote").display());
    let f = write_file(t.path(), "w.bin", &random_bytes(5, 300_000));
    let args = ["--project", "p", "--experiment", "e"];
    ok(&run(
        &root,
        &[&["upload", f.to_str().unwrap()][..], &args].concat(),
    ));
    ok(&run(
        &root,
        &[&["upload", f.to_str().unwrap()][..], &args].concat(),
    ));
    ok(&run(&root, &["push", &url]));
    ok(&run(&root, &["gc", "--keep-last", "1"]));
    ok(&run(&root, &["push", &url]));
    let out = ok(&run(
        &root,
        &["gc", &url, "--dry-run", "--json", "--grace", "0s"],
    ))
    .to_string();
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    for k in [
        "remote",
        "dryRun",
        "graceSecs",
        "versions",
        "deletedVersions",
        "packs",
        "packBytes",
        "liveBytes",
        "packsDeleted",
        "bytesDeleted",
        "packsRewritten",
        "bytesUploaded",
        "packsMarked",
        "bytesMarked",
        "packsPending",
        "bytesPending",
        "packsYoung",
        "garbageBytesLeft",
        "marksRemoved",
        "problems",
    ] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert_eq!(v["dryRun"], true);
    assert_eq!(
        (v["versions"].as_u64(), v["deletedVersions"].as_u64()),
        (Some(1), Some(1))
    );
    refused(&run(&root, &["gc", &url, "--keep-last", "2"]), "retention");
    refused(&run(&root, &["gc", "--grace", "1h"]), "--grace");
    // Without a store, the gc of a remote still works (its cache is a scratch directory).
    let elsewhere = t.path().join("no-store-here");
    let out = ok(&run(&elsewhere, &["gc", &url, "--grace", "0s"])).to_string();
    assert!(out.contains("1 live versions"), "{out}");
    assert!(!elsewhere.exists());
}

/// Pushes and gc runs at the same time, for real: one thread collects the remote every 100 ms
/// (a grace period of 300 ms) while a store uploads checkpoints that reuse the bytes of versions
/// it deleted and pushed away, pushing after every step. Every acknowledged version is then
/// pulled byte-exact by a fresh store, and nothing deleted comes back.
#[test]
fn pushes_and_gc_runs_interleaved_lose_nothing_acknowledged() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-stress").into_iter().enumerate() {
        let remote = Arc::new(Remote::open(&cfg).unwrap());
        let a = Arc::new(Store::open_with(t.path().join(format!("a{i}")), small_packs()).unwrap());
        a.push(&remote, None).unwrap(); // the remote exists before gc runs
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collector = {
            let (a, remote, stop) = (a.clone(), remote.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut runs = 0u32;
                let mut deleted = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = a
                        .gc_remote(&remote, &grace(Duration::from_millis(300)))
                        .unwrap();
                    deleted += r.packs_deleted;
                    runs += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                (runs, deleted)
            })
        };
        // Three contents in turn: each upload's chunks are those of a version deleted two
        // steps before, whose packs gc is marking or deleting.
        let contents: Vec<Vec<u8>> = (0..3).map(|k| random_bytes(900 + k, 700_000)).collect();
        let mut acknowledged = Vec::new();
        for step in 0..9u32 {
            let data = &contents[step as usize % 3];
            put(&a, "loop", "/ckpt.bin", data, &[], Value::Null);
            a.push(&remote, None).unwrap();
            acknowledged.push((step + 1, data.clone()));
            if step >= 1 {
                // Keep the newest version only: the older one is deleted and pushed.
                let policy = RetentionPolicy {
                    keep_last: Some(1),
                    ..RetentionPolicy::default()
                };
                a.gc(&GcOptions::new().retention(RetentionScope::default(), policy))
                    .unwrap();
                a.push(&remote, None).unwrap();
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (runs, deleted) = collector.join().unwrap();
        assert!(
            runs >= 5 && deleted > 0,
            "{runs} gc runs deleted {deleted} packs"
        );

        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        let p = c.pull(&remote, None).unwrap();
        assert!(p.damaged.is_empty() && p.conflicts.is_empty(), "{p:#?}");
        let live = c.list(&ListFilter::default()).unwrap();
        assert_eq!(live.len(), 1);
        let (v, want) = acknowledged.last().unwrap();
        assert_eq!(live[0].version, *v);
        same_bytes(
            read(&c, "loop", "/ckpt.bin", None),
            want,
            "the newest version",
        );
        assert!(c.verify().unwrap().ok);
    }
}

/// A delta record nothing live needs may stay in a pack gc keeps after its base is collected.
/// A later push of the same bytes must not rely on that copy: it sends the chunks itself, and
/// what it acknowledged pulls back whole.
#[test]
fn a_push_never_relies_on_a_remote_delta_whose_base_was_collected() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-delta-base").into_iter().enumerate() {
        let remote = Remote::open(&cfg).unwrap();
        let ck = crate::delta::model_checkpoints(1_000_000, 11, 2, 100);
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        put(&a, "x", "/m.safetensors", &ck[0], &[], Value::Null);
        a.push(&remote, None).unwrap();
        put(&a, "x", "/m.safetensors", &ck[1], &[], Value::Null);
        put(
            &a,
            "x",
            "/keep.bin",
            &random_bytes(5, 8_000_000),
            &[],
            Value::Null,
        );
        a.push(&remote, None).unwrap();
        delete(&a, "x", "/m.safetensors");
        a.push(&remote, None).unwrap();
        let r = a.gc_remote(&remote, &grace(Duration::ZERO)).unwrap();
        assert!(r.packs_deleted > 0, "{r:#?}");

        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        put(&b, "y", "/m.safetensors", &ck[1], &[], Value::Null);
        let p = b.push(&remote, None).unwrap();
        assert!(p.chunks > 0, "{p:#?}");
        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        let pr = c.pull(&remote, None).unwrap();
        assert!(pr.damaged.is_empty(), "{pr:#?}");
        same_bytes(
            read(&c, "y", "/m.safetensors", None),
            &ck[1],
            "the pushed checkpoint",
        );
    }
}

/// A push relying on a remote delta and its base, both in a pack gc marks meanwhile, sends
/// the chunk again from its own copy; it does not need the base, which this store never held.
#[test]
fn a_push_racing_a_mark_resends_a_delta_it_holds_whole() {
    let t = tmp();
    for (i, cfg) in remotes(t.path(), "rgc-race-delta").into_iter().enumerate() {
        let raw = Raw::new(&cfg);
        let remote = Remote::open(&cfg).unwrap();
        let ck = crate::delta::model_checkpoints(1_000_000, 12, 2, 100);
        let a = Store::open(t.path().join(format!("a{i}"))).unwrap();
        put(&a, "x", "/m.safetensors", &ck[0], &[], Value::Null);
        put(&a, "x", "/m.safetensors", &ck[1], &[], Value::Null);
        a.push(&remote, None).unwrap();
        delete(&a, "x", "/m.safetensors");
        a.push(&remote, None).unwrap();
        let b = Store::open(t.path().join(format!("b{i}"))).unwrap();
        put(&b, "y", "/m.safetensors", &ck[1], &[], Value::Null);
        age();
        let (p, marked, _b) = push_racing_a_gc(&cfg, &raw, &a, b, &remote, Stop::MarkCheck);
        assert!(marked.packs_marked > 0, "{marked:#?}");
        assert!(p.chunks_resent > 0, "{p:#?}");
        age();
        let r = a.gc_remote(&remote, &grace(GRACE)).unwrap();
        assert_eq!(r.packs_deleted, marked.packs_marked, "{r:#?}");
        let c = Store::open(t.path().join(format!("c{i}"))).unwrap();
        let pr = c.pull(&remote, None).unwrap();
        assert!(pr.damaged.is_empty(), "{pr:#?}");
        same_bytes(
            read(&c, "y", "/m.safetensors", None),
            &ck[1],
            "the pushed checkpoint",
        );
    }
}
