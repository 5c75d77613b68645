//! Fault injection in process: fail the Nth write or fsync of a workload (upload of new data,
//! a batch of 5 files committed together, upload of known data, delete, metadata update, gc with
//! a pack rewrite). After the failure the store refuses every further write (no silent retry of
//! an fsync) but still reads; reopened without faults it verifies clean, everything
//! acknowledged before is intact, and what the failed operation touched is either absent or
//! complete: of the batch, all 5 versions or none.
//!
//! `a_failing_writer_beside_a_clean_one_and_gc` fails one writer of several: an upload outside
//! the store lock, while another handle uploads and a third thread runs `gc` (see below).

use ml_dash::StoreOptions;
use ml_dash::testing::{FaultKind, Faults};
use ml_dash::{Error, Experiment, NewVersion, Store};

use crate::util::*;

const MIB: usize = 1 << 20;

type Step<'a> = Box<dyn Fn(&Experiment) -> Result<(), Error> + 'a>;

/// The files of the batch step: name and bytes (tiny, empty, through the ingest pipeline,
/// sharing chunks with each other).
fn batch_files() -> Vec<(String, Vec<u8>)> {
    let shared = random_bytes(7, 200_000);
    let mut more = shared.clone();
    more.extend_from_slice(&random_bytes(8, 50_000));
    vec![
        ("b0.txt".into(), random_bytes(4, 100)),
        ("b1.bin".into(), Vec::new()),
        ("b2.bin".into(), random_bytes(5, 3 * MIB / 2)),
        ("b3.bin".into(), shared),
        ("b4.bin".into(), more),
    ]
}

struct Outcome {
    fired: bool,
    /// The failed step, and whether the store then refused a write.
    refused_after: bool,
}

/// Base content, then the workload on a store with `faults`. Returns what happened.
fn run_workload(root: &std::path::Path, dir: &std::path::Path, faults: Faults) -> Outcome {
    let opts = StoreOptions::default()
        .pack_target(2 * MIB as u64)
        .faults(faults.clone());
    let exp = Experiment::new("e", "p")
        .local_path(root)
        .options(opts)
        .open()
        .unwrap();
    let steps: Vec<Step> = vec![
        Box::new(|e| {
            e.file(write_file(dir, "new.bin", &random_bytes(3, 3 * MIB)))
                .prefix("/w")
                .save()
                .map(drop)
        }),
        Box::new(|e| {
            let files: Vec<_> = batch_files()
                .into_iter()
                .map(|(name, data)| {
                    let key = e.file_key(&format!("/batch/{name}")).unwrap();
                    (write_file(dir, &name, &data), key, NewVersion::default())
                })
                .collect();
            e.store().put_files(&files).map(drop)
        }),
        Box::new(|e| {
            e.file(write_file(dir, "copy.bin", &random_bytes(1, 2 * MIB)))
                .prefix("/w")
                .save()
                .map(drop)
        }),
        Box::new(|e| e.delete("/base/b.bin").map(drop)),
        Box::new(|e| {
            e.update(
                "/base/a.bin",
                &ml_dash::RecordChanges {
                    description: Some(Some("changed".into())),
                    tags: None,
                    metadata: Some(serde_json::json!({"k": 2})),
                },
            )
            .map(drop)
        }),
        Box::new(|e| {
            e.store()
                .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
                .map(drop)
        }),
    ];
    for step in &steps {
        if let Err(e) = step(&exp) {
            assert!(
                faults.fired(),
                "an operation failed without an injected fault: {e}"
            );
            // Poisoned: every further write is refused, even though the disk would now work.
            let again = exp
                .file(write_file(dir, "after.bin", b"after the failure"))
                .save();
            let refused_after = matches!(again, Err(Error::Poisoned(_)));
            assert!(
                refused_after,
                "write after a failed durable step was not refused: {again:?}"
            );
            assert!(matches!(exp.delete("/base/a.bin"), Err(Error::Poisoned(_))));
            assert!(matches!(
                exp.store()
                    .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0)),
                Err(Error::Poisoned(_))
            ));
            // Reads still work.
            exp.files("/").expect("reads work on a poisoned store");
            return Outcome {
                fired: true,
                refused_after,
            };
        }
    }
    Outcome {
        fired: faults.fired(),
        refused_after: false,
    }
}

