//! Fault injection in process: fail the Nth write or fsync of a workload (upload of new data,
//! a batch of 5 files committed together, upload of known data, delete, metadata update, gc with
//! a pack rewrite). After the failure the store refuses every further write (no silent retry of
//! an fsync) but still reads; reopened without faults it verifies clean, everything
//! acknowledged before is intact, and what the failed operation touched is either absent or
//! complete: of the batch, all 5 versions or none.

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
