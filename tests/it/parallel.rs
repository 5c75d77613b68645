//! Writers in parallel: a large upload ingests outside the store lock, so `list`, `verify` and
//! small uploads in other processes get through while it streams; concurrent writers that share
//! data all commit and, after gc, store what one writer would have; the packs of a killed upload
//! are reclaimed by gc and never reported as damage.
//!
//! No timing is asserted: "gets through while it streams" means the other command finishes
//! while the large upload is provably still running (it waits for more of its standard input).

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use ml_dash::{ExperimentKey, FileKey, GcOptions, NewVersion, Store};

use crate::util::*;

const MIB: usize = 1 << 20;

/// Runs of the full suite (`ML_DASH_FULL=1`) use the sizes the benchmarks use.
fn full() -> bool {
    std::env::var_os("ML_DASH_FULL").is_some()
}

/// `ml-dash upload - --to NAME` reading its bytes from a pipe the test writes to.
fn upload_from_pipe(root: &Path, name: &str) -> (Child, ChildStdin) {
    let mut child = std::process::Command::new(bin())
        .env_remove("ML_DASH_ROOT")
        .arg("--root")
        .arg(root)
        .args(["upload", "-", "--to", name, "--project", "p"])
        .args(["--experiment", "e", "--prefix", "/big", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ml-dash");
    let stdin = child.stdin.take().expect("stdin pipe");
    (child, stdin)
}

/// Wait for `child`; a child still running after `limit` is killed and the test fails (a guard
/// against a hang, generous enough never to fire on a slow machine).
fn finish(mut child: Child, what: &str, limit: Duration) -> Run {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in {limit:?}: is it waiting for a lock?");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the binary in the background and wait for it with `finish`.
fn run_guarded(root: &Path, args: &[&str]) -> Run {
    finish(spawn(root, args), &args.join(" "), Duration::from_secs(120))
}

fn key(prefix: &str, name: &str) -> FileKey {
    ExperimentKey::new("local", "p", "e")
        .unwrap()
        .file(prefix.into(), name.into())
}

#[test]
fn list_verify_and_a_small_upload_finish_while_a_large_upload_streams() {
    let dir = tmp();
    let root = dir.path().join("store");
    let first = write_file(dir.path(), "first.txt", b"before");
    ok(&run(
        &root,
        &["upload", s(&first), "--project", "p", "--experiment", "e"],
    ));
    let big = random_bytes(1, 48 * MIB);
    let (child, mut stdin) = upload_from_pipe(&root, "big.bin");
    // More than the size below which an upload keeps the lock, so it ingests outside it; it
    // now waits for the rest of its input, with packs of its own open.
    stdin.write_all(&big[..40 * MIB]).unwrap();
    stdin.flush().unwrap();

    let small = write_file(dir.path(), "small.bin", &random_bytes(2, MIB));
    let up = run_guarded(
        &root,
        &[
            "upload",
            s(&small),
            "--project",
            "p",
            "--experiment",
            "e",
            "--json",
        ],
    );
    let small_rec = json_lines(ok(&up)).remove(0);
    let listed = json_lines(ok(&run_guarded(&root, &["list", "--json"])));
    let names: Vec<&str> = listed
        .iter()
        .map(|r| r["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"small.bin") && !names.contains(&"big.bin"));
    // The large upload's packs are on disk and not in the index: not damage.
    let v = json_lines(ok(&run_guarded(&root, &["verify", "--json"]))).remove(0);
    assert_eq!(v["ok"], true, "{v:?}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v:?}");
    // gc waits for the upload in flight (it must not take its packs for leftovers): it is
    // still waiting a second later (a gc that did not wait would have finished by then; a
    // slow machine can only make this pass, never fail).
    let mut gc = spawn(&root, &["gc", "--json"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc returned while an upload was in flight"
    );

    stdin.write_all(&big[40 * MIB..]).unwrap();
    drop(stdin);
    let done = finish(child, "the large upload", Duration::from_secs(300));
    let big_rec = json_lines(ok(&done)).remove(0);
    ok(&finish(gc, "gc", Duration::from_secs(120)));
    assert_eq!(big_rec["sizeBytes"], big.len());
    assert_eq!(big_rec["checksum"], sha256_hex(&big));
    // Ids grow with commit order: the small upload, started later, committed first.
    assert!(
        small_rec["id"].as_str().unwrap() < big_rec["id"].as_str().unwrap(),
        "{small_rec:?} {big_rec:?}"
    );
    let store = Store::open(&root).unwrap();
    same_bytes(
        ml_dash::testing::read_all(&store.open_file(&key("/big", "big.bin"), None).unwrap())
            .unwrap(),
        &big,
        "the large upload",
    );
    let v = store.verify().unwrap();
    assert!(v.ok && v.problems.is_empty(), "{v:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 4 processes upload at once, half of each file shared by all: all commit, every version reads
/// back exactly and verifies, and after gc the store holds what one writer storing the same
/// files one after the other holds.
#[test]
fn four_writers_sharing_half_their_data_store_what_one_writer_would() {
    let each = if full() { 512 * MIB } else { 24 * MIB };
    let dir = tmp();
    let shared = random_bytes(100, each / 2);
    let files: Vec<(std::path::PathBuf, Vec<u8>)> = (0..4u64)
        .map(|i| {
            let mut data = shared.clone();
            data.extend_from_slice(&random_bytes(200 + i, each / 2));
            let p = write_file(dir.path(), &format!("rank{i}.bin"), &data);
            (p, data)
        })
        .collect();
    drop(shared);

    let root = dir.path().join("parallel");
    Store::open(&root).unwrap();
    let children: Vec<Child> = files
        .iter()
        .map(|(p, _)| {
            spawn(
                &root,
                &[
                    "upload",
                    s(p),
                    "--project",
                    "p",
                    "--experiment",
                    "e",
                    "--json",
                ],
            )
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let r = finish(c, &format!("writer {i}"), Duration::from_secs(900));
        let rec = json_lines(ok(&r)).remove(0);
        assert_eq!(rec["checksum"], sha256_hex(&files[i].1));
    }
    let store = Store::open(&root).unwrap();
    for (i, (_, data)) in files.iter().enumerate() {
        let got = ml_dash::testing::read_all(
            &store
                .open_file(&key("/", &format!("rank{i}.bin")), None)
                .unwrap(),
        )
        .unwrap();
        assert!(got == *data, "rank {i} is not byte-exact");
    }
    let v = store.verify().unwrap();
    assert!(v.ok && v.problems.is_empty(), "{v:?}");
    let rep = store
        .gc(&GcOptions::new().rewrite_threshold(f64::MIN_POSITIVE))
        .unwrap();
    assert!(rep.problems.is_empty(), "{rep:?}");
    let v = store.verify().unwrap();
    assert!(v.ok && v.problems.is_empty(), "{v:?}");

    let one = dir.path().join("one");
    let single = Store::open(&one).unwrap();
    let args: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (p, _))| {
            (
                p.clone(),
                key("/", &format!("rank{i}.bin")),
                NewVersion::default(),
            )
        })
        .collect();
    for a in &args {
        single.put_files(std::slice::from_ref(a)).unwrap();
    }
    let (a, b) = (
        store.stats(&Default::default()).unwrap(),
        single.stats(&Default::default()).unwrap(),
    );
    assert_eq!((a.chunks, a.stored_bytes), (b.chunks, b.stored_bytes));
    // Nothing but the live chunks (and each pack's header) is left in the packs.
    let header = ml_dash::testing::pack::PACK_HEADER_LEN;
    assert_eq!(a.pack_bytes - a.packs * header, a.stored_bytes, "{a:?}");
    assert_eq!(
        packs_total(&root),
        a.pack_bytes,
        "only indexed packs on disk"
    );
}

/// A large upload killed while it streams leaves a pack the index does not know: verify does
/// not call it damage, and gc deletes it.
#[test]
fn packs_of_a_killed_upload_are_reclaimed_by_gc_and_are_not_damage() {
    let dir = tmp();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let kept = random_bytes(3, 100_000);
    store
        .put_reader(
            &kept[..],
            &key("/", "kept.bin"),
            NewVersion::default(),
            None,
        )
        .unwrap();
    let incoming = || files_with_ext(&root.join("packs"), "incoming");
    let (mut child, mut stdin) = upload_from_pipe(&root, "killed.bin");
    stdin.write_all(&random_bytes(4, 40 * MIB)).unwrap();
    stdin.flush().unwrap();
    // Wait until its pack holds some of what it has read (it appends as it goes), under the
    // name of a pack not committed yet.
    let start = Instant::now();
    let size = |p: &std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    while incoming().iter().map(size).sum::<u64>() < 8 * MIB as u64 {
        assert!(start.elapsed() < Duration::from_secs(120), "no pack grew");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let orphans = incoming();
    assert!(!orphans.is_empty());
    let v = store.verify().unwrap();
    assert!(v.ok && v.problems.is_empty(), "{v:?}");
    assert!(
        v.notes
            .iter()
            .any(|n| n.message.contains("of uploads not committed")),
        "{v:?}"
    );
    assert_eq!(list_everything(&store).len(), 1);
    let rep = store.gc(&GcOptions::new()).unwrap();
    assert!(rep.packs_deleted >= orphans.len(), "{rep:?}");
    assert!(rep.problems.is_empty(), "{rep:?}");
    for p in &orphans {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    same_bytes(
        ml_dash::testing::read_all(&store.open_file(&key("/", "kept.bin"), None).unwrap()).unwrap(),
        &kept,
        "kept",
    );
    let v = store.verify().unwrap();
    assert!(v.ok && v.problems.is_empty(), "{v:?}");
}

/// An upload outside the lock deduplicates against what is committed and stores checkpoints as
/// deltas against the previous version, as one under the lock does.
#[test]
fn uploads_outside_the_lock_deduplicate_and_store_deltas() {
    let dir = tmp();
    let store = Store::open(dir.path().join("store")).unwrap();
    let data = random_bytes(5, 20 * MIB);
    let a = store
        .put_reader(&data[..], &key("/", "a.bin"), NewVersion::default(), None)
        .unwrap();
    assert!(a.new_bytes > 0);
    let b = store
        .put_reader(&data[..], &key("/", "b.bin"), NewVersion::default(), None)
        .unwrap();
    assert_eq!(b.new_bytes, 0, "the same bytes again store nothing new");

    // bf16 checkpoints of 10 M parameters (20 MB each), 100 Adam steps apart.
    let ck = crate::delta::model_checkpoints(10_000_000, 7, 2, 100);
    assert!(ck[0].len() > 16 * MIB);
    let paths: Vec<_> = ck
        .iter()
        .enumerate()
        .map(|(i, c)| write_file(dir.path(), &format!("step{i}.safetensors"), c))
        .collect();
    let k = key("/ckpt", "model.safetensors");
    let first = store
        .put_files(&[(paths[0].clone(), k.clone(), NewVersion::default())])
        .unwrap();
    let second = store
        .put_files(&[(paths[1].clone(), k.clone(), NewVersion::default())])
        .unwrap();
    assert!(first[0].new_bytes as f64 > 0.6 * ck[0].len() as f64);
    assert!(
        (second[0].new_bytes as f64) < 0.6 * ck[1].len() as f64,
        "stored as deltas: {} of {}",
        second[0].new_bytes,
        ck[1].len()
    );
    for (v, c) in [(1, &ck[0]), (2, &ck[1])] {
        let got = ml_dash::testing::read_all(&store.open_file(&k, Some(v)).unwrap()).unwrap();
        assert!(got == *c, "version {v} is not byte-exact");
    }
    let v = store.verify().unwrap();
    assert!(v.ok && v.problems.is_empty(), "{v:?}");
}