fn base(root: &std::path::Path, dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let opts = StoreOptions::default().pack_target(2 * MIB as u64);
    let exp = Experiment::new("e", "p")
        .local_path(root)
        .options(opts)
        .open()
        .unwrap();
    let a = random_bytes(1, 2 * MIB);
    let b = random_bytes(2, MIB);
    exp.file(write_file(dir, "a.bin", &a))
        .prefix("/base")
        .metadata(serde_json::json!({"k": 1}))
        .save()
        .unwrap();
    exp.file(write_file(dir, "b.bin", &b))
        .prefix("/base")
        .save()
        .unwrap();
    (a, b)
}

fn check_after_reopen(root: &std::path::Path, a: &[u8], b: &[u8]) {
    let store = Store::open(root).unwrap();
    let rep = store.verify().unwrap();
    assert!(
        rep.ok,
        "verify after reopen: {:?} {:?}",
        rep.damaged_files, rep.problems
    );
    let exp = Experiment::new("e", "p").local_path(root).open().unwrap();
    // Acknowledged before the workload: a.bin always; b.bin unless its delete went through.
    same_bytes(read_via_reader(&exp, "/base/a.bin", Some(1)), a, "a.bin v1");
    match exp.get("/base/b.bin", None) {
        Ok(_) => same_bytes(read_via_reader(&exp, "/base/b.bin", None), b, "b.bin"),
        Err(Error::NotFound(_)) => {}
        Err(e) => panic!("b.bin: {e}"),
    }
    // The batch: all of it or none of it, byte-exact.
    let batch = batch_files();
    let seen: Vec<_> = batch
        .iter()
        .filter(|(name, _)| exp.get(&format!("/batch/{name}"), None).is_ok())
        .collect();
    assert!(
        seen.is_empty() || seen.len() == batch.len(),
        "{} of the batch's {} versions are visible",
        seen.len(),
        batch.len()
    );
    for (name, data) in seen {
        same_bytes(
            read_via_reader(&exp, &format!("/batch/{name}"), None),
            data,
            name,
        );
    }
    // Whatever the workload left visible reads back complete and matches its checksum.
    for r in list_everything(&store) {
        if r.is_deleted() {
            continue;
        }
        let got = read_via_reader(&exp, &r.full_path(), Some(r.version));
        assert_eq!(got.len() as u64, r.size_bytes, "{}", r.full_path());
        assert_eq!(sha256_hex(&got), r.checksum.to_hex(), "{}", r.full_path());
    }
    // And the store takes writes again.
    let dir = tmp();
    exp.file(write_file(dir.path(), "later.bin", b"later"))
        .save()
        .unwrap();
    assert!(store.verify().unwrap().ok);
}

fn sweep(kind: FaultKind) -> u64 {
    let mut fired = 0;
    for n in 1.. {
        let dir = tmp();
        let root = dir.path().join("store");
        let (a, b) = base(&root, dir.path());
        let out = run_workload(&root, dir.path(), Faults::fail_nth(kind, n));
        if !out.fired {
            assert!(
                n > 5,
                "the workload performed fewer than 5 {kind:?} operations"
            );
            break;
        }
        assert!(out.refused_after || out.fired);
        check_after_reopen(&root, &a, &b);
        fired += 1;
    }
    fired
}

#[test]
fn every_failed_write_is_contained() {
    let n = sweep(FaultKind::Write);
    eprintln!("injected {n} write failures");
    assert!(n >= 10, "only {n} write points were exercised");
}

#[test]
fn every_failed_fsync_poisons_and_recovers() {
    let n = sweep(FaultKind::Sync);
    eprintln!("injected {n} fsync failures");
    assert!(n >= 10, "only {n} fsync points were exercised");
}

// ---------------------------------------------------------------------------------------------
// A failure in one writer of several. The failing writer (a `Store` handle of its own, opened
// with the fault plan) uploads outside the store lock: a stream of more than 16 MiB
// (`put_reader`), or a batch of files holding more than 16 MiB together. While it runs, a clean handle uploads (a file, a stream, a
// batch re-uploading chunks the failing upload writes too, all small: under the lock) and
// deletes the versions whose chunks the failing upload found in its snapshot of the index, and
// a third thread runs `gc` in a loop (with the clean handle: gc waits for the writers' lock,
// which every upload holds shared, and would otherwise collect those chunks, and delete the
// failing upload's `.incoming` packs, under it). Then: the failing upload is all or nothing (a
// batch: every version or none), byte-exact if visible; every upload of the clean handle and
// every gc run succeeded; after reopening, verify is clean and everything reads back
// byte-exact; a gc leaves no pack the index does not know (the `.incoming` packs of the failed
// upload are gone). Failure points: 1, 2, 3, 4, 6, 9, ... until the upload goes through, then
// the last ones before that (its commit), found by bisection: about 70 runs, ~15 s.

/// What the failing writer uploads (both ingested outside the store lock).
#[derive(Clone, Copy, Debug)]
enum Outside {
    /// `put_reader` of 17 MiB.
    Stream,
    /// `upload_batch` of 3 files, 18 MiB together.
    BigBatch,
}

fn cw_key(exp: &str, name: &str) -> ml_dash::FileKey {
    ml_dash::ExperimentKey::new("local", "p", exp)
        .unwrap()
        .file("/".into(), name.into())
}

/// Shared 1 MiB blocks: uploaded (then deleted) by the clean writer, part of the failing
/// writer's files too.
fn pool_block(j: u64) -> Vec<u8> {
    random_bytes(900 + j, MIB)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The failing writer's files: key and bytes.
fn outside_files(what: Outside) -> Vec<(ml_dash::FileKey, Vec<u8>)> {
    match what {
        Outside::Stream => vec![(
            cw_key("faulty", "stream.bin"),
            concat(&[
                pool_block(0),
                random_bytes(910, 14 * MIB),
                pool_block(1),
                random_bytes(911, MIB + 5),
            ]),
        )],
        Outside::BigBatch => vec![
            (
                cw_key("faulty", "f0.bin"),
                concat(&[pool_block(0), random_bytes(920, 6 * MIB)]),
            ),
            (cw_key("faulty", "f1.bin"), random_bytes(921, 6 * MIB + 17)),
            (
                cw_key("faulty", "f2.bin"),
                concat(&[
                    random_bytes(922, 3 * MIB),
                    pool_block(1),
                    random_bytes(923, MIB),
                ]),
            ),
        ],
    }
}

/// A stream that says when it is read past its first 16 MiB + 1 byte: the upload has looked at
/// that much to decide it runs outside the store lock, and has taken its snapshot of the index.
struct Flagged<'a> {
    data: &'a [u8],
    pos: usize,
    started: &'a std::sync::atomic::AtomicBool,
}

impl std::io::Read for Flagged<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos > 16 * MIB {
            self.started
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let n = (&self.data[self.pos..]).read(buf)?;
        self.pos += n;
        Ok(n)
    }
}

/// Read version `v` of `key` whole (every chunk and the SHA-256 checked).
fn read_back(store: &Store, key: &ml_dash::FileKey, v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .download_to(key, Some(v), &mut out)
        .unwrap_or_else(|e| panic!("{} v{v}: {e}", key.display()));
    out
}

/// One run: the failing writer's `n`th operation of `kind` fails. Returns whether it fired,
/// whether it failed on one of its `.incoming` packs (outside the store lock), and whether
/// verify ran while packs of the failed upload were still there.
fn concurrent_run(what: Outside, kind: FaultKind, n: u64) -> (bool, bool, bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tmp();
    let root = dir.path().join("store");
    // Chunks of 256 KiB on average: fewer failure points to sweep.
    let opts = || {
        StoreOptions::default()
            .pack_target(2 * MIB as u64)
            .chunker(ml_dash::ChunkerConfig {
                min: 64 * 1024,
                avg: 256 * 1024,
                max: MIB,
                ..ml_dash::ChunkerConfig::default()
            })
            .lock_timeout(std::time::Duration::from_secs(120))
    };
    let clean = Store::open_with(&root, opts()).unwrap();
    let base = random_bytes(930, MIB + 3);
    let base_key = cw_key("base", "a.bin");
    clean
        .put_reader(&base[..], &base_key, NewVersion::default(), None)
        .unwrap();
    for j in 0..2 {
        let src = write_file(dir.path(), &format!("pool{j}"), &pool_block(j));
        clean
            .put_file(
                &src,
                &cw_key("pool", &format!("p{j}")),
                NewVersion::default(),
                None,
            )
            .unwrap();
    }
    let faults = Faults::fail_nth(kind, n);
    let faulty = Store::open_with(&root, opts().faults(faults.clone())).unwrap();
    let files = outside_files(what);
    let sources: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (_, d))| write_file(dir.path(), &format!("big{i}"), d))
        .collect();

    let started = AtomicBool::new(false);
    let faulty_done = AtomicBool::new(false);
    let clean_done = AtomicBool::new(false);
    let go = || started.load(Ordering::SeqCst) || faulty_done.load(Ordering::SeqCst);
    let wait_go = || {
        while !go() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    };
    let checker = Store::open_with(&root, opts()).unwrap();
    let ((faulty_res, verified), clean_recs, gc_runs) = std::thread::scope(|s| {
        // A thread that ends, even by a panic, says so: the gc loop must not outlive it.
        struct Done<'f>(&'f AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let failing = s.spawn(|| {
            let _done = Done(&faulty_done);
            let res = match what {
                Outside::Stream => {
                    let (k, d) = &files[0];
                    let src = Flagged {
                        data: d,
                        pos: 0,
                        started: &started,
                    };
                    faulty
                        .put_reader(src, k, NewVersion::default(), None)
                        .map(|r| vec![r])
                }
                Outside::BigBatch => {
                    let mut b = faulty.upload_batch();
                    for ((k, _), src) in files.iter().zip(&sources) {
                        b.file(src, k.clone(), NewVersion::default());
                    }
                    b.on_file_start(|_, _| {
                        started.store(true, Ordering::SeqCst);
                        None
                    });
                    b.commit()
                }
            };
            // Right after a failure its `.incoming` packs are still there, unless a gc that
            // waited for the writers' lock has run since: verify (the store lock only, beside
            // the other threads) must call them no problem.
            let verified = res.is_err().then(|| {
                let incoming = files_with_ext(&root.join("packs"), "incoming").len();
                (incoming, checker.verify())
            });
            (res, verified)
        });
        let writer = s.spawn(|| {
            let _done = Done(&clean_done);
            wait_go();
            // The chunks the failing upload found in its snapshot become garbage for gc.
            for j in 0..2 {
                clean.delete(&cw_key("pool", &format!("p{j}"))).unwrap();
            }
            let mut recs = Vec::new();
            let small = random_bytes(940, 200_000);
            let src = write_file(dir.path(), "small.bin", &small);
            let k = cw_key("clean", "small.bin");
            let r = clean.put_file(&src, &k, NewVersion::default(), None);
            recs.push((k, small, r));
            let stream = random_bytes(941, 3 * MIB / 2);
            let k = cw_key("clean", "stream.bin");
            let r = clean.put_reader(&stream[..], &k, NewVersion::default(), None);
            recs.push((k, stream, r));
            // The same new chunks the failing upload writes (pool block 0), and more.
            let batch = [pool_block(0), random_bytes(942, 300_000), Vec::new()];
            let mut b = clean.upload_batch();
            let mut keys = Vec::new();
            for (i, d) in batch.iter().enumerate() {
                let k = cw_key("clean", &format!("b{i}.bin"));
                b.file(
                    write_file(dir.path(), &format!("b{i}.bin"), d),
                    k.clone(),
                    NewVersion::default(),
                );
                keys.push(k);
            }
            match b.commit() {
                Ok(rs) => {
                    for ((k, d), r) in keys.into_iter().zip(batch).zip(rs) {
                        recs.push((k, d, Ok(r)));
                    }
                }
                Err(e) => recs.push((keys[0].clone(), Vec::new(), Err(e))),
            }
            let mixed = concat(&[pool_block(1), random_bytes(943, 500_000)]);
            let k = cw_key("clean", "mixed.bin");
            let r = clean.put_reader(&mixed[..], &k, NewVersion::default(), None);
            recs.push((k, mixed, r));
            recs
        });
        let gc = s.spawn(|| {
            wait_go();
            let mut runs = Vec::new();
            loop {
                let last = faulty_done.load(Ordering::SeqCst) && clean_done.load(Ordering::SeqCst);
                runs.push(clean.gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0)));
                if last {
                    return runs;
                }
                // (A pause, as between the gc runs of a user: the store lock is not fair, and a
                // loop that takes it again at once keeps the writers' polls out.)
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        (
            failing.join().unwrap(),
            writer.join().unwrap(),
            gc.join().unwrap(),
        )
    });
    let fired = faults.fired();
    let what_ = format!("{what:?}, {kind:?} #{n}");
    let incoming = faulty_res
        .as_ref()
        .is_err_and(|e| e.to_string().contains(".incoming"));
    let mut incoming_verified = false;
    if let Some((incoming, rep)) = verified {
        let rep = rep.unwrap_or_else(|e| panic!("{what_}: verify after the failure: {e}"));
        assert!(
            rep.ok,
            "{what_}: verify right after the failure: {:?} {:?} (notes {:?})",
            rep.damaged_files, rep.problems, rep.notes
        );
        incoming_verified = incoming > 0;
    }
    if let Err(e) = &faulty_res {
        assert!(
            fired,
            "{what_}: the upload failed without an injected fault: {e}"
        );
        assert!(
            matches!(
                faulty.put_reader(
                    &b"x"[..],
                    &cw_key("faulty", "after"),
                    NewVersion::default(),
                    None
                ),
                Err(Error::Poisoned(_))
            ),
            "{what_}: the failing handle takes writes again"
        );
    }
    // Everything else succeeded.
    for (k, _, r) in &clean_recs {
        if let Err(e) = r {
            panic!(
                "{what_}: the clean writer's upload of {} failed: {e}",
                k.display()
            );
        }
    }
    for r in &gc_runs {
        let rep = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{what_}: gc beside the failing writer failed: {e}"));
        assert!(
            rep.problems.is_empty() && rep.packs_quarantined == 0,
            "{what_}: gc: {:?}",
            rep.problems
        );
    }

    let check = |store: &Store, when: &str| {
        let rep = store.verify().unwrap();
        assert!(
            rep.ok,
            "{what_}, {when}: verify: {:?} {:?}",
            rep.damaged_files, rep.problems
        );
        same_bytes(read_back(store, &base_key, 1), &base, "base");
        for (k, d, r) in &clean_recs {
            let r = r.as_ref().expect("checked above");
            same_bytes(read_back(store, k, r.version), d, &k.display());
        }
        // The failing writer: all of its versions or none, byte-exact.
        let visible: Vec<bool> = files
            .iter()
            .map(|(k, _)| match store.resolve(k, Some(1)) {
                Ok(_) => true,
                Err(Error::NotFound(_)) => false,
                Err(e) => panic!("{what_}, {when}: {}: {e}", k.display()),
            })
            .collect();
        assert!(
            visible.iter().all(|v| *v) || visible.iter().all(|v| !*v),
            "{what_}, {when}: {} of the failed batch's {} versions are visible",
            visible.iter().filter(|v| **v).count(),
            files.len()
        );
        if faulty_res.is_ok() {
            assert!(
                visible[0],
                "{what_}, {when}: an acknowledged upload is lost"
            );
        }
        if visible[0] {
            for (k, d) in &files {
                same_bytes(read_back(store, k, 1), d, &k.display());
            }
        }
        let live = list_live(store).len();
        let expect = 1 + clean_recs.len() + if visible[0] { files.len() } else { 0 };
        assert_eq!(live, expect, "{what_}, {when}: live paths");
    };
    let store = Store::open_with(&root, opts()).unwrap();
    check(&store, "after reopening");
    let (left, _) = unknown_packs(&root).unwrap();
    let rep = store
        .gc(&ml_dash::GcOptions::new().rewrite_threshold(0.0))
        .unwrap();
    assert!(
        rep.problems.is_empty() && rep.packs_quarantined == 0,
        "{what_}: gc after reopening: {:?}",
        rep.problems
    );
    let (after, held) = unknown_packs(&root).unwrap();
    assert!(
        after.is_empty() && held == 0,
        "{what_}: after gc, packs the index does not know: {after:?} (before gc: {left:?})"
    );
    check(&store, "after gc");
    (fired, incoming, incoming_verified)
}

/// Failure points of one failing upload, sampled: 1, 2, 3, 4, 6, 9, ... until an upload
/// goes through, then the last points before that one (found by bisection): its commit.
fn concurrent_sweep(what: Outside, kind: FaultKind) -> Sweep {
    let mut sw = Sweep::default();
    let mut done = std::collections::BTreeSet::new();
    let mut run = |n: u64, done: &mut std::collections::BTreeSet<u64>| {
        done.insert(n);
        let (f, i, v) = concurrent_run(what, kind, n);
        sw.fired += usize::from(f);
        sw.incoming += usize::from(i);
        sw.verified_beside_incoming += usize::from(v);
        f
    };
    let (mut lo, mut hi) = (0u64, 1u64);
    while run(hi, &mut done) {
        lo = hi;
        hi = (hi * 3 / 2).max(hi + 1);
    }
    // The last point that fires is in lo..hi.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if run(mid, &mut done) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    for n in (lo.saturating_sub(4)..=lo).filter(|n| *n > 0) {
        if !done.contains(&n) {
            run(n, &mut done);
        }
    }
    eprintln!(
        "{what:?}: {kind:?} failures injected at {} points of {lo}, {} on an incoming pack, \
         {} verified with incoming packs left ({done:?})",
        sw.fired, sw.incoming, sw.verified_beside_incoming
    );
    sw
}

/// What a sweep exercised.
#[derive(Default)]
struct Sweep {
    /// Runs whose failure fired.
    fired: usize,
    /// Failures on an `.incoming` pack of the failing upload.
    incoming: usize,
    /// Runs that verified while `.incoming` packs of the failed upload were on disk.
    verified_beside_incoming: usize,
}

#[test]
fn a_failing_writer_beside_a_clean_one_and_gc() {
    let (mut fired, mut beside_incoming) = (0, 0);
    for what in [Outside::Stream, Outside::BigBatch] {
        for kind in [FaultKind::Write, FaultKind::Sync] {
            let sw = concurrent_sweep(what, kind);
            let n = sw.fired;
            assert!(n >= 5, "{what:?}: only {n} {kind:?} points were exercised");
            // (The failing upload ran outside the store lock: it wrote `.incoming` packs.)
            assert!(
                sw.incoming > 0,
                "{what:?}: no {kind:?} failure hit an incoming pack"
            );
            fired += n;
            beside_incoming += sw.verified_beside_incoming;
        }
    }
    eprintln!(
        "concurrent fault sweep: {fired} failures injected, {beside_incoming} verified with \
         the failed upload's packs on disk"
    );
    assert!(
        beside_incoming > 0,
        "verify never ran while a failed upload's packs were on disk"
    );
}
